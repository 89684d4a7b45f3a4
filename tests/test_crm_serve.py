"""`firstvalue serve` as a real process: a signed closed-won webhook in, the account's CRM
records out to a signed-webhook receiver, on the real clock."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
from standardwebhooks import Webhook

from firstvalue.crm.receiver import SyncReceiver
from tests.test_serve_clients import _wait_until_healthy, firstvalue_command, free_port

INBOUND = "whsec_" + base64.b64encode(b"serve-inbound-secret-for-tests!!").decode()
OUTBOUND = "whsec_" + base64.b64encode(b"serve-outbound-secret-for-test!!").decode()


def test_a_closed_won_webhook_reaches_the_crm_as_the_accounts_records(tmp_path):
    receiver = SyncReceiver(OUTBOUND).start()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("FIRSTVALUE_")}
    env.update(FIRSTVALUE_CRM_INBOUND_SECRET=INBOUND, FIRSTVALUE_CRM_WEBHOOK_URL=receiver.url,
               FIRSTVALUE_CRM_WEBHOOK_SECRET=OUTBOUND, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*firstvalue_command(), "--db", f"sqlite:///{tmp_path / 'serve.db'}", "serve",
             "--port", str(port), "--tick-seconds", "0.2"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process, log_path)
        signed_at = datetime.now(UTC) - timedelta(days=1)
        body = json.dumps({
            "type": "deal.closed_won", "occurred_at": signed_at.isoformat(),
            "account_id": "acme", "account": {"segment": "mid_market", "tier": 2,
                                              "timezone": "UTC", "owner": "csm-ana"},
            "deal": {"id": "deal-1", "contract_signed_at": signed_at.isoformat()}}).encode()
        moment = datetime.now(UTC)
        headers = {"webhook-id": "msg_serve_1", "webhook-timestamp": str(int(moment.timestamp())),
                   "webhook-signature": Webhook(INBOUND).sign("msg_serve_1", moment,
                                                              body.decode()),
                   "content-type": "application/json"}
        with httpx.Client(trust_env=False, timeout=10) as http:
            answer = http.post(url + "/webhooks/crm", content=body, headers=headers)
        assert answer.status_code == 200, answer.text

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and receiver.count("milestone") < 5:
            time.sleep(0.1)
        assert receiver.count("milestone") == 5, log_path.read_text()
        account = receiver.records[("account", "acme")]
        assert account["onboarding_stage"] == "awaiting_kickoff"
        assert account["owner"] == "csm-ana"
        assert receiver.refused == 0
    finally:
        process.terminate()
        process.wait(timeout=20)
        receiver.stop()
