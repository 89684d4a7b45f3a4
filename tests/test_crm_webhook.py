"""The generic CRM connector: records as Standard Webhooks to a real receiver on loopback."""

from __future__ import annotations

import base64
import time

from firstvalue.crm.receiver import SyncReceiver
from firstvalue.crm.signatures import verify_standard_webhook
from firstvalue.crm.sync import list_rows, sync_crm, sync_status
from firstvalue.crm.webhook import WebhookConnector
from tests.channel_fakes import HttpReceiver
from tests.conftest import micros
from tests.crm_helpers import onboarding_account, send_and_tick

SECRET = "whsec_" + base64.b64encode(b"crm-sync-webhook-secret-32bytes!").decode()


def test_records_arrive_signed_and_a_redelivery_carries_the_same_webhook_id(database, playbook):
    receiver = HttpReceiver().start()
    try:
        receiver.script = [(503, {})]
        send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
        connector = WebhookConnector(receiver.url, SECRET)
        sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector])
        assert sync_status(database)[0]["failed"] == 6
        sync_crm(database, micros("2026-03-04T12:01:00Z"), [connector])  # after the backoff
        first, second = receiver.received
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        verify_standard_webhook(SECRET, {k.lower(): v for k, v in second.headers.items()},
                                second.body, time.time())
        records = second.json()["records"]
        assert {r["type"] for r in records} == {"account", "milestone"}
        assert sync_status(database)[0]["delivered"] == 6
    finally:
        receiver.stop()


def test_a_receiver_answering_410_dead_letters_the_rows(database, playbook):
    receiver = HttpReceiver().start()
    try:
        receiver.script = [(410, {})]
        send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
        sync_crm(database, micros("2026-03-04T12:00:00Z"), [WebhookConnector(receiver.url,
                                                                              SECRET)])
        assert {row["status"] for row in list_rows(database)} == {"dead"}
    finally:
        receiver.stop()


def test_the_demo_receiver_refuses_a_wrong_signature():
    receiver = SyncReceiver(SECRET).start()
    other = "whsec_" + base64.b64encode(b"another-secret-altogether-32byt!").decode()
    try:
        from firstvalue.crm.connector import SyncRow

        row = SyncRow(1, "account", "acme", "acme", {"owner": "csm-ana"}, None)
        [outcome] = WebhookConnector(receiver.url, other).push([row])
        assert outcome.status == "failed" and receiver.refused == 1
        [outcome] = WebhookConnector(receiver.url, SECRET).push([row])
        assert outcome.status == "delivered"
        assert receiver.records == {("account", "acme"): {"owner": "csm-ana"}}
    finally:
        receiver.stop()
