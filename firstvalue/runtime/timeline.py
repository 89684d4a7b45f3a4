"""One account's story: its events, milestones, actions and escalations, each with its reason.

This is what answers "why did this account get that email?": every action row carries the rule,
the playbook version and the facts that made it due, and the timeline puts them in time order
beside the events and milestones they came from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from firstvalue.actions.outbox import action_json, list_actions
from firstvalue.engine.days import local_isoformat, zone
from firstvalue.engine.evaluate import AccountState
from firstvalue.store.database import Database

MAX_EVENTS = 500


def account_view(database: Database, state: AccountState, now: int) -> dict[str, Any]:
    """The account's state as JSON, with its stored actions and its timeline as they stood
    at `now`: what the engine had done by then, and the events dated by then."""
    with database.engine.connect() as conn:
        actions = [action_json(row) for row in list_actions(conn, [state.id])
                   if row["created_at"] <= now]
        events = conn.execute(sa.text(
            "SELECT ts, name, user_id, message_id FROM events WHERE account_id = :a "
            "AND type = 'track' AND ts <= :now ORDER BY ts DESC LIMIT :n"),
            {"a": state.id, "n": MAX_EVENTS, "now": now}).all()
    data = state.as_json()
    data["actions"] = actions
    data["timeline"] = _timeline(state, events, actions)
    return data


def _timeline(state: AccountState, events: list[Any],
              actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries in time order, every time in the account's own timezone."""
    tz = zone(state.timezone) or UTC
    entries: list[dict[str, Any]] = []
    for ts, name, actor, message_id in events:
        entries.append({"at": local_isoformat(ts, tz), "type": "event", "what": name,
                        "actor": actor, "reason": None, "ref": message_id})
    for milestone in state.milestones:
        if milestone.completed_at:
            timing = "on time" if milestone.on_time else (
                "late" if milestone.on_time is False else "no target day known")
            # Without a day 0 (no kickoff or contract known yet) there is no local day.
            day = "no day 0 yet" if milestone.local_day is None else \
                f"local day {milestone.local_day}"
            entries.append({"at": milestone.completed_at, "type": "milestone",
                            "what": f"{milestone.key} done ({day}, "
                                    f"target {milestone.target_day}, {timing})",
                            "actor": None, "reason": "its first qualifying event",
                            "ref": milestone.evidence})
    for stall in state.stalls:
        entries.append({"at": stall["opened_at"], "type": "stall",
                        "what": f"{stall['kind']} stall opened"
                                + (f" on {stall['milestone']}" if stall["milestone"] else "")
                                + (f", closed {stall['closed_at']}" if stall["closed_at"] else ""),
                        "actor": None, "reason": f"diagnosis: {stall['diagnosis']}",
                        "ref": stall["rule"]})
    for action in actions:
        kind = "escalation" if "." in action["rule"] else "action"
        at = _local(action["sent_at"] or action["due_at"], tz)
        what = f"{action['rule']}: {action['kind']} {action['status']}"
        if action["late"]:
            what += " (late)"
        if action["resolved_at"] and action["status"] == "sent":
            what += f", resolved {_local(action['resolved_at'], tz)}"
        # A cancelled action's reason says why it was cancelled; an error before that is past.
        reason = action["reason"] if action["status"] == "cancelled" else (
            action["error"] or action["reason"])
        entries.append({"at": at, "type": kind, "what": what, "actor": action["recipient"],
                        "reason": reason, "ref": action["key"]})
    entries.sort(key=lambda entry: (_sortable(entry["at"]), entry["type"]))
    return entries


def _local(moment: str | None, tz: Any) -> str | None:
    return None if moment is None else datetime.fromisoformat(moment).astimezone(tz).isoformat()


def _sortable(moment: str | None) -> str:
    if moment is None:
        return ""
    return datetime.fromisoformat(moment).astimezone(UTC).isoformat()
