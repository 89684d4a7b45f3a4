"""Traits that arrive over time, kept so that neither arrival order nor `now` is lost.

Each key keeps the calls that set it, sorted by their own time then message id:
`{key: [[ts, message_id, value, received_at], ...]}`. The value at a moment is the one set last
at or before it; it holds "since" the first call of the unbroken run of calls giving it that
value, so sending the same `kickoff_at` again does not make it a new booking. Whatever order the
calls arrive in, the same list results.
"""

from __future__ import annotations

import bisect
from typing import Any

StampedTraits = dict[str, list[list[Any]]]
MAX_HISTORY = 50  # calls kept per key; the oldest go first


def merge_traits(stored: StampedTraits, incoming: dict[str, Any], ts: int, message_id: str,
                 received_at: int | None = None) -> bool:
    """Add one call's traits to `stored`; True if anything new was learned."""
    changed = False
    for key, value in incoming.items():
        history = stored.setdefault(key, [])
        entry = [ts, message_id, value, received_at if received_at is not None else ts]
        index = bisect.bisect_left([e[:2] for e in history], entry[:2])
        if index < len(history) and history[index][:2] == entry[:2]:
            continue  # the same call again
        history.insert(index, entry)
        del history[:-MAX_HISTORY]
        changed = True
    return changed


def traits_at(stored: StampedTraits, now: int) -> dict[str, list[Any]]:
    """Each trait as of `now`: `[value, since, message_id, received_at]` of the call that gave
    it its value (the first of the run of calls that kept that value)."""
    result: dict[str, list[Any]] = {}
    for key, history in stored.items():
        position = len(history)
        while position and history[position - 1][0] > now:
            position -= 1
        if not position:
            continue
        value = history[position - 1][2]
        start = position - 1
        while start and history[start - 1][2] == value:
            start -= 1
        first = history[start]
        result[key] = [value, first[0], first[1], first[3]]
    return result


def plain_traits(stored: StampedTraits) -> dict[str, Any]:
    """The latest value of every trait."""
    return {key: history[-1][2] for key, history in stored.items() if history}
