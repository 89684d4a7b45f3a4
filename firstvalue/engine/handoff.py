"""The handoff record's checks: pure, for the engine and the runtime alike (see
runtime/handoff.py for storing it)."""

from __future__ import annotations

from typing import Any

import msgspec

from firstvalue.errors import FirstvalueError
from firstvalue.playbook.model import HandoffField, HandoffSettings

_encode = msgspec.json.encode
MAX_TEXT = 2000
MAX_ITEMS = 50
MAX_DEPTH = 16  # levels of nesting in a field's value: reading deeper ones back needs a deep stack


class HandoffError(FirstvalueError):
    """A handoff submission with unknown or malformed fields; `problems` names each one."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems))


def parse_person(text: str) -> dict[str, str] | None:
    """`Name (role)` or `Name (role) <email>` as `{name, role[, email]}`, else None.

    Read from the right in one pass (no regular expression, whose backtracking on a long line
    of spaces would hold the interpreter for seconds)."""
    rest = text.strip()
    if len(rest) > MAX_TEXT:
        return None
    email = None
    if rest.endswith(">"):
        start = rest.rfind("<")
        if start < 0:
            return None
        email, rest = rest[start + 1:-1].strip(), rest[:start].rstrip()
        if not email or "<" in email:
            return None
    if not rest.endswith(")"):
        return None
    start = rest.rfind("(")
    if start < 0:
        return None
    role, name = rest[start + 1:-1].strip(), rest[:start].strip()
    if not role or not name or any(c in name for c in "()<>;") or "(" in role:
        return None
    return {"name": name, "role": role, **({"email": email} if email else {})}


def check_handoff(settings: HandoffSettings, submitted: Any) -> tuple[dict[str, Any], list[str]]:
    """The record to store and the required fields it lacks; HandoffError when any field is
    unknown or malformed."""
    if not isinstance(submitted, dict):
        raise HandoffError([("(body)", "send the handoff as a JSON object of its fields")])
    fields = {field.key: field for field in settings.fields}
    problems = [(name, f"not a handoff field; the fields are {', '.join(fields)}")
                for name in submitted if name not in fields]
    record = {}
    for name, value in submitted.items():
        field = fields.get(name)
        if field is None or _empty(value):
            continue
        why = _shape_problem(field, value)
        if why:
            problems.append((name, why))
        else:
            record[name] = value
    if problems:
        raise HandoffError(problems)
    missing = [f.key for f in settings.fields if f.required and f.key not in record]
    return record, missing


def _empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or value == [] or value == {}


def _depth(value: Any, limit: int) -> int:
    """How deeply `value` nests, counted no further than `limit` + 1 (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((child, depth + 1)
                         for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _shape_problem(field: HandoffField, value: Any) -> str | None:
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels; send a flatter value"
    if field.kind == "text":
        if not isinstance(value, str):
            return f"must be text, not {type(value).__name__}"
        return f"longer than {MAX_TEXT} characters" if len(value) > MAX_TEXT else None
    if field.kind == "object":
        if not isinstance(value, dict):
            return "must be an object, e.g. {\"crm\": \"salesforce\"}"
        return (f"larger than {10 * MAX_TEXT:,} bytes as JSON"
                if len(_encode(value)) > 10 * MAX_TEXT else None)
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        return f"must be a list of at most {MAX_ITEMS} entries"
    if field.kind == "list":
        bad = [i for i, item in enumerate(value)
               if not isinstance(item, str) or not item.strip() or len(item) > MAX_TEXT]
        return f"entry {bad[0]} must be non-empty text" if bad else None
    for index, person in enumerate(value):  # people
        if not isinstance(person, dict):
            return f"entry {index} must be an object with name and role"
        for key in ("name", "role"):
            if not isinstance(person.get(key), str) or not person[key].strip():
                return f"entry {index} needs a `{key}` (text)"
        unknown = set(person) - {"name", "role", "email", "title"}
        if unknown:
            return f"entry {index} has unknown keys {sorted(unknown)}; use name, role, email, title"
        for key in ("email", "title"):
            if key in person and not isinstance(person[key], str):
                return f"entry {index}: `{key}` must be text"
    return None


def missing_fields(settings: HandoffSettings, record: dict[str, Any]) -> list[str]:
    """The required fields a stored record lacks, by the playbook in use now."""
    return [f.key for f in settings.fields if f.required and _empty(record.get(f.key))]
