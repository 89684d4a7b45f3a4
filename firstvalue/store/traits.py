"""Traits that arrive over time, merged so that the order of arrival does not matter.

Each trait is kept with the time and message id of the call that set it, and when that call
arrived: `{key: [value, ts, message_id, received_at]}`. A later call (by its own timestamp,
then message id) wins key by key, so two calls arriving in either order leave the same traits
behind.
"""

from __future__ import annotations

from typing import Any

StampedTraits = dict[str, list[Any]]


def merge_traits(stored: StampedTraits, incoming: dict[str, Any], ts: int,
                 message_id: str, received_at: int | None = None) -> bool:
    """Merge `incoming` (set at `ts` by `message_id`, arrived at `received_at`) into `stored`;
    True if anything changed. The arrival is kept beside the time for rule timing (a trait
    that arrives late must not act on the past)."""
    changed = False
    for key, value in incoming.items():
        current = stored.get(key)
        if current is not None and (current[1], current[2]) >= (ts, message_id):
            continue
        # The time matters as well as the value: `kickoff_at` counts as booked when it was set.
        stored[key] = [value, ts, message_id, received_at if received_at is not None else ts]
        changed = True
    return changed


def plain_traits(stored: StampedTraits) -> dict[str, Any]:
    return {key: entry[0] for key, entry in stored.items()}


def trait_times(stored: StampedTraits) -> dict[str, int]:
    return {key: entry[1] for key, entry in stored.items()}
