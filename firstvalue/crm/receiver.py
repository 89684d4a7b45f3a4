"""A local receiver of CRM sync webhooks, on 127.0.0.1: what `firstvalue demo` sends its
milestone records to (through `DemoCrm`), so the demo shows them flowing without reaching out
of the machine.

It verifies each request's Standard Webhooks signature, drops a redelivered `webhook-id`, and
keeps the latest fields of each record, as a receiving CRM would.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from firstvalue.crm.signatures import SignatureError, verify_standard_webhook


class SyncReceiver:
    def __init__(self, secret: str) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.deliveries = 0
        self.refused = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: one connection for the whole demo

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                status = receiver._receive(secret, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/crm"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _receive(self, secret: str, headers: dict[str, str], body: bytes) -> int:
        lowered = {name.lower(): value for name, value in headers.items()}
        try:
            delivery = verify_standard_webhook(secret, lowered, body, time.time())
        except SignatureError:
            self.refused += 1
            return 401
        with self._lock:
            if delivery in self._seen:
                return 200
            self._seen.add(delivery)
            self.deliveries += 1
            for record in json.loads(body)["records"]:
                self.records[(record["type"], record["id"])] = record["fields"]
        return 200

    def count(self, record_type: str) -> int:
        return sum(1 for kind, _ in self.records if kind == record_type)

    def completed_milestones(self) -> int:
        return sum(1 for (kind, _), fields in self.records.items()
                   if kind == "milestone" and fields.get("completed_on"))

    def start(self) -> SyncReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class DemoCrm:
    """The demo's CRM: a signed-webhook receiver it starts on 127.0.0.1 itself, fed by the CRM
    sync every SYNC_HOURS simulated hours, as `serve` would after its ticks."""

    SYNC_HOURS = 6

    def __init__(self) -> None:
        import base64
        import secrets

        from firstvalue.crm.webhook import WebhookConnector

        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.receiver = SyncReceiver(secret)
        self.connectors = [WebhookConnector(self.receiver.url, secret)]
        self.steps = 0

    def start(self) -> DemoCrm:
        self.receiver.start()
        return self

    def sync(self, database: Any, now: int) -> None:
        from firstvalue.crm.sync import sync_crm

        self.steps += 1
        if self.steps % self.SYNC_HOURS == 0:
            sync_crm(database, now, self.connectors)

    def finish(self, database: Any, now: int) -> dict[str, Any]:
        from firstvalue.crm.sync import sync_crm, sync_status

        sync_crm(database, now, self.connectors)
        self.receiver.stop()
        return {"receiver": "a Standard Webhooks receiver on 127.0.0.1 started by the demo",
                "deliveries": self.receiver.deliveries,
                "milestone_records": self.receiver.count("milestone"),
                "completed_milestones": self.receiver.completed_milestones(),
                "account_records": self.receiver.count("account"),
                "status": sync_status(database)}
