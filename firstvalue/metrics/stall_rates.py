"""Stall rate per milestone, from the stall history the engine recorded.

A stall belongs to the milestone the run was working on when the stall opened: the one an
overdue stall names, else the first milestone (in the playbook's order) not done at that moment.
A stall opened after every milestone was done belongs to none. The rate of a milestone is the
share of the runs that ever worked on it (the moment every earlier milestone was done, or day 0
for the first, came before `now` and before the milestone itself) that stalled on it at least
once; a run that stalled on a milestone counts as having worked on it. Retracted stalls (the
events showed they were wrong) do not count; stalls opened after `now` do not either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firstvalue.metrics.runs import RunRecord
from firstvalue.store.database import Database


def load_stalls(database: Database, now: int) -> list[tuple[str, int, str, str | None, int]]:
    """(account id, run, kind, milestone, opened at) of every stall that was not retracted."""
    with database.engine.connect() as conn:
        mark = "?" if conn.dialect.name == "sqlite" else "%s"
        # The driver's own cursor: tens of thousands of rows, and SQLAlchemy's row objects
        # would cost more than the rows.
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SELECT account_id, run, kind, milestone, opened_at FROM stalls "
                       f"WHERE status <> 'retracted' AND opened_at <= {mark}", (now,))
        rows = cursor.fetchall()
        cursor.close()
    return [tuple(row) for row in rows]


def worked_on_from(record: RunRecord, keys: Sequence[str], index: int) -> int | None:
    """When the run started working on milestone `index` (None if it never did by now)."""
    start = record.day_start(0)
    if start is None:
        return None
    for key in keys[:index]:
        done = record.milestones.get(key)
        if done is None:
            return None
        start = max(start, done)
    finished = record.milestones.get(keys[index])
    if start > record.now or (finished is not None and finished < start):
        return None
    return start


def stall_milestone(record: RunRecord, keys: Sequence[str], milestone: str | None,
                    opened_at: int) -> str | None:
    if milestone is not None:
        return milestone
    for key in keys:
        done = record.milestones.get(key)
        if done is None or done > opened_at:
            return key
    return None


def stall_rates(records: Sequence[RunRecord], keys: Sequence[str],
                stalls: Sequence[tuple[str, int, str, str | None, int]]) -> dict[str, Any]:
    by_run = {(r.account_id, r.run): r for r in records}
    stalled: dict[str, set[str]] = {key: set() for key in keys}
    kinds: dict[str, dict[str, int]] = {key: {} for key in keys}
    for account_id, run, kind, milestone, opened_at in stalls:
        record = by_run.get((account_id, run))
        if record is None:
            continue
        key = stall_milestone(record, keys, milestone, opened_at)
        if key not in stalled:
            continue
        if account_id not in stalled[key]:
            kinds[key][kind] = kinds[key].get(kind, 0) + 1
        stalled[key].add(account_id)
    rows = []
    for index, key in enumerate(keys):
        exposed = {r.account_id for r in records if worked_on_from(r, keys, index) is not None}
        # An overdue stall can name a milestone the run had not started on yet: it counts.
        exposed |= stalled[key]
        count = len(stalled[key])
        rows.append({"key": key, "worked_on": len(exposed), "stalled": count,
                     "stall_rate": round(count / len(exposed), 4) if exposed else None,
                     "by_kind": dict(sorted(kinds[key].items()))})
    worst = max(rows, key=lambda r: (r["stalled"], r["stall_rate"] or 0), default=None)
    return {"milestones": rows,
            "most_stalled": worst["key"] if worst and worst["stalled"] else None}
