"""The onboarding report: how many accounts reached each milestone, and time-to-value by segment.

The median TTV is taken over the accounts that reached first value; beside it stands the count of
those that have not yet, so nobody mistakes the median of the finished for the median of all.
(Censored estimates come with the analytics issue.)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from firstvalue.engine.evaluate import AccountState

SEGMENT_ORDER = ("smb", "mid_market", "enterprise")


def build_report(states: Sequence[AccountState], milestone_keys: Sequence[str],
                 now_iso: str, playbook_version: str,
                 held: Sequence[dict[str, Any]] = (),
                 actions: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "actions_by_rule": _action_rows(actions),
        "now": now_iso,
        "playbook_version": playbook_version,
        "accounts": len(states),
        "milestones": _milestone_rows(states, milestone_keys),
        "ttv_by_segment": _ttv_rows(states),
        "held_events": list(held),
    }


def _milestone_rows(states: Sequence[AccountState],
                    keys: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for key in keys:
        statuses = [m for s in states for m in s.milestones if m.key == key]
        done = [m for m in statuses if m.status == "done"]
        rows.append({
            "key": key,
            "reached": len(done),
            "reached_on_time": sum(1 for m in done if m.on_time),
            "open": len(statuses) - len(done),
            "overdue": sum(1 for m in statuses if m.status == "open" and (m.overdue_days or 0) > 0),
        })
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


def _ttv_rows(states: Sequence[AccountState]) -> list[dict[str, Any]]:
    segments = sorted({s.segment or "unknown" for s in states if s.run is not None},
                      key=lambda seg: (SEGMENT_ORDER.index(seg) if seg in SEGMENT_ORDER
                                       else len(SEGMENT_ORDER), seg))
    rows = []
    for segment in segments:
        runs = [s for s in states if s.run is not None and (s.segment or "unknown") == segment]
        reached = [s.ttv_days for s in runs if s.ttv_days is not None]
        targets = {s.ttv_target_days for s in runs if s.ttv_target_days is not None}
        rows.append({
            "segment": segment,
            "accounts": len(runs),
            "reached_value": len(reached),
            "not_reached_yet": len(runs) - len(reached),
            "median_ttv_days": float(statistics.median(reached)) if reached else None,
            "ttv_target_days": min(targets) if len(targets) == 1 else None,
        })
    return rows
