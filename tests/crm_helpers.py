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


class AppServer:
    """The firstvalue app on a real uvicorn server on 127.0.0.1, in a thread, with a clock
    the test moves (`now`, microseconds; the real clock until set)."""

    def __init__(self, database, playbook) -> None:
        import socket
        import threading
        import time

        import uvicorn

        from firstvalue.api.app import create_app

        self.now: int | None = None
        app = create_app(database, playbook,
                         clock=lambda: self.now if self.now is not None
                         else int(time.time() * 1_000_000))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> AppServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def post(self, path: str, body: bytes, headers: dict[str, str]):
        import httpx

        with httpx.Client(trust_env=False, timeout=10) as http:
            return http.post(self.url + path, content=body,
                             headers={"content-type": "application/json", **headers})
