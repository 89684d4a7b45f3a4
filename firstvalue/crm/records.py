"""What the engine writes to a CRM: account fields and one milestone record per milestone.

These are the engine's own fields. Each connector maps them to the CRM's names, writes only
them, clears them when the state clears (None here), and never reads them back as input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACCOUNT = "account"
MILESTONE = "milestone"

ACCOUNT_FIELDS = ("onboarding_stage", "current_milestone", "days_since_kickoff", "ttv_days",
                  "open_stall", "handoff_complete", "owner")
MILESTONE_FIELDS = ("account_id", "milestone_key", "milestone_name", "completed_on",
                    "days_since_kickoff")


@dataclass(frozen=True)
class CrmRecord:
    """One record as the engine wants it in the CRM: `fields` maps the engine's field names
    (ACCOUNT_FIELDS or MILESTONE_FIELDS) to values, None meaning "clear it"."""

    record_type: str
    record_id: str
    account_id: str
    fields: dict[str, Any]


def records_from_state(state: dict[str, Any]) -> list[CrmRecord]:
    """The account record and the milestone records of one stored account state."""
    account_id = state["id"]
    records = [CrmRecord(ACCOUNT, account_id, account_id, account_fields(state))]
    for milestone in state.get("milestones") or ():
        record_id = milestone_record_id(account_id, milestone["key"])
        records.append(CrmRecord(MILESTONE, record_id, account_id, {
            "account_id": account_id,
            "milestone_key": milestone["key"],
            "milestone_name": milestone.get("name") or milestone["key"],
            "completed_on": (milestone.get("completed_at") or "")[:10] or None,
            "days_since_kickoff": milestone.get("local_day"),
        }))
    return records


def milestone_record_id(account_id: str, milestone_key: str) -> str:
    return f"{account_id}/{milestone_key}"


def account_fields(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "onboarding_stage": onboarding_stage(state),
        "current_milestone": state.get("current_milestone"),
        "days_since_kickoff": state.get("day"),
        "ttv_days": state.get("ttv_days"),
        "open_stall": open_stall_kinds(state),
        "handoff_complete": handoff_complete(state),
        "owner": state.get("owner"),
    }


def onboarding_stage(state: dict[str, Any]) -> str | None:
    """`awaiting_kickoff`, `onboarding`, `completed` or `ended`; None before a contract."""
    run = state.get("run")
    if not run:
        return None
    if run.get("status") in ("completed", "ended"):
        return run["status"]
    return "awaiting_kickoff" if state.get("day") is None else "onboarding"


def open_stall_kinds(state: dict[str, Any]) -> str | None:
    """The kinds of the account's open stalls, sorted and `;`-separated (HubSpot's separator
    for multiple values); None when none is open, which clears the field."""
    kinds = sorted({s["kind"] for s in state.get("stalls") or () if s.get("status") == "open"})
    return ";".join(kinds) or None


def handoff_complete(state: dict[str, Any]) -> bool | None:
    """Whether the sales-to-CS handoff is complete (every field the playbook requires is
    filled in), as the state says; None for a state from before handoffs were recorded."""
    handoff = state.get("handoff")
    return bool(handoff.get("complete")) if isinstance(handoff, dict) else None
