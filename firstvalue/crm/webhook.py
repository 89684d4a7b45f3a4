"""The generic connector: CRM records as signed webhooks (Standard Webhooks), for a CRM or a
pipeline firstvalue has no connector of its own for.

One request carries a batch of records. Its `webhook-id` is derived from the records it
carries, so a redelivery of the same batch has the same id and the receiver can drop it.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import httpx
import msgspec

from firstvalue.crm.connector import (
    DEAD,
    DELIVERED,
    FAILED,
    Outcome,
    RateLimited,
    RemoteError,
    SyncRow,
    http_client,
    send_json,
)

EVENT_TYPE = "firstvalue.crm.sync"


class WebhookConnector:
    name = "webhook"
    _client: httpx.Client  # open while a batch is pushed
    batch_size = 100

    def __init__(self, url: str, secret: str) -> None:
        from standardwebhooks import Webhook

        self.url = url
        self._webhook = Webhook(secret)

    def push(self, rows: list[SyncRow]) -> list[Outcome]:
        # One client (its connections kept alive) for the batch, closed with it.
        with http_client() as self._client:
            return self._push(rows)

    def _push(self, rows: list[SyncRow]) -> list[Outcome]:
        records = [{"type": row.record_type, "id": row.record_id, "account_id": row.account_id,
                    "fields": row.fields} for row in rows]
        body = msgspec.json.encode({"type": EVENT_TYPE, "records": records}, order="sorted")
        delivery = "fv-sync-" + hashlib.sha256(body).hexdigest()[:32]
        stamp = time.time()
        signature = self._webhook.sign(delivery, datetime.fromtimestamp(stamp, UTC),
                                       body.decode())
        headers = {"webhook-id": delivery, "webhook-timestamp": str(int(stamp)),
                   "webhook-signature": signature}
        try:
            send_json(self._client, "POST", self.url, body, headers)
        except RateLimited as exc:
            return [Outcome(row.id, FAILED, str(exc), retry_after=exc.retry_after)
                    for row in rows]
        except RemoteError as exc:
            status = DEAD if exc.status == 410 else FAILED
            return [Outcome(row.id, status, str(exc)) for row in rows]
        return [Outcome(row.id, DELIVERED) for row in rows]
