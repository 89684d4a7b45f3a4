"""90-day retention by onboarding cohort and by activation.

- The cohort of a run is the local month of its day 0 (the kickoff's date; the contract's on a
  track without a kickoff). A run with no day 0 yet belongs to no cohort.
- Retained means not churned by the end of local day 89, and active (a login or a meaningful
  action) on at least one of local days 60 to 89.
- A run is measured once its day 89 is over at `now`. A cohort with a run still short of that
  is incomplete: its rate is not given (`null`), so that a young cohort never reads as zero.
- Fully activated means every milestone done by local day 90. A run without every milestone
  done whose day 90 is not over yet is not known either way, and is left out of that split.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from firstvalue.metrics.runs import RunRecord

WINDOW = (60, 90)  # local days 60 to 89
ACTIVATION_DAY = 90


def retention_window(record: RunRecord) -> tuple[str, int, int] | None:
    """The activity window of a measured run: [start of day 60, start of day 90)."""
    if not measured(record):
        return None
    return (record.account_id, record.day_start(WINDOW[0]), record.day_start(WINDOW[1]))  # type: ignore[return-value]


def measured(record: RunRecord) -> bool:
    end = record.day_start(WINDOW[1])
    return end is not None and end <= record.now


def retained(record: RunRecord, active: Collection[str]) -> bool:
    end = record.day_start(WINDOW[1])
    churned = record.churned_at is not None and end is not None and record.churned_at < end
    return not churned and record.account_id in active


def activation(record: RunRecord, keys: Sequence[str]) -> str | None:
    """`activated`, `not_activated`, or None while it can still go either way."""
    memo = ("activation", tuple(keys))
    if memo not in record.memo:
        record.memo[memo] = _activation(record, keys)
    return record.memo[memo]  # type: ignore[no-any-return]


def _activation(record: RunRecord, keys: Sequence[str]) -> str | None:
    days = [record.local_day(d) for d in (record.done_on(k) for k in keys) if d is not None]
    if len(days) == len(keys) and all(d is not None and d <= ACTIVATION_DAY for d in days):
        return "activated"
    over = record.day_start(ACTIVATION_DAY + 1)
    if over is not None and over <= record.now:
        return "not_activated"
    return None


def retention_by_cohort(records: Sequence[RunRecord],
                        active: Collection[str]) -> list[dict[str, Any]]:
    cohorts: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.cohort is not None:
            cohorts.setdefault(record.cohort, []).append(record)
    return [{"cohort": key, **_retention(cohorts[key], active)} for key in sorted(cohorts)]


def retention_by_activation(records: Sequence[RunRecord], active: Collection[str],
                            keys: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for status in ("activated", "not_activated"):
        members = [r for r in records if r.day0 is not None and activation(r, keys) == status]
        rows.append({"activation": status, **_retention(members, active, partial=True)})
    return rows


def _retention(members: Sequence[RunRecord], active: Collection[str],
               partial: bool = False) -> dict[str, Any]:
    """Counts and the rate; with `partial` the rate is over the runs measured so far (an
    activation group keeps growing), otherwise only a complete group has one."""
    done = [r for r in members if measured(r)]
    kept = sum(1 for r in done if retained(r, active))
    complete = len(done) == len(members)
    has_rate = bool(done) and (complete or partial)
    return {"accounts": len(members), "measured": len(done), "pending": len(members) - len(done),
            "retained": kept, "complete": complete,
            "retention_rate": round(kept / len(done), 4) if has_rate else None}


def cohort_heatmap(records: Sequence[RunRecord], keys: Sequence[str],
                   retention: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cohort: the share of its eligible runs that reached each milestone (as the funnel
    counts them), then its 90-day retention where the cohort is complete."""
    from firstvalue.metrics.funnel import funnel_status

    cells = []
    for row in retention:
        members = [r for r in records if r.cohort == row["cohort"]]
        for index, key in enumerate(keys):
            statuses = [funnel_status(r, keys, index, "any") for r in members]
            eligible = sum(1 for s in statuses if "eligible" in s)
            done = sum(1 for s in statuses if "reached" in s)
            cells.append({"cohort": row["cohort"], "measure": key, "eligible": eligible,
                          "share": round(done / eligible, 4) if eligible else None})
        cells.append({"cohort": row["cohort"], "measure": "retained_90_days",
                      "eligible": row["measured"], "share": row["retention_rate"]})
    return cells
