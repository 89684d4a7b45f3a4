"""The onboarding funnel: per milestone, who reached it, on time, and who is still open.

Only eligible runs count for a milestone: a run is eligible once it has reached the milestone or
its target day has passed (local day T is over). A run whose target day is still ahead is not
"open" yet, only early: counting it would make a funnel of recent accounts look like a leak.

Two modes:
- `any`: a milestone counts as reached whatever the order;
- `strict`: it counts only if every earlier milestone (in the playbook's order) was reached too,
  each no later than the next.

Conversion from one milestone to the next is taken over the runs that reached the first and are
eligible for the second, so the two numbers describe the same runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firstvalue.metrics.runs import RunRecord

MODES = ("any", "strict")
STATUSES = ("eligible", "reached", "on_time", "open")


def reached(record: RunRecord, keys: Sequence[str], index: int, mode: str) -> bool:
    key = keys[index]
    if key not in record.milestones:
        return False
    if mode == "any":
        return True
    times = [record.milestones.get(k) for k in keys[:index + 1]]
    if any(t is None for t in times):
        return False
    return all(a <= b for a, b in zip(times, times[1:], strict=False))  # type: ignore[operator]


def on_time(record: RunRecord, key: str) -> bool:
    done_on = record.done_on(key)
    target = record.targets.get(key)
    if done_on is None or target is None or record.day0 is None:
        return False
    return (done_on - record.day0).days <= target


def target_passed(record: RunRecord, key: str) -> bool:
    target = record.targets.get(key)
    if target is None or record.day0 is None:
        return False
    return (record.today - record.day0).days > target


def funnel_status(record: RunRecord, keys: Sequence[str], index: int,
                  mode: str) -> frozenset[str]:
    """The statuses a run has for the milestone at `index`: a subset of STATUSES."""
    memo = ("funnel", tuple(keys), index, mode)
    found = record.memo.get(memo)
    if found is None:
        found = record.memo[memo] = frozenset(_statuses(record, keys, index, mode))
    return found  # type: ignore[no-any-return]


def _statuses(record: RunRecord, keys: Sequence[str], index: int, mode: str) -> set[str]:
    statuses: set[str] = set()
    if reached(record, keys, index, mode):
        statuses |= {"eligible", "reached"}
        if on_time(record, keys[index]):
            statuses.add("on_time")
    elif target_passed(record, keys[index]):
        statuses |= {"eligible", "open"}
    return statuses


def funnel(records: Sequence[RunRecord], keys: Sequence[str],
           mode: str = "any") -> list[dict[str, Any]]:
    rows = []
    previous: list[frozenset[str]] | None = None
    for index, key in enumerate(keys):
        statuses = [funnel_status(r, keys, index, mode) for r in records]
        counts = {status: sum(1 for s in statuses if status in s) for status in STATUSES}
        row: dict[str, Any] = {"key": key, **counts,
                               "reached_rate": _rate(counts["reached"], counts["eligible"]),
                               "on_time_rate": _rate(counts["on_time"], counts["eligible"]),
                               "from_previous": None, "conversion": None}
        if previous is not None:
            base = [s for s, p in zip(statuses, previous, strict=True)
                    if "reached" in p and "eligible" in s]
            converted = sum(1 for s in base if "reached" in s)
            row["from_previous"] = {"reached_previous_and_eligible": len(base),
                                    "reached": converted}
            row["conversion"] = _rate(converted, len(base))
        previous = statuses
        rows.append(row)
    return rows


def drilldown(records: Sequence[RunRecord], keys: Sequence[str], milestone: str,
              status: str, mode: str = "any") -> list[str]:
    """The account ids behind one funnel count: the very runs the count counted."""
    index = list(keys).index(milestone)
    return [r.account_id for r in records if status in funnel_status(r, keys, index, mode)]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
