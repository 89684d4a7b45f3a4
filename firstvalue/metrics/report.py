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
                 held: Sequence[dict[str, Any]] = (),
                 actions: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    records = load_runs(database, playbook, now)
    analytics = build_analytics(database, playbook, now, by, mode, records)
    with database.engine.connect() as conn:
        accounts = conn.execute(sa.text("SELECT COUNT(*) FROM accounts")).scalar_one()
    return {
        "now": isoformat(now),
        "playbook_version": playbook.version,
        "accounts": accounts,
        "milestones": _milestone_rows(records, milestone_keys(playbook)),
        "ttv_by_segment": _ttv_rows(records, playbook.loaded.model.first_value),
        **analytics,
        "actions_by_rule": _action_rows(actions),
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


def _action_rows(actions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule (escalations as `rule.escalation`): what was done, cancelled or suppressed."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for action in actions:
        row = rows.setdefault((action["rule"], action["kind"]), {
            "rule": action["rule"], "escalation": "." in action["rule"], "kind": action["kind"],
            **{status: 0 for status in ("sent", "late", "pending", "failed", "dead",
                                        "cancelled", "suppressed", "resolved")}})
        row[action["status"]] += 1
        row["late"] += int(bool(action["late"]))
        row["resolved"] += int(action["resolved_at"] is not None and action["status"] == "sent")
    return sorted(rows.values(), key=lambda row: (row["rule"], row["kind"]))


def _ttv_rows(records: Sequence[RunRecord], first_value: str) -> list[dict[str, Any]]:
    """TTV per segment in the report's first shape; the median is the Kaplan-Meier one."""
    rows = []
    estimates = {row["group"]: row for row in ttv_by(records, "segment", first_value,
                                                      curve=False)}
    for segment in group_order(list(estimates), "segment"):
        row = estimates[segment]
        rows.append({"segment": segment, "accounts": row["accounts"],
                     "reached_value": row["reached"], "not_reached_yet": row["censored"],
                     "median_ttv_days": row["median_days"],
                     "ttv_target_days": row["ttv_target_days"]})
    return rows
