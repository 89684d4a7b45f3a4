"""Milestone detection rules, compiled once per playbook and run over an account's events.

Each detector answers one question: which event made the condition true first? Because events
are taken in time order (then message id), the answer depends only on the set of events, never
on the order they arrived in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from firstvalue.engine.facts import EventFact, as_number, by_order
from firstvalue.playbook.model import (
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    EventCondition,
    UsersCondition,
)

Predicate = Callable[[Any], bool]
EventsByName = Mapping[str, Sequence[EventFact]]
Contacts = Mapping[str, Mapping[str, Any]]
_MISSING = object()


@dataclass(frozen=True)
class Detector:
    """A compiled condition: `detect` gives the completing event, or None."""

    names: frozenset[str]
    detect: Callable[[EventsByName, Contacts], EventFact | None]


def compile_condition(condition: Condition, meanings: Mapping[str, list[str]]) -> Detector:
    if isinstance(condition, AllOf):
        return _compile_all(condition.all_of, meanings)
    if isinstance(condition, AnyOf):
        return _compile_any(condition.any_of, meanings)
    if isinstance(condition, UsersCondition):
        return _compile_users(condition, meanings)
    return _compile_event(condition, meanings)


def resolve_names(names: str | list[str], meanings: Mapping[str, list[str]],
                  as_meaning: bool) -> frozenset[str]:
    """Event names for meaning keys (or literal event names)."""
    wanted = [names] if isinstance(names, str) else names
    if as_meaning:
        return frozenset(name for key in wanted for name in meanings[key])
    return frozenset(n for key in wanted for n in (meanings.get(key, [key])))


def _compile_event(condition: EventCondition, meanings: Mapping[str, list[str]]) -> Detector:
    if condition.meaning is not None:
        names = resolve_names(condition.meaning, meanings, as_meaning=True)
    else:
        names = resolve_names(condition.event or [], {}, as_meaning=False)
    matches = _event_matcher(condition.where, condition.contact)
    needed = condition.count

    def detect(events: EventsByName, contacts: Contacts) -> EventFact | None:
        found = 0
        for event in _in_order(events, names):
            if matches(event, contacts):
                found += 1
                if found == needed:
                    return event
        return None

    return Detector(names, detect)


def _compile_users(condition: UsersCondition, meanings: Mapping[str, list[str]]) -> Detector:
    names = resolve_names(condition.of, meanings, as_meaning=False)
    matches = _event_matcher(condition.where, condition.contact)
    needed = condition.users
    distinct_by = condition.distinct_by

    def detect(events: EventsByName, contacts: Contacts) -> EventFact | None:
        seen: set[Any] = set()
        for event in _in_order(events, names):
            if event.actor is None or not matches(event, contacts):
                continue
            if distinct_by is None:
                seen.add(event.actor)
            else:
                value = contacts.get(event.actor, {}).get(distinct_by)
                if value is None:
                    continue
                seen.add(_hashable(value))
            if len(seen) == needed:
                return event
        return None

    return Detector(names, detect)


def _compile_all(parts: list[Condition], meanings: Mapping[str, list[str]]) -> Detector:
    detectors = [compile_condition(part, meanings) for part in parts]

    def detect(events: EventsByName, contacts: Contacts) -> EventFact | None:
        latest = None
        for detector in detectors:
            found = detector.detect(events, contacts)
            if found is None:
                return None
            if latest is None or found.order > latest.order:
                latest = found
        return latest

    return Detector(frozenset().union(*(d.names for d in detectors)), detect)


def _compile_any(parts: list[Condition], meanings: Mapping[str, list[str]]) -> Detector:
    detectors = [compile_condition(part, meanings) for part in parts]

    def detect(events: EventsByName, contacts: Contacts) -> EventFact | None:
        earliest = None
        for detector in detectors:
            found = detector.detect(events, contacts)
            if found is not None and (earliest is None or found.order < earliest.order):
                earliest = found
        return earliest

    return Detector(frozenset().union(*(d.names for d in detectors)), detect)


def _in_order(events: EventsByName, names: frozenset[str]) -> Sequence[EventFact]:
    lists = [events[name] for name in names if name in events]
    if len(lists) == 1:
        return lists[0]
    merged = [event for group in lists for event in group]
    merged.sort(key=by_order)
    return merged


def _event_matcher(where: Mapping[str, Any],
                   contact: Mapping[str, Any]) -> Callable[[EventFact, Contacts], bool]:
    property_tests = [(path.split("."), _predicate(test)) for path, test in where.items()]
    contact_tests = [(path.split("."), _predicate(test)) for path, test in contact.items()]
    if not property_tests and not contact_tests:
        return lambda _event, _contacts: True

    def matches(event: EventFact, contacts: Contacts) -> bool:
        if property_tests and not _all_hold(property_tests, event.properties):
            return False
        if contact_tests:
            traits = contacts.get(event.actor or "", {})
            return _all_hold(contact_tests, traits)
        return True

    return matches


def _all_hold(tests: list[tuple[list[str], Predicate]], document: Mapping[str, Any]) -> bool:
    return all(test(_lookup(document, path)) for path, test in tests)


def traits_fit(where: Mapping[str, Any], traits: Mapping[str, Any]) -> bool:
    """Whether the traits hold every test of `where` (a value, a list of values, or an
    operator filter), as property filters are judged."""
    return all(_predicate(test)(traits.get(key, _MISSING)) for key, test in where.items())


def _lookup(document: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(document, Mapping) or part not in document:
            return _MISSING
        document = document[part]
    return document


def _predicate(test: Any) -> Predicate:
    if isinstance(test, Comparison):
        return _comparison(test)
    if isinstance(test, list):
        options = [_hashable(option) for option in test]
        return lambda value: value is not _MISSING and _hashable(value) in options
    return lambda value: value is not _MISSING and _equal(value, test)


def _comparison(test: Comparison) -> Predicate:
    checks: list[Predicate] = []
    given = test.model_fields_set
    if "eq" in given:
        checks.append(lambda v: v is not _MISSING and _equal(v, test.eq))
    if "ne" in given:
        checks.append(lambda v: v is _MISSING or not _equal(v, test.ne))
    for name, holds in (("gt", float.__gt__), ("gte", float.__ge__), ("lt", float.__lt__),
                        ("lte", float.__le__)):
        if name in given:
            bound = float(getattr(test, name))
            checks.append(lambda v, holds=holds, bound=bound: _number_holds(v, holds, bound))
    if "in_" in given:
        checks.append(_predicate(list(test.in_ or [])))
    if "exists" in given:
        wanted = bool(test.exists)
        checks.append(lambda v: (v is not _MISSING and v is not None) == wanted)
    return lambda value: all(check(value) for check in checks)


def _number_holds(value: Any, holds: Callable[[float, float], bool], bound: float) -> bool:
    number = as_number(value)
    return number is not None and holds(number, bound)


def _equal(value: Any, expected: Any) -> bool:
    # A bool is not the number 1 here: `{paid: true}` must not match `paid: 1`.
    if isinstance(value, bool) != isinstance(expected, bool):
        return False
    return value == expected


def _hashable(value: Any) -> Any:
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, dict | list):
        return repr(value)
    return value
