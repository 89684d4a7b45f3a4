"""Calendar webhooks (Calendly and Cal.com), real signed requests, and how the engine reads them:
kickoffs, calls, and the rule that a cancellation rebooked within 24 hours is one reschedule."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import sqlalchemy as sa

from firstvalue.runtime.evaluation import evaluate_accounts
from tests.conftest import micros
from tests.crm_helpers import AppServer, group, send_and_tick, track

CALENDLY_KEY = "calendly-signing-key-for-tests"
CALCOM_SECRET = "calcom-secret-for-tests"
EMAIL = "jane@acme.example"


@pytest.fixture
def app(database, playbook, monkeypatch):
    monkeypatch.setenv("FIRSTVALUE_CALENDLY_SIGNING_KEY", CALENDLY_KEY)
    monkeypatch.setenv("FIRSTVALUE_CALCOM_SECRET", CALCOM_SECRET)
    # Kicked off on Monday 2 March (UTC); the champion is Jane.
    send_and_tick(database, playbook, "2026-03-02T12:00:00Z",
                  {"type": "identify", "messageId": "id-jane", "userId": "u1",
                   "timestamp": "2026-03-01T08:00:00Z",
                   "traits": {"email": EMAIL, "role": "champion"}},
                  group("acme", "2026-03-01T09:00:00Z", segment="mid_market", tier=2,
                        timezone="UTC"),
                  track("acme", "Deal Closed Won", "2026-03-01T10:00:00Z", deal_id="d-1"),
                  track("acme", "Kickoff Completed", "2026-03-02T10:00:00Z"))
    server = AppServer(database, playbook).start()
    yield server
    server.stop()


def calendly(app, event: str, invitee: str, at: str, start: str = "2026-03-20T15:00:00Z",
             name: str = "Weekly check-in", rescheduled: bool = False, email: str = EMAIL,
             stamp: float | None = None):
    payload = {"uri": f"https://api.calendly.com/scheduled_events/EV-{invitee}/invitees/{invitee}",
               "email": email, "name": "Jane Doe", "rescheduled": rescheduled,
               "status": "canceled" if event == "invitee.canceled" else "active",
               "created_at": at, "updated_at": at,
               "scheduled_event": {"uri": f"https://api.calendly.com/scheduled_events/EV-{invitee}",
                                   "name": name, "start_time": start, "end_time": start,
                                   "status": "active"}}
    if event == "invitee.canceled":
        payload["cancellation"] = {"canceled_by": "Jane Doe", "reason": "conflict",
                                   "canceler_type": "invitee", "created_at": at}
    if event == "invitee_no_show.created":
        payload = {"uri": f"https://api.calendly.com/invitees/{invitee}/no_show/1",
                   "invitee": payload["uri"], "created_at": at}
    body = json.dumps({"event": event, "created_at": at, "payload": payload}).encode()
    t = int(stamp if stamp is not None else time.time())
    signature = hmac.new(CALENDLY_KEY.encode(), f"{t}.".encode() + body,
                         hashlib.sha256).hexdigest()
    return app.post("/webhooks/calendly", body,
                    {"Calendly-Webhook-Signature": f"t={t},v1={signature}"})


def calcom(app, trigger: str, uid: str, at: str, start: str = "2026-03-20T15:00:00Z",
           title: str = "Weekly check-in", secret: str = CALCOM_SECRET, **extra):
    payload = {"uid": uid, "title": title, "startTime": start, "endTime": start,
               "attendees": [{"email": EMAIL, "name": "Jane Doe", "timeZone": "UTC"}],
               "organizer": {"email": "csm@vendor.example", "name": "Ana"}, **extra}
    if trigger == "BOOKING_NO_SHOW_UPDATED":
        payload = {"bookingUid": uid, "message": "no-show updated",
                   "attendees": [{"email": EMAIL, "noShow": True}]}
    body = json.dumps({"triggerEvent": trigger, "createdAt": at, "payload": payload}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return app.post("/webhooks/calcom", body, {"X-Cal-Signature-256": signature})


def missed_call_stalls(database, playbook, now: str):
    [state] = evaluate_accounts(database, playbook, micros(now), ["acme"])
    return [s for s in state.stalls if s["kind"] == "missed_calls"]


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def test_a_cancellation_rebooked_within_24_hours_is_one_reschedule(app, database, playbook):
    ok(calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z"))
    ok(calendly(app, "invitee.canceled", "A", "2026-03-05T09:00:00Z"))
    ok(calendly(app, "invitee.created", "B", "2026-03-05T15:00:00Z"))  # 6 hours later
    # One reschedule: the rule needs two, so no stall, however long after.
    assert missed_call_stalls(database, playbook, "2026-03-12T12:00:00Z") == []

    ok(calendly(app, "invitee.canceled", "B", "2026-03-12T09:00:00Z"))
    ok(calendly(app, "invitee.created", "C", "2026-03-13T08:00:00Z"))  # 23 hours later
    [stall] = missed_call_stalls(database, playbook, "2026-03-14T12:00:00Z")
    assert [i["what"] for i in stall["evidence"]["incidents"]] == ["rescheduled", "rescheduled"]


def test_a_cancellation_not_rebooked_within_24_hours_is_a_missed_call(app, database, playbook):
    ok(calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z"))
    ok(calendly(app, "invitee.canceled", "A", "2026-03-05T09:00:00Z"))
    ok(calendly(app, "invitee.created", "B", "2026-03-06T10:00:00Z"))  # 25 hours later
    ok(calendly(app, "invitee.canceled", "B", "2026-03-09T09:00:00Z"))
    [stall] = missed_call_stalls(database, playbook, "2026-03-11T12:00:00Z")
    assert [i["what"] for i in stall["evidence"]["incidents"]] == ["missed", "missed"]


def test_the_rebooking_may_arrive_before_the_cancellation(app, database, playbook):
    ok(calendly(app, "invitee.created", "B", "2026-03-05T15:00:00Z"))
    ok(calendly(app, "invitee.canceled", "A", "2026-03-05T09:00:00Z"))
    ok(calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z"))
    ok(calendly(app, "invitee.canceled", "C", "2026-03-10T09:00:00Z"))
    ok(calendly(app, "invitee.created", "D", "2026-03-10T10:00:00Z"))
    [stall] = missed_call_stalls(database, playbook, "2026-03-12T12:00:00Z")
    assert [i["what"] for i in stall["evidence"]["incidents"]] == ["rescheduled", "rescheduled"]


def test_calendlys_own_reschedule_counts_once(app, database, playbook):
    ok(calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z"))
    # Calendly's reschedule: the old invitee canceled with `rescheduled: true`, a new created.
    ok(calendly(app, "invitee.canceled", "A", "2026-03-05T09:00:00Z", rescheduled=True))
    ok(calendly(app, "invitee.created", "B", "2026-03-05T09:00:00Z"))
    assert missed_call_stalls(database, playbook, "2026-03-10T12:00:00Z") == []

    ok(calendly(app, "invitee_no_show.created", "B", "2026-03-20T15:20:00Z"))
    [stall] = missed_call_stalls(database, playbook, "2026-03-21T12:00:00Z")
    assert [i["what"] for i in stall["evidence"]["incidents"]] == ["rescheduled", "missed"]


def test_a_booked_kickoff_sets_day_0_and_its_end_completes_it(app, database, playbook):
    send_and_tick(database, playbook, "2026-04-01T12:00:00Z",
                  group("beta", "2026-04-01T09:00:00Z", user="u1", segment="mid_market",
                        tier=2, timezone="UTC"),
                  track("beta", "Deal Closed Won", "2026-04-01T10:00:00Z", deal_id="d-2"))
    # Jane belongs to acme and beta now; the booking says which account through its metadata.
    ok(calcom(app, "BOOKING_CREATED", "K1", "2026-04-01T12:00:00Z", start="2026-04-06T10:00:00Z",
              title="Beta kickoff", metadata={"firstvalue_account_id": "beta"}))
    [state] = evaluate_accounts(database, playbook, micros("2026-04-02T12:00:00Z"), ["beta"])
    assert (state.kickoff_at, state.kickoff_source) == ("2026-04-06T10:00:00+00:00",
                                                        "scheduled")
    ok(calcom(app, "MEETING_ENDED", "K1", "2026-04-07T11:00:00Z", start="2026-04-07T10:00:00Z",
              title="Beta kickoff", metadata={"firstvalue_account_id": "beta"}))
    [state] = evaluate_accounts(database, playbook, micros("2026-04-08T12:00:00Z"), ["beta"])
    assert state.kickoff_source == "completed" and state.day0 == "2026-04-07"


def test_calcom_cancel_then_booking_within_24_hours_is_one_reschedule(app, database, playbook):
    ok(calcom(app, "BOOKING_CREATED", "A", "2026-03-03T10:00:00Z"))
    ok(calcom(app, "BOOKING_CANCELLED", "A", "2026-03-05T09:00:00Z"))
    ok(calcom(app, "BOOKING_CREATED", "B", "2026-03-05T12:00:00Z"))
    assert missed_call_stalls(database, playbook, "2026-03-10T12:00:00Z") == []
    ok(calcom(app, "BOOKING_RESCHEDULED", "C", "2026-03-11T09:00:00Z", rescheduleUid="B"))
    [stall] = missed_call_stalls(database, playbook, "2026-03-12T12:00:00Z")
    assert [i["what"] for i in stall["evidence"]["incidents"]] == ["rescheduled", "rescheduled"]


def test_a_no_show_for_a_booking_not_seen_yet_is_refused_for_a_retry(app, database, playbook):
    response = calcom(app, "BOOKING_NO_SHOW_UPDATED", "Z", "2026-03-20T16:00:00Z")
    assert response.status_code == 409
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM inbound_webhooks")).scalar() == 0
    ok(calcom(app, "BOOKING_CREATED", "Z", "2026-03-10T10:00:00Z"))
    assert ok(calcom(app, "BOOKING_NO_SHOW_UPDATED", "Z", "2026-03-20T16:00:00Z"))["events"] \
        == ["accepted"]


def test_a_calendar_delivery_sent_twice_is_stored_once(app, database):
    assert ok(calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z"))["status"] \
        == "accepted"
    assert ok(calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z"))["status"] \
        == "duplicate"
    with database.engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT COUNT(*) FROM events WHERE name = 'Call Scheduled'")).scalar() == 1


@pytest.mark.parametrize("case", ["stale", "tampered", "wrong_key"])
def test_a_bad_calendar_signature_is_answered_401_and_nothing_is_stored(app, database, case):
    if case == "stale":
        response = calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z",
                            stamp=time.time() - 301)
    elif case == "wrong_key":
        response = calcom(app, "BOOKING_CREATED", "A", "2026-03-03T10:00:00Z",
                          secret="not-the-secret")
    else:
        body = json.dumps({"triggerEvent": "BOOKING_CREATED", "payload": {"uid": "A"}})
        signature = hmac.new(CALCOM_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
        response = app.post("/webhooks/calcom", body.replace("A", "B").encode(),
                            {"X-Cal-Signature-256": signature})
    assert response.status_code == 401
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM inbound_webhooks")).scalar() == 0
        assert conn.execute(sa.text(
            "SELECT COUNT(*) FROM events WHERE name LIKE 'Call%'")).scalar() == 0


def test_a_malformed_calendar_payload_names_the_field(app, database):
    body = json.dumps({"event": "invitee.created", "payload": {"uri": "x"}}).encode()
    t = int(time.time())
    signature = hmac.new(CALENDLY_KEY.encode(), f"{t}.".encode() + body,
                         hashlib.sha256).hexdigest()
    response = app.post("/webhooks/calendly", body,
                        {"Calendly-Webhook-Signature": f"t={t},v1={signature}"})
    assert response.status_code == 400
    assert "payload.email" in response.json()["error"]["message"]


def test_an_unknown_invitee_is_held_under_a_pseudonymous_id_without_the_address(
        app, database):
    body = ok(calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z",
                       email="stranger@elsewhere.example"))
    assert body["events"] == ["pending_account"]
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT user_id, properties FROM events")).all()
    assert all("elsewhere.example" not in f"{user}{properties}" for user, properties in rows)


def test_a_cancellation_delivered_days_late_still_counts_by_its_own_time(
        app, database, playbook):
    ok(calendly(app, "invitee.created", "A", "2026-03-03T10:00:00Z"))
    ok(calendly(app, "invitee.created", "B", "2026-03-05T15:00:00Z"))
    # The cancellation of A, made at 09:00 on 5 March, reaches firstvalue on 9 March.
    app.now = micros("2026-03-09T12:00:00Z")
    ok(calendly(app, "invitee.canceled", "A", "2026-03-05T09:00:00Z",
                stamp=micros("2026-03-09T12:00:00Z") / 1_000_000))
    ok(calendly(app, "invitee.canceled", "B", "2026-03-09T10:00:00Z",
                stamp=micros("2026-03-09T12:00:00Z") / 1_000_000))
    ok(calendly(app, "invitee.created", "C", "2026-03-09T11:00:00Z",
                stamp=micros("2026-03-09T12:00:00Z") / 1_000_000))
    [stall] = missed_call_stalls(database, playbook, "2026-03-10T12:00:00Z")
    assert [i["what"] for i in stall["evidence"]["incidents"]] == ["rescheduled", "rescheduled"]
    assert stall["evidence"]["incidents"][0]["at"].startswith("2026-03-05T09:00")


@pytest.mark.parametrize("endpoint", ["/webhooks/calendly", "/webhooks/calcom"])
def test_an_oversized_calendar_webhook_is_refused_with_413(app, database, endpoint):
    body = json.dumps({"event": "invitee.created", "padding": "x" * 300_000}).encode()
    response = app.post(endpoint, body, {"X-Cal-Signature-256": "00",
                                         "Calendly-Webhook-Signature": "t=1,v1=00"})
    assert response.status_code == 413
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM inbound_webhooks")).scalar() == 0


def test_a_signed_calcom_body_that_is_not_json_is_refused_with_400(app, database):
    body = b"triggerEvent=BOOKING_CREATED"
    signature = hmac.new(CALCOM_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = app.post("/webhooks/calcom", body, {"X-Cal-Signature-256": signature})
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]["message"]


def post_calcom(app, envelope, signature: bytes | None = None):
    body = json.dumps(envelope).encode()
    if signature is None:
        signature = hmac.new(CALCOM_SECRET.encode(), body, hashlib.sha256).hexdigest().encode()
    return app.post("/webhooks/calcom", body, {"X-Cal-Signature-256": signature})


def no_show(uid: str, attendees, at: str = "2026-03-20T16:00:00Z") -> dict:
    return {"triggerEvent": "BOOKING_NO_SHOW_UPDATED", "createdAt": at,
            "payload": {"bookingUid": uid, "attendees": attendees}}


def test_each_no_show_update_of_a_booking_is_its_own_delivery(app, database):
    ok(calcom(app, "BOOKING_CREATED", "NS", "2026-03-10T10:00:00Z"))
    # An update that marks nobody stores nothing, and must not make the real one a duplicate.
    assert ok(post_calcom(app, no_show("NS", [{"email": EMAIL, "noShow": False}])))[
        "events"] == []
    assert ok(post_calcom(app, no_show("NS", [{"email": EMAIL, "noShow": True}])))[
        "events"] == ["accepted"]
    assert ok(post_calcom(app, no_show("NS", [{"email": EMAIL, "noShow": True}])))[
        "status"] == "duplicate"  # the same update again
    with database.engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT COUNT(*) FROM events WHERE name = 'Call Missed'")).scalar() == 1


@pytest.mark.parametrize("attendees, field", [
    ([{"email": 123, "noShow": True}], "payload.attendees[0].email"),
    ([{"email": {"a": 1}, "noShow": True}], "payload.attendees[0].email"),
    (5, "payload.attendees"),
    (["bob"], "payload.attendees[0]"),
])
def test_a_malformed_no_show_is_refused_naming_the_field(app, database, attendees, field):
    ok(calcom(app, "BOOKING_CREATED", "NS2", "2026-03-10T10:00:00Z"))
    response = post_calcom(app, no_show("NS2", attendees))
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]
    with database.engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT COUNT(*) FROM events WHERE name = 'Call Missed'")).scalar() == 0


def test_a_no_show_belongs_to_the_account_its_booking_named(app, database):
    stranger = [{"email": "new.person@acme.example", "name": "New", "timeZone": "UTC"}]
    booked = ok(calcom(app, "BOOKING_CREATED", "MD", "2026-03-10T10:00:00Z",
                       attendees=stranger, metadata={"firstvalue_account_id": "acme"}))
    assert set(booked["events"]) == {"accepted"}
    shown = ok(post_calcom(app, no_show("MD", [{"email": "new.person@acme.example",
                                                 "noShow": True}])))
    assert shown["events"] == ["accepted"]  # not pending_account: the booking named acme


@pytest.mark.parametrize("endpoint, header", [
    ("/webhooks/calcom", "X-Cal-Signature-256"),
    ("/webhooks/calendly", "Calendly-Webhook-Signature"),
])
def test_a_signature_outside_ascii_is_a_401_not_a_crash(app, database, endpoint, header):
    value = b"\xe9\xe9" if header.startswith("X-Cal") else \
        f"t={int(time.time())},v1=".encode() + b"\xe9"
    response = app.post(endpoint, b"{}", {header: value})
    assert response.status_code == 401, response.text
