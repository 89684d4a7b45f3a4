"""Accounts for the CRM tests, sent through the real ingest path and ticked."""

from __future__ import annotations

from typing import Any

from firstvalue.ingest.service import ingest_messages
from firstvalue.runtime.evaluation import tick
from tests.conftest import encode, micros

_sequence = iter(range(1, 10**9))


def group(account_id: str, when: str, user: str = "u1", **traits: Any) -> dict[str, Any]:
    return {"type": "group", "messageId": f"g-{next(_sequence)}", "userId": user,
            "groupId": account_id, "timestamp": when, "traits": traits}


def track(account_id: str, name: str, when: str, user: str = "u1",
          **properties: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": f"t-{next(_sequence)}", "userId": user,
            "event": name, "timestamp": when, "properties": properties,
            "context": {"groupId": account_id}}


def send_and_tick(database, playbook, now: str, *messages: dict[str, Any]) -> None:
    if messages:
        ingest_messages(database, [encode(m) for m in messages], micros(now),
                        playbook.anchor_names)
    tick(database, playbook, micros(now))


def onboarding_account(account_id: str = "acme") -> list[dict[str, Any]]:
    """A mid-market account signed on 1 March, kicked off on Monday 2 March (UTC), its
    workspace configured on day 1."""
    return [
        group(account_id, "2026-03-01T09:00:00Z", segment="mid_market", tier=2,
              timezone="UTC", name="Acme", owner="csm-ana"),
        track(account_id, "Deal Closed Won", "2026-03-01T10:00:00Z", deal_id="d-1"),
        track(account_id, "Kickoff Completed", "2026-03-02T10:00:00Z"),
        track(account_id, "Workspace Created", "2026-03-03T10:00:00Z"),
        track(account_id, "Integration Connected", "2026-03-03T11:00:00Z"),
        track(account_id, "User Invited", "2026-03-03T12:00:00Z"),
    ]
