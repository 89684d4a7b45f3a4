"""User-written templates, rendered in Jinja2's immutable sandbox with limits.

A template sees only the variables handed to it (account, contact, owner, run, milestone,
handoff). It cannot reach Python internals (the sandbox refuses), cannot run without end (the
loop budget and a time limit stop it) and cannot render megabytes (the output limit stops it,
and `*` on strings and lists is capped before it allocates).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from firstvalue.errors import FirstvalueError

MAX_OUTPUT = 64 * 1024
MAX_SECONDS = 1.0
MAX_LOOP_ITEMS = 10_000
MAX_REPEAT = 100_000


class TemplateRenderError(FirstvalueError):
    """Raised when a template cannot be rendered: its action fails with this reason."""


class _Limits:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.items = 0

    def tick(self) -> None:
        self.items += 1
        if self.items > MAX_LOOP_ITEMS:
            raise TemplateRenderError(f"the template loops over more than {MAX_LOOP_ITEMS} items")
        if time.monotonic() - self.started > MAX_SECONDS:
            raise TemplateRenderError(f"the template ran for more than {MAX_SECONDS} s")


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and (
                abs(right) > 64 or (isinstance(left, int) and left.bit_length() * abs(right)
                                    > 4096)):
            raise TemplateRenderError("the template raises to a power too large to print")
        if operator == "*":
            sizes = [len(v) for v in (left, right) if isinstance(v, str | list | tuple)]
            counts = [v for v in (left, right) if isinstance(v, int)]
            if sizes and counts and sizes[0] * max(counts) > MAX_REPEAT:
                raise TemplateRenderError(f"the template repeats a value past {MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)


_environment = _Environment(autoescape=False, undefined=Undefined)


def _bounded_filter(name: str) -> None:
    """Filters that pad or repeat by a number the template gives allocate in C, before any
    limit can look: refuse a width past the output limit up front."""
    original = _environment.filters[name]

    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        widths = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
        if any(abs(width) > MAX_OUTPUT for width in widths):
            raise TemplateRenderError(f"the template asks `{name}` for more than {MAX_OUTPUT} "
                                      "characters")
        return original(value, *args, **kwargs)

    _environment.filters[name] = bounded


for _name in ("center", "indent", "wordwrap", "truncate"):
    _bounded_filter(_name)


_WIDE_FIELD = re.compile(r"%[-+ #0]*(\d{6,}|\*)")


def _bounded_format(value: Any, *args: Any, **kwargs: Any) -> str:
    """Jinja2's `format` (`value % args`), refusing a field width of 100,000 or more."""
    text = str(value)
    if _WIDE_FIELD.search(text):
        raise TemplateRenderError("the template's `format` asks for too wide a field")
    return text % (kwargs or args)


_environment.filters["format"] = _bounded_format


def check_template(source: str) -> str | None:
    """The syntax error of a template, or None: what `playbook check` reports."""
    try:
        _environment.parse(source)
    except TemplateError as exc:
        return str(exc)
    return None


@lru_cache(maxsize=256)
def _compile(source: str) -> Any:
    return _environment.from_string(source)


def _bounded_range(limits: _Limits):  # type: ignore[no-untyped-def]
    def bounded(*args: int):  # type: ignore[no-untyped-def]
        for value in range(*args):
            limits.tick()
            yield value

    return bounded


def _deadline_tracer(limits: _Limits):  # type: ignore[no-untyped-def]
    """A trace function that stops the render when its time is up, even in a loop that yields
    nothing: an exception raised by a trace function surfaces in the traced frame."""

    def trace(frame, event, _arg):  # type: ignore[no-untyped-def]
        if time.monotonic() - limits.started > MAX_SECONDS:
            raise TemplateRenderError(f"the template ran for more than {MAX_SECONDS} s")
        return trace

    return trace


def render(source: str, variables: Mapping[str, Any]) -> str:
    """Render `source` with `variables`; TemplateRenderError says why it could not."""
    limits = _Limits()
    previous = sys.gettrace()
    sys.settrace(_deadline_tracer(limits))
    try:
        return _render(source, variables, limits)
    finally:
        sys.settrace(previous)


def _render(source: str, variables: Mapping[str, Any], limits: _Limits) -> str:
    try:
        template = _compile(source)
        chunks = []
        size = 0
        for chunk in template.generate(**variables, range=_bounded_range(limits)):
            limits.tick()
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateRenderError(f"the template renders more than {MAX_OUTPUT} bytes")
            chunks.append(chunk)
    except TemplateRenderError:
        raise
    except SecurityError as exc:
        raise TemplateRenderError(f"the template reached for something unsafe: {exc}") from None
    except TemplateError as exc:
        raise TemplateRenderError(f"the template has an error: {exc}") from None
    except (RecursionError, OverflowError, MemoryError, TypeError, ValueError,
            ZeroDivisionError) as exc:
        raise TemplateRenderError(f"the template failed: {type(exc).__name__}: {exc}") from None
    return "".join(chunks)
