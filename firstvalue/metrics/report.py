"""The onboarding report: milestones reached, time-to-value (censored) against target, phases,
the funnel with stall rates, retention, expansion and experiments, all at `now`.

Time-to-value is estimated with Kaplan-Meier: the runs that have not reached value yet are
censored, not dropped and not averaged in (see docs/analytics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from firstvalue.clock import isoformat
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.metrics.analytics import build_analytics, milestone_keys
from firstvalue.metrics.funnel import target_passed
from firstvalue.metrics.runs import RunRecord, group_order, load_runs
from firstvalue.metrics.survival import ttv_by
from firstvalue.store.database import Database


def build_report(database: Database, playbook: CompiledPlaybook, now: int,
                 by: str = "segment", mode: str = "any",
                 held: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    records = load_runs(database, playbook, now)
    analytics = build_analytics(database, playbook, now, by, mode, records)
    with database.engine.connect() as conn:
        accounts = conn.execute(sa.text("SELECT COUNT(*) FROM accounts")).scalar_one()
        actions = action_counts(conn)
    return {
        "now": isoformat(now),
        "playbook_version": playbook.version,
        "accounts": accounts,
        "milestones": _milestone_rows(records, milestone_keys(playbook)),
        "ttv_by_segment": _ttv_rows(records, playbook.loaded.model.first_value,
                                    analytics["ttv"] if by == "segment" else None),
        **analytics,
        "actions_by_rule": actions,
        "held_events": list(held),
    }


def _milestone_rows(records: Sequence[RunRecord], keys: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for key in keys:
        done = [r for r in records if key in r.milestones]
        late = [r for r in records if key not in r.milestones and target_passed(r, key)]
        on_time = [r for r in done if r.day0 is not None and key in r.targets
                   and (r.done_on(key) - r.day0).days <= r.targets[key]]  # type: ignore[operator]
        rows.append({"key": key, "reached": len(done), "reached_on_time": len(on_time),
                     "open": len(records) - len(done), "overdue": len(late)})
    return rows


def action_counts(conn: sa.Connection) -> list[dict[str, Any]]:
    """Per rule and kind (escalations as `rule.escalation`): how many of its outbox rows have
    each status, how many were late, and how many sent ones were later resolved. Counted by
    the database: the outbox of 10,000 accounts is too long to read row by row for a total."""
    statuses = ("sent", "late", "pending", "failed", "dead", "cancelled", "suppressed",
                "resolved")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    found = conn.execute(sa.text(
        "SELECT rule, kind, status, COUNT(*), SUM(CASE WHEN late <> 0 THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN resolved_at IS NOT NULL AND status = 'sent' THEN 1 ELSE 0 END) "
        "FROM actions GROUP BY rule, kind, status")).all()
    for rule, kind, status, count, late, resolved in found:
        row = rows.setdefault((rule, kind), {"rule": rule, "escalation": "." in rule,
                                             "kind": kind, **{name: 0 for name in statuses}})
        row[status] += count
        row["late"] += int(late or 0)
        row["resolved"] += int(resolved or 0)
    return sorted(rows.values(), key=lambda row: (row["rule"], row["kind"]))


def _ttv_rows(records: Sequence[RunRecord], first_value: str,
              by_segment: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """TTV per segment in the report's first shape; the median is the Kaplan-Meier one."""
    rows = []
    if by_segment is None:
        by_segment = ttv_by(records, "segment", first_value, curve=False)
    estimates = {row["group"]: row for row in by_segment}
    for segment in group_order(list(estimates), "segment"):
        row = estimates[segment]
        rows.append({"segment": segment, "accounts": row["accounts"],
                     "reached_value": row["reached"], "not_reached_yet": row["censored"],
                     "median_ttv_days": row["median_days"],
                     "ttv_target_days": row["ttv_target_days"]})
    return rows
