"""Inbound CRM and email webhooks, sent as real signed requests to the app on a real server."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook

from firstvalue.runtime.evaluation import evaluate_accounts, tick
from tests.conftest import micros
from tests.crm_helpers import AppServer

CRM_SECRET = "whsec_" + base64.b64encode(b"crm-inbound-test-secret-32bytes!").decode()
EMAIL_SECRET = "whsec_" + base64.b64encode(b"email-inbound-test-secret-32byte").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-secret-entirely-32by!").decode()


@pytest.fixture
def app(database, playbook, monkeypatch):
    monkeypatch.setenv("FIRSTVALUE_CRM_INBOUND_SECRET", CRM_SECRET)
    monkeypatch.setenv("FIRSTVALUE_EMAIL_INBOUND_SECRET", EMAIL_SECRET)
    server = AppServer(database, playbook).start()
    yield server
    server.stop()


def signed(body: bytes, delivery: str, secret: str = CRM_SECRET,
           at: float | None = None) -> dict[str, str]:
    moment = datetime.fromtimestamp(int(at if at is not None else time.time()), UTC)
    return {"webhook-id": delivery, "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": Webhook(secret).sign(delivery, moment, body.decode())}


def closed_won(account_id: str = "acme", **deal: object) -> bytes:
    return json.dumps({
        "type": "deal.closed_won", "occurred_at": "2026-03-01T15:00:00Z",
        "account_id": account_id,
        "account": {"name": "Acme", "segment": "mid_market", "tier": 2, "timezone": "UTC",
                    "owner": "csm-ana"},
        "deal": {"id": "deal-7", "contract_signed_at": "2026-03-01T10:00:00Z", "arr": 36000,
                 "plan": "growth", "ae": "ae-bo", **deal},
        "handoff": {"use_case": "pipeline_visibility", "success_criteria": "weekly report"},
    }).encode()


def stored(database) -> dict[str, int]:
    with database.engine.connect() as conn:
        return {table: conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar()
                for table in ("events", "accounts", "inbound_webhooks", "memberships")}


NOTHING = {"events": 0, "accounts": 0, "inbound_webhooks": 0, "memberships": 0}


def test_a_closed_won_webhook_creates_the_account_with_its_contract_date_and_starts_its_run(
        app, database, playbook):
    body = closed_won()
    response = app.post("/webhooks/crm", body, signed(body, "msg_closed_won_1"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"

    tick(database, playbook, micros("2026-03-02T00:00:00Z"))
    [state] = evaluate_accounts(database, playbook, micros("2026-03-02T00:00:00Z"), ["acme"])
    assert state.contract_signed_at == "2026-03-01T10:00:00+00:00"
    assert state.run["status"] == "active" and state.run["deal_id"] == "deal-7"
    assert state.segment == "mid_market" and state.owner == "csm-ana"
    assert state.arr == 36000
    with database.engine.connect() as conn:
        traits = json.loads(conn.execute(sa.text(
            "SELECT traits FROM accounts WHERE id = 'acme'")).scalar())
    assert traits["plan"][-1][2] == "growth" and traits["ae"][-1][2] == "ae-bo"
    assert traits["handoff"][-1][2]["use_case"] == "pipeline_visibility"


def test_a_replayed_webhook_id_is_ignored_even_with_another_body(app, database):
    body = closed_won()
    assert app.post("/webhooks/crm", body, signed(body, "msg_1")).status_code == 200
    before = stored(database)
    again = app.post("/webhooks/crm", body, signed(body, "msg_1"))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    other = closed_won(arr=99)
    changed = app.post("/webhooks/crm", other, signed(other, "msg_1"))
    assert changed.json()["status"] == "duplicate"
    assert stored(database) == before


@pytest.mark.parametrize("case", ["stale", "future", "tampered", "wrong_secret", "unsigned",
                                  "garbled"])
def test_a_bad_signature_is_answered_401_and_nothing_is_stored(app, database, case):
    body = closed_won()
    headers = signed(body, "msg_bad")
    if case == "stale":
        headers = signed(body, "msg_bad", at=time.time() - 6 * 60)
    elif case == "future":
        headers = signed(body, "msg_bad", at=time.time() + 6 * 60)
    elif case == "tampered":
        body = body.replace(b"36000", b"36001")
    elif case == "wrong_secret":
        headers = signed(body, "msg_bad", secret=OTHER_SECRET)
    elif case == "unsigned":
        headers = {}
    else:
        headers["webhook-signature"] = "v1,not-base64!!"
    response = app.post("/webhooks/crm", body, headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    assert CRM_SECRET not in response.text
    assert stored(database) == NOTHING


def test_a_signature_four_minutes_old_is_still_accepted(app, database):
    body = closed_won()
    response = app.post("/webhooks/crm", body, signed(body, "msg_ok", at=time.time() - 240))
    assert response.status_code == 200


def test_an_endpoint_without_a_secret_refuses_everything(app, database, monkeypatch):
    monkeypatch.delenv("FIRSTVALUE_CRM_INBOUND_SECRET")
    body = closed_won()
    response = app.post("/webhooks/crm", body, signed(body, "msg_x"))
    assert response.status_code == 401
    assert "FIRSTVALUE_CRM_INBOUND_SECRET" in response.json()["error"]["message"]
    assert stored(database) == NOTHING


@pytest.mark.parametrize(("body", "named"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not an object"),
    (json.dumps({"type": "deal.won", "account_id": "a"}).encode(), "deal.closed_won"),
    (json.dumps({"type": "deal.closed_won", "occurred_at": "2026-03-01T10:00:00Z",
                 "deal": {"id": "d"}}).encode(), "`account_id`"),
    (json.dumps({"type": "deal.closed_won", "account_id": "a", "occurred_at": "yesterday",
                 "deal": {"id": "d"}}).encode(), "'yesterday'"),
    (json.dumps({"type": "deal.expanded", "account_id": "a",
                 "occurred_at": "2026-03-01T10:00:00Z", "deal": {"id": "d"}}).encode(),
     "`deal.amount`"),
    (json.dumps({"type": "deal.expanded", "account_id": "a",
                 "occurred_at": "2026-03-01T10:00:00Z",
                 "deal": {"id": "d", "amount": "lots"}}).encode(), "'lots'"),
])
def test_a_malformed_payload_is_refused_naming_the_value_and_nothing_is_stored(
        app, database, body, named):
    response = app.post("/webhooks/crm", body, signed(body, "msg_malformed"))
    assert response.status_code == 400
    assert named in response.json()["error"]["message"]
    assert stored(database) == NOTHING


def test_an_oversized_webhook_is_refused_with_413_and_nothing_is_stored(app, database):
    body = closed_won(notes="x" * 300_000)
    response = app.post("/webhooks/crm", body, signed(body, "msg_big"))
    assert response.status_code == 413
    assert stored(database) == NOTHING


def test_a_renewal_arriving_before_the_deal_waits_and_starts_no_run(app, database, playbook):
    renewal = json.dumps({"type": "deal.renewed", "occurred_at": "2026-03-05T10:00:00Z",
                          "account_id": "acme", "deal": {"id": "renewal-1", "arr": 40000}}
                         ).encode()
    response = app.post("/webhooks/crm", renewal, signed(renewal, "msg_renewal"))
    assert response.json()["events"] == ["pending_account"]  # held, not lost

    body = closed_won()
    app.post("/webhooks/crm", body, signed(body, "msg_deal"))
    tick(database, playbook, micros("2026-03-06T00:00:00Z"))
    [state] = evaluate_accounts(database, playbook, micros("2026-03-06T00:00:00Z"), ["acme"])
    assert state.run["number"] == 1
    with database.engine.connect() as conn:
        held = conn.execute(sa.text(
            "SELECT account_id FROM events WHERE name = 'Renewal Closed'")).scalar()
    assert held == "acme"


def test_a_late_closed_won_dates_the_run_from_its_contract(app, database, playbook):
    body = closed_won(contract_signed_at="2025-09-01T10:00:00Z")
    app.post("/webhooks/crm", body, signed(body, "msg_late"))
    [state] = evaluate_accounts(database, playbook, micros("2026-03-06T00:00:00Z"), ["acme"])
    assert state.contract_signed_at == "2025-09-01T10:00:00+00:00"


def test_churn_and_expansion_are_stored_with_their_amount(app, database):
    for delivery, payload in (
            ("msg_exp", {"type": "deal.expanded", "occurred_at": "2026-05-01T10:00:00Z",
                         "account_id": "acme", "deal": {"id": "x-1", "amount": 12000}}),
            ("msg_churn", {"type": "account.churned", "occurred_at": "2026-06-01T10:00:00Z",
                           "account_id": "acme", "deal": {"reason": "budget"}})):
        body = json.dumps(payload).encode()
        assert app.post("/webhooks/crm", body, signed(body, delivery)).status_code == 200
    with database.engine.connect() as conn:
        rows = dict(conn.execute(sa.text(
            "SELECT name, properties FROM events WHERE type = 'track'")).all())
    assert json.loads(rows["Expansion Closed"])["amount"] == 12000
    assert json.loads(rows["Account Churned"])["reason"] == "budget"


def test_email_engagement_is_tied_to_the_contact_and_keeps_no_address(
        app, database, playbook):
    from firstvalue.ingest.service import ingest_messages
    from tests.conftest import encode

    ingest_messages(database, [encode({"type": "identify", "messageId": "i1", "userId": "u-jane",
                                       "traits": {"email": "Jane@Acme.example"}})],
                    micros("2026-03-01T00:00:00Z"), playbook.anchor_names)
    body = json.dumps({"type": "email.replied", "occurred_at": "2026-03-04T09:00:00Z",
                       "recipient": "jane@acme.example", "message_id": "<abc@firstvalue>"}
                      ).encode()
    response = app.post("/webhooks/email", body, signed(body, "msg_reply", EMAIL_SECRET))
    assert response.status_code == 200, response.text
    with database.engine.connect() as conn:
        user, properties = conn.execute(sa.text(
            "SELECT user_id, properties FROM events WHERE name = 'Email Replied'")).one()
    assert user == "u-jane"
    assert "acme.example" not in properties.lower()

    # Signed for the CRM endpoint is not signed for the email one.
    other = app.post("/webhooks/email", body, signed(body, "msg_reply_2", CRM_SECRET))
    assert other.status_code == 401


def email_body(kind: str = "email.opened", **extra: object) -> bytes:
    return json.dumps({"type": kind, "occurred_at": "2026-03-04T09:00:00Z",
                       "recipient": "jane@acme.example", **extra}).encode()


def test_an_email_delivery_sent_twice_is_stored_once(app, database):
    body = email_body()
    first = app.post("/webhooks/email", body, signed(body, "msg_open", EMAIL_SECRET))
    again = app.post("/webhooks/email", body, signed(body, "msg_open", EMAIL_SECRET))
    assert (first.json()["status"], again.json()["status"]) == ("accepted", "duplicate")
    assert stored(database)["events"] == 1


@pytest.mark.parametrize(("body", "named"), [
    (email_body("email.bounced"), "email.opened"),
    (email_body(recipient=""), "`recipient`"),
    (json.dumps({"type": "email.clicked", "recipient": "a@b.example"}).encode(),
     "`occurred_at`"),
])
def test_a_malformed_email_webhook_names_the_value_and_stores_nothing(app, database, body,
                                                                      named):
    response = app.post("/webhooks/email", body, signed(body, "msg_bad_email", EMAIL_SECRET))
    assert response.status_code == 400
    assert named in response.json()["error"]["message"]
    assert stored(database) == NOTHING


def test_an_oversized_email_webhook_is_refused_with_413(app, database):
    body = email_body(campaign="x" * 300_000)
    response = app.post("/webhooks/email", body, signed(body, "msg_big_email", EMAIL_SECRET))
    assert response.status_code == 413
    assert stored(database) == NOTHING


def test_an_email_open_arriving_before_its_contact_is_held_then_attached(
        app, database, playbook):
    from firstvalue.ingest.service import ingest_messages
    from tests.conftest import encode

    body = email_body("email.clicked", account_id="acme", url="https://docs.example/setup")
    assert app.post("/webhooks/email", body,
                    signed(body, "msg_click", EMAIL_SECRET)).json()["events"] == \
        ["pending_account"]
    ingest_messages(database, [encode({"type": "group", "messageId": "g-acme", "userId": "u1",
                                       "groupId": "acme", "traits": {"name": "Acme"}})],
                    micros("2026-03-05T00:00:00Z"), playbook.anchor_names)
    with database.engine.connect() as conn:
        account = conn.execute(sa.text(
            "SELECT account_id FROM events WHERE name = 'Email Clicked'")).scalar()
    assert account == "acme"


def test_a_standard_webhook_signature_outside_ascii_is_a_401_not_a_crash(app, database):
    body = closed_won()
    headers = signed(body, "msg_non_ascii")
    good = headers["webhook-signature"]
    headers["webhook-signature"] = b"v1,\xe9\xe9 " + good.encode()  # junk first, then the real
    response = app.post("/webhooks/crm", body, headers)
    assert response.status_code == 200, response.text  # the valid one is still found
    headers["webhook-signature"] = b"v1,\xe9\xe9"
    assert app.post("/webhooks/crm", body, {**headers, "webhook-id": "msg_2"}).status_code == 401


def test_a_nul_in_a_signed_payload_is_refused_with_400_and_nothing_stored(app, database):
    body = closed_won(account_id="ac\u0000me")
    body = body.replace(b"Acme", b"Ac\\u0000me")
    response = app.post("/webhooks/crm", body, signed(body, "msg_nul"))
    assert response.status_code == 400 and "NUL" in response.json()["error"]["message"]
    assert stored(database) == NOTHING


def test_the_same_delivery_sent_at_once_is_stored_once_and_never_a_500(app, database):
    from concurrent.futures import ThreadPoolExecutor

    body = closed_won()
    headers = signed(body, "msg_parallel")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: app.post("/webhooks/crm", body, headers), range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 8
    assert sorted(a.json()["status"] for a in answers) == ["accepted"] + ["duplicate"] * 7
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM inbound_webhooks")).scalar() == 1


def test_the_text_backslash_u0000_in_a_signed_payload_is_no_nul(app, database):
    body = closed_won().replace(b"Acme", b"Acme C:\\\\u0000 Ltd")
    response = app.post("/webhooks/crm", body, signed(body, "msg_typed"))
    assert response.status_code == 200, response.text
