"""Ingest over HTTP (/v1) and the account API (/api), on SQLite and PostgreSQL alike.

The app runs in process on FastAPI's TestClient with a fixed clock, so every stored time and
every answer is exact. What comes in is judged event by event; these tests check the status
of each, the rows left in the store, and what the API shows afterwards.
"""

from __future__ import annotations

import base64
import gzip
import json
import warnings
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from firstvalue.access import create_api_token, create_write_key
from firstvalue.api.app import create_app
from tests.conftest import micros

with warnings.catch_warnings():
    # Starlette would rather run its TestClient on httpx2; the test run turns warnings into
    # errors, and httpx (which the project depends on) still works.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NOW_TEXT = "2026-11-10T12:00:00+00:00"
NOW = micros(NOW_TEXT)
WRITE_KEY = "fvw_test_key"
HOUR = 3_600 * 1_000_000


@pytest.fixture
def client(database, playbook, monkeypatch):
    monkeypatch.setenv("FIRSTVALUE_WRITE_KEYS", WRITE_KEY)
    app = create_app(database, playbook, clock=lambda: NOW)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        # A default header, not `auth`: a request's own Authorization header (a bearer token
        # for /api) then takes its place.
        test_client.headers["Authorization"] = basic(WRITE_KEY)
        yield test_client


@pytest.fixture
def token(database):
    return create_api_token(database, "tests", "viewer", NOW)


# -- helpers -------------------------------------------------------------------------------


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def track(mid, user, name, when=None, account=None, **properties):
    message: dict[str, Any] = {"type": "track", "messageId": mid, "userId": user,
                               "event": name, "properties": properties}
    if when is not None:
        message["timestamp"] = when
    if account is not None:
        message["context"] = {"groupId": account}
    return message


def group(mid, user, account, when, **traits):
    return {"type": "group", "messageId": mid, "userId": user, "groupId": account,
            "timestamp": when, "traits": traits}


def send(client, *messages, sent_at=None, key=None):
    body: dict[str, Any] = {"batch": list(messages)}
    if sent_at is not None:
        body["sentAt"] = sent_at
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = key
    return client.post("/v1/batch", content=json.dumps(body), headers=headers)


def statuses(response):
    return [result["status"] for result in response.json()["results"]]


def reasons(response):
    return [result["reason"] for result in response.json()["results"]]


def events(database) -> dict[str, dict[str, Any]]:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT message_id, type, name, account_id, group_id, user_id, anonymous_id, ts, "
            "received_at, flags, properties FROM events")).mappings().all()
    return {row["message_id"]: dict(row) for row in rows}


def counts(database) -> dict[str, int]:
    tables = ("events", "accounts", "memberships", "contacts", "counters")
    with database.engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in tables}


def conflicts(database) -> int:
    with database.engine.connect() as conn:
        value = conn.execute(sa.text(
            "SELECT value FROM counters WHERE name = 'ingest_conflicts'")).scalar()
    return int(value or 0)


def account(client, token, account_id):
    response = client.get(f"/api/accounts/{account_id}",
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def milestones(client, token, account_id):
    """Each milestone as (status, completed_at, local_day)."""
    return {m["key"]: (m["status"], m["completed_at"], m["local_day"])
            for m in account(client, token, account_id)["milestones"]}


def padded(mid, size):
    """A valid track event of about `size` bytes of JSON."""
    return track(mid, "u1", "Report Shared", note="x" * size)


def gzipped(body: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(body).encode())


EMPTY = {"events": 0, "accounts": 0, "memberships": 0, "contacts": 0, "counters": 0}

# A mid-market account in Berlin around the end of daylight saving time (2026-10-25): the
# kickoff on Wednesday 21 October is day 0.
ACME_GROUP = group("g-acme", "u1", "acme", "2026-10-19T08:00:00Z", name="Acme GmbH",
                   segment="mid_market", timezone="Europe/Berlin",
                   contract_signed_at="2026-10-19T10:00:00+02:00")
ACME_KICKOFF = track("t-kickoff", "u1", "Kickoff Completed", "2026-10-21T08:00:00Z", "acme")


# -- authentication ------------------------------------------------------------------------


def test_ingest_without_a_write_key_is_401_and_stores_nothing(client, database):
    del client.headers["Authorization"]

    response = send(client, track("m1", "u1", "Signed In"))

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unknown_write_key"
    assert counts(database) == EMPTY


def test_ingest_with_an_unknown_write_key_is_401(client, database):
    response = send(client, track("m1", "u1", "Signed In"), key=basic("fvw_not_a_key"))

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unknown_write_key"
    assert counts(database) == EMPTY


def test_write_key_sent_as_the_password_instead_of_the_user_name_is_401(client, database):
    response = send(client, track("m1", "u1", "Signed In"), key=basic("", WRITE_KEY))

    assert response.status_code == 401
    assert counts(database) == EMPTY


def test_write_key_created_with_the_cli_is_accepted(client, database, monkeypatch):
    monkeypatch.delenv("FIRSTVALUE_WRITE_KEYS")
    key = create_write_key(database, "website", NOW)

    refused = send(client, track("m1", "u1", "Signed In"))
    accepted = send(client, track("m1", "u1", "Signed In"), key=basic(key))

    assert refused.status_code == 401
    assert accepted.status_code == 200
    assert statuses(accepted) == ["pending_account"]


def test_ingest_errors_carry_code_and_message_where_segment_clients_read_them(client):
    """Segment's and RudderStack's clients read `code` and `message` at the top level to tell
    a 4xx to give up on from a failure to retry."""
    response = send(client, track("m1", "u1", "Signed In"), key=basic("fvw_not_a_key"))

    body = response.json()
    assert body["code"] == body["error"]["code"] == "unknown_write_key"
    assert body["message"] == body["error"]["message"]


def test_health_answers_without_auth(client):
    del client.headers["Authorization"]

    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("header", [None, "Bearer fvt_unknown", "Basic Zm9vOg==", "Bearer "])
def test_api_without_a_known_bearer_token_is_401(client, token, header):
    del client.headers["Authorization"]
    headers = {"Authorization": header} if header else {}

    listing = client.get("/api/accounts", headers=headers)
    one = client.get("/api/accounts/acme", headers=headers)

    assert listing.status_code == one.status_code == 401
    assert listing.json()["error"]["code"] == "unauthorized"
    assert listing.json()["error"]["message"].startswith(
        "send a bearer token made with `firstvalue tokens create`")


def test_write_key_is_not_an_api_token(client, token):
    response = client.get("/api/accounts", headers={"Authorization": f"Bearer {WRITE_KEY}"})

    assert response.status_code == 401


# -- one status per event ------------------------------------------------------------------


def test_batch_with_bad_events_answers_a_status_for_each_in_order_and_stores_only_the_good_ones(
        client, database):
    bad_time = track("bad-time", "u1", "Signed In", "yesterday at noon")
    bad_properties = {**track("bad-props", "u1", "Signed In"), "properties": ["not", "an"]}
    nobody = {"type": "track", "messageId": "nobody", "event": "Signed In"}
    unnamed = {"type": "track", "messageId": "unnamed", "userId": "u1"}
    too_big = padded("too-big", 33 * 1024)

    response = send(client, track("good-1", "u1", "Signed In"), bad_time, bad_properties,
                     nobody, unnamed, too_big, track("good-2", "u2", "Signed In"),
                     track("good-1", "u1", "Signed In"))

    assert response.status_code == 200
    assert response.json()["success"] is True
    assert statuses(response) == ["pending_account", "rejected", "rejected", "rejected",
                                  "rejected", "rejected", "pending_account", "duplicate"]
    assert [r["index"] for r in response.json()["results"]] == list(range(8))
    why = reasons(response)
    assert why[0] is None and why[6] is None and why[7] is None
    assert "timestamp" in why[1] and "ISO 8601" in why[1]
    assert "`properties` must be a JSON object" in why[2]
    assert "neither `userId` nor `anonymousId`" in why[3]
    assert "no `event` name" in why[4]
    assert "32 KiB" in why[5]
    assert set(events(database)) == {"good-1", "good-2"}
    assert counts(database) == {**EMPTY, "events": 2}


def test_rejected_group_call_creates_no_account_and_no_membership(client, database):
    bad_group = {**group("g-bad", "u1", "acme", "2026-11-01T00:00:00Z"), "traits": "Acme"}

    response = send(client, bad_group, track("t1", "u1", "Signed In", account="acme"))

    assert statuses(response) == ["rejected", "pending_account"]
    assert "`traits` must be a JSON object" in reasons(response)[0]
    assert counts(database) == {**EMPTY, "events": 1}
    assert events(database)["t1"]["account_id"] is None


def test_group_call_without_a_group_id_is_rejected(client, database):
    no_id = {"type": "group", "messageId": "g1", "userId": "u1", "traits": {}}

    response = send(client, no_id)

    assert response.status_code == 400
    assert "no `groupId`" in reasons(response)[0]
    assert counts(database) == EMPTY


def test_batch_that_is_all_rejected_is_400_with_a_status_for_each(client, database):
    response = send(client, {"type": "track", "messageId": "a"},
                    {"type": "page", "messageId": "b", "userId": "u1"}, "not an object")

    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["code"] == "all_rejected"
    assert statuses(response) == ["rejected", "rejected", "rejected"]
    assert "type 'page' is not supported" in reasons(response)[1]
    assert "Expected `object`" in reasons(response)[2]
    assert counts(database) == EMPTY


def test_an_empty_batch_is_400_saying_it_held_nothing(client, database):
    response = send(client)

    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["results"]) == ("all_rejected", [])
    assert "the batch holds no messages" in body["message"]


def test_body_that_is_not_a_batch_is_400(client, database):
    for body in (b"{not json", b'{"batch": "track"}', b"[]"):
        response = client.post("/v1/batch", content=body)

        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_batch"
    assert counts(database) == EMPTY


def test_redelivery_in_a_later_request_is_a_duplicate_and_stored_once(client, database):
    first = send(client, track("m1", "u1", "Signed In", "2026-11-09T10:00:00Z"),
                 sent_at="2026-11-10T11:59:59Z")
    # The client retries with a new sentAt, as clients do.
    again = send(client, track("m1", "u1", "Signed In", "2026-11-09T10:00:00Z"),
                 sent_at="2026-11-10T12:00:00Z")

    assert statuses(first) == ["pending_account"]
    assert again.status_code == 200
    assert statuses(again) == ["duplicate"]
    assert counts(database) == {**EMPTY, "events": 1}
    assert conflicts(database) == 0
    assert events(database)["m1"]["ts"] == micros("2026-11-09T10:00:01Z")


# -- bodies: size, gzip, encodings ---------------------------------------------------------


def test_batch_just_under_500_kib_is_stored_whole(client, database):
    batch = [padded(f"m{i}", 20 * 1024) for i in range(24)]

    response = send(client, *batch)

    assert len(json.dumps({"batch": batch})) < 500 * 1024
    assert response.status_code == 200
    assert statuses(response) == ["pending_account"] * 24
    assert counts(database)["events"] == 24


def test_body_over_500_kib_is_413_and_stores_nothing(client, database):
    batch = [padded(f"m{i}", 20 * 1024) for i in range(26)]

    response = send(client, *batch)

    assert len(json.dumps({"batch": batch})) > 500 * 1024
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "500 KiB" in response.json()["error"]["message"]
    assert counts(database) == EMPTY


def test_gzip_body_over_500_kib_once_decoded_is_413_though_small_compressed(client, database):
    compressed = gzipped({"batch": [padded(f"m{i}", 30 * 1024) for i in range(20)]})

    response = client.post("/v1/batch", content=compressed,
                           headers={"Content-Encoding": "gzip"})

    assert len(compressed) < 20 * 1024
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert counts(database) == EMPTY


def test_gzip_body_is_decoded_and_stored(client, database):
    body = {"batch": [track("m1", "u1", "Signed In", "2026-11-09T10:00:00Z"),
                      group("g1", "u1", "acme", "2026-11-01T00:00:00Z", name="Acme")]}

    response = client.post("/v1/batch", content=gzipped(body),
                           headers={"Content-Encoding": "gzip"})

    assert response.status_code == 200
    assert statuses(response) == ["accepted", "accepted"]
    assert events(database)["m1"]["account_id"] == "acme"


def test_gzip_body_of_several_members_is_decoded_whole(client, database):
    text = json.dumps({"batch": [track("m1", "u1", "Signed In")]}).encode()
    two_members = gzip.compress(text[:20]) + gzip.compress(text[20:])

    response = client.post("/v1/batch", content=two_members,
                           headers={"Content-Encoding": "gzip"})

    assert response.status_code == 200
    assert statuses(response) == ["pending_account"]


@pytest.mark.parametrize("body", [
    b"this is not gzip",
    gzip.compress(b'{"batch": []}')[:-8],  # the trailer is missing
    gzip.compress(json.dumps({"batch": [track("m1", "u1", "A")] * 50}).encode())[:60],
], ids=["not-gzip", "no-trailer", "cut-short"])
def test_bad_gzip_body_is_400_and_stores_nothing(client, database, body):
    response = client.post("/v1/batch", content=body, headers={"Content-Encoding": "gzip"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_gzip"
    assert counts(database) == EMPTY


@pytest.mark.parametrize("encoding", ["deflate", "br", "gzip, br"])
def test_unsupported_content_encoding_is_415(client, database, encoding):
    response = client.post("/v1/batch", content=gzipped({"batch": []}),
                           headers={"Content-Encoding": encoding})

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_encoding"
    assert counts(database) == EMPTY


def test_content_encoding_is_read_case_insensitively(client, database):
    response = client.post("/v1/batch", content=gzipped({"batch": [track("m1", "u1", "A")]}),
                           headers={"Content-Encoding": "GZIP"})

    assert response.status_code == 200


# -- attribution: held events --------------------------------------------------------------


def test_track_for_an_account_not_created_yet_is_held_then_attached_by_its_group_call(
        client, database, token):
    held = send(client, track("t-data", "u1", "Data Source Connected",
                              "2026-10-27T23:30:00Z", "acme"))

    assert statuses(held) == ["pending_account"]
    assert events(database)["t-data"]["account_id"] is None
    assert counts(database)["accounts"] == 0

    later = send(client, ACME_GROUP, ACME_KICKOFF)

    assert statuses(later) == ["accepted", "accepted"]
    assert events(database)["t-data"]["account_id"] == "acme"
    # 23:30 UTC is already 28 October in Berlin, winter time: local day 7 after the kickoff.
    assert milestones(client, token, "acme")["data_connected"] == (
        "done", "2026-10-28T00:30:00+01:00", 7)


def test_track_of_a_user_without_membership_is_held_until_the_users_group_call(
        client, database, token):
    given = send(client, ACME_GROUP, ACME_KICKOFF)
    assert statuses(given) == ["accepted", "accepted"]

    # u2 has no group call yet: the event waits for one.
    held = send(client, track("t-ws", "u2", "Workspace Created", "2026-10-22T07:00:00Z"))
    assert statuses(held) == ["pending_account"]
    assert events(database)["t-ws"]["account_id"] is None

    # u2's first group call is dated after the event; it still says where the event belongs.
    joined = send(client, group("g-u2", "u2", "acme", "2026-10-30T09:00:00Z"))

    assert statuses(joined) == ["accepted"]
    assert events(database)["t-ws"]["account_id"] == "acme"
    body = account(client, token, "acme")
    assert body["milestones"][0]["key"] == "account_configured"
    assert body["milestones"][0]["status"] == "open"  # Integration Connected is missing

    send(client, track("t-int", "u2", "Integration Connected", "2026-10-23T12:00:00Z"),
         track("t-inv", "u2", "User Invited", "2026-10-26T09:00:00Z"))

    assert milestones(client, token, "acme")["account_configured"] == (
        "done", "2026-10-26T10:00:00+01:00", 5)


def test_users_events_follow_the_membership_in_force_at_their_time(client, database):
    send(client, group("g-a", "u1", "alpha", "2026-10-01T00:00:00Z"),
         group("g-b", "u1", "beta", "2026-10-15T00:00:00Z"))

    response = send(client, track("before", "u1", "Signed In", "2026-09-20T00:00:00Z"),
                    track("in-alpha", "u1", "Signed In", "2026-10-10T00:00:00Z"),
                    track("in-beta", "u1", "Signed In", "2026-10-20T00:00:00Z"))

    assert statuses(response) == ["accepted"] * 3
    stored = events(database)
    assert [stored[m]["account_id"] for m in ("before", "in-alpha", "in-beta")] == [
        "alpha", "alpha", "beta"]


def test_group_call_arriving_late_moves_only_the_events_after_its_time(client, database):
    send(client, group("g-a", "u1", "alpha", "2026-10-01T00:00:00Z"),
         track("early", "u1", "Signed In", "2026-10-10T00:00:00Z"),
         track("late", "u1", "Signed In", "2026-10-20T00:00:00Z"))
    assert events(database)["late"]["account_id"] == "alpha"

    # The move to beta on 15 October arrives after the events it explains.
    send(client, group("g-b", "u1", "beta", "2026-10-15T00:00:00Z"))

    stored = events(database)
    assert stored["early"]["account_id"] == "alpha"
    assert stored["late"]["account_id"] == "beta"


def test_held_event_is_attached_when_an_anchor_event_creates_its_account(client, database):
    send(client, track("t-ws", "u1", "Workspace Created", "2026-10-22T07:00:00Z", "acme"))

    response = send(client, track("t-deal", "u1", "Deal Closed Won", "2026-10-19T08:00:00Z",
                                  "acme", deal_id="d1"))

    assert statuses(response) == ["accepted"]
    assert events(database)["t-ws"]["account_id"] == "acme"
    assert counts(database)["accounts"] == 1


# -- time: clock correction and clamping ---------------------------------------------------


def test_batch_sent_at_an_hour_ahead_moves_the_stored_time_back_an_hour(client, database):
    # The client's clock is an hour fast: it says it sent at 13:00 when the server reads 12:00.
    response = send(client, track("m1", "u1", "Signed In", "2026-11-10T12:30:00Z"),
                    track("m2", "u1", "Signed In", "2026-11-09T08:00:00Z"),
                    sent_at="2026-11-10T13:00:00Z")

    assert statuses(response) == ["pending_account", "pending_account"]
    stored = events(database)
    assert stored["m1"]["ts"] == micros("2026-11-10T11:30:00Z")
    assert stored["m2"]["ts"] == micros("2026-11-09T07:00:00Z")
    assert stored["m1"]["received_at"] == NOW
    assert stored["m1"]["flags"] == stored["m2"]["flags"] == 0


def test_message_sent_at_takes_precedence_over_the_batch_sent_at(client, database):
    own = {**track("m1", "u1", "Signed In", "2026-11-10T09:00:00Z"),
           "sentAt": "2026-11-10T10:00:00Z"}

    send(client, own, sent_at="2026-11-10T13:00:00Z")

    assert events(database)["m1"]["ts"] == NOW - 1 * HOUR


def test_timestamp_in_the_future_after_correction_is_clamped_to_arrival_and_flagged(
        client, database):
    response = send(client, track("ahead", "u1", "Signed In", "2026-11-10T13:30:00Z"),
                    track("fine", "u1", "Signed In", "2026-11-10T12:30:00Z"),
                    sent_at="2026-11-10T13:00:00Z")

    assert statuses(response) == ["pending_account", "pending_account"]
    stored = events(database)
    assert (stored["ahead"]["ts"], stored["ahead"]["flags"]) == (NOW, 1)
    assert (stored["fine"]["ts"], stored["fine"]["flags"]) == (NOW - HOUR // 2, 0)


def test_future_timestamp_without_sent_at_is_clamped_and_flagged(client, database):
    send(client, track("ahead", "u1", "Signed In", "2026-11-11T00:00:00Z"))

    assert (events(database)["ahead"]["ts"], events(database)["ahead"]["flags"]) == (NOW, 1)


def test_event_without_a_timestamp_is_dated_at_its_arrival(client, database):
    send(client, track("m1", "u1", "Signed In"))

    assert events(database)["m1"]["ts"] == NOW


def test_timestamp_without_an_offset_is_rejected(client, database):
    response = send(client, track("m1", "u1", "Signed In", "2026-11-10T09:00:00"))

    assert response.status_code == 400
    assert "has no UTC offset" in reasons(response)[0]
    assert counts(database) == EMPTY


def test_absurd_sent_at_is_rejected_and_leaves_the_api_working(client, database, token):
    """Given a client whose clock reads the year 9999, the corrected time would fall thousands
    of years before the epoch: such an event must not be stored (it would make every later
    evaluation of its account fail)."""
    response = send(client, ACME_GROUP,
                    track("t-deal", "u1", "Deal Closed Won", "2026-10-19T08:00:00Z", "acme"),
                    sent_at="9999-12-31T00:00:00Z")

    assert statuses(response)[1] == "rejected"
    assert "sentAt" in reasons(response)[1]
    assert client.get("/api/accounts", headers={"Authorization": f"Bearer {token}"}
                      ).status_code == 200


def test_timestamp_before_1970_is_rejected_and_leaves_the_api_working(client, database, token):
    """Year 1 in UTC is year 0 in New York, which Python cannot represent."""
    send(client, group("g1", "u1", "nyc", "2026-10-01T00:00:00Z", timezone="America/New_York"))

    response = send(client, track("t-old", "u1", "Kickoff Completed", "0001-01-01T00:00:00Z",
                                  "nyc"))

    assert statuses(response) == ["rejected"]
    assert "timestamp" in reasons(response)[0]
    assert client.get("/api/accounts/nyc", headers={"Authorization": f"Bearer {token}"}
                      ).status_code == 200


# -- deduplication and conflicts -----------------------------------------------------------


def test_redelivery_with_different_content_keeps_the_stored_event_and_counts_a_conflict(
        client, database):
    send(client, track("m1", "u1", "Workspace Created", "2026-11-09T10:00:00Z", plan="pro"))
    before = events(database)["m1"]

    changed = send(client, track("m1", "u1", "Workflow Run", "2026-11-09T11:00:00Z", plan="x"))

    assert changed.status_code == 200
    assert statuses(changed) == ["duplicate"]
    assert events(database)["m1"] == before
    assert conflicts(database) == 1

    # A faithful redelivery (another sentAt, the same properties in another key order) is no
    # conflict.
    faithful = {**track("m1", "u1", "Workspace Created", "2026-11-09T10:00:00Z"),
                "properties": {"plan": "pro"}}
    send(client, faithful, sent_at="2026-11-10T12:00:05Z")

    assert conflicts(database) == 1
    assert counts(database)["events"] == 1


def test_key_order_is_no_conflict_but_true_for_1_is(client, database):
    send(client, track("m1", "u1", "Signed In", a=1, b={"c": True, "d": 2}),
         track("m2", "u1", "Signed In", v=1))

    send(client, {**track("m1", "u1", "Signed In"), "properties": {"b": {"d": 2, "c": True},
                                                                   "a": 1}})
    assert conflicts(database) == 0
    send(client, track("m2", "u1", "Signed In", v=True))
    assert conflicts(database) == 1


def test_two_versions_of_one_id_in_one_batch_store_the_first_and_count_a_conflict(
        client, database):
    response = send(client, track("m1", "u1", "Signed In", account="acme"),
                    track("m1", "u2", "Signed In", account="acme"))

    assert statuses(response) == ["pending_account", "duplicate"]
    assert events(database)["m1"]["user_id"] == "u1"
    assert conflicts(database) == 1


# -- order of arrival ----------------------------------------------------------------------


def _onboarding(prefix: str, account_id: str) -> list[dict[str, Any]]:
    """An account's story, in time order; ids and users are prefixed per account."""
    def mid(name: str) -> str:
        return f"{prefix}-{name}"

    user = f"{prefix}-u1"
    return [
        group(mid("g"), user, account_id, "2026-10-19T08:00:00Z", segment="mid_market",
              timezone="Europe/Berlin", contract_signed_at="2026-10-19T10:00:00+02:00"),
        track(mid("kickoff"), user, "Kickoff Completed", "2026-10-21T08:00:00Z"),
        track(mid("ws"), user, "Workspace Created", "2026-10-22T07:00:00Z"),
        track(mid("int"), user, "Integration Connected", "2026-10-23T12:00:00Z"),
        track(mid("inv"), user, "User Invited", "2026-10-26T09:00:00Z"),
        track(mid("data"), user, "Data Source Connected", "2026-10-27T23:30:00Z"),
        track(mid("data-again"), user, "Data Source Connected", "2026-11-02T09:00:00Z"),
        track(mid("wf"), user, "Workflow Run", "2026-11-04T09:00:00Z"),
    ]


def _comparable(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(m["key"], m["status"], m["completed_at"], m["local_day"], m["on_time"])
            for m in body["milestones"]]


def test_events_sent_in_reverse_time_order_give_the_same_milestones_as_in_order(
        client, database, token):
    for message in _onboarding("fwd", "forward"):
        assert send(client, message).status_code == 200
    for message in reversed(_onboarding("rev", "reverse")):
        assert send(client, message).status_code == 200

    forward = account(client, token, "forward")
    reverse = account(client, token, "reverse")

    assert _comparable(forward) == _comparable(reverse)
    assert _comparable(forward)[:3] == [
        ("account_configured", "done", "2026-10-26T10:00:00+01:00", 5, False),
        ("data_connected", "done", "2026-10-28T00:30:00+01:00", 7, True),
        ("first_workflow", "done", "2026-11-04T10:00:00+01:00", 14, True),
    ]
    assert forward["kickoff_at"] == reverse["kickoff_at"] == "2026-10-21T10:00:00+02:00"
    assert forward["day"] == reverse["day"] == 20


# -- single-event endpoints ----------------------------------------------------------------


def test_single_track_endpoint_stores_the_event_with_the_type_it_implies(client, database):
    body = {"messageId": "m1", "userId": "u1", "event": "Signed In",
            "timestamp": "2026-11-09T10:00:00Z"}

    response = client.post("/v1/track", content=json.dumps(body))

    assert response.status_code == 200
    assert response.json() == {"success": True, "results": [
        {"index": 0, "messageId": "m1", "status": "pending_account", "reason": None}]}
    assert events(database)["m1"]["type"] == "track"


def test_single_group_and_identify_endpoints_store_account_and_contact(client, database):
    grouped = client.post("/v1/group", content=json.dumps(
        {"messageId": "g1", "userId": "u1", "groupId": "acme", "traits": {"name": "Acme"}}))
    identified = client.post("/v1/identify", content=json.dumps(
        {"messageId": "i1", "userId": "u1", "traits": {"role": "champion"}}))

    assert statuses(grouped) == statuses(identified) == ["accepted"]
    assert counts(database) == {**EMPTY, "events": 2, "accounts": 1, "memberships": 1,
                                "contacts": 1}


def test_single_endpoint_corrects_the_clock_with_the_messages_own_sent_at(client, database):
    body = {"messageId": "m1", "userId": "u1", "event": "Signed In",
            "timestamp": "2026-11-10T12:30:00Z", "sentAt": "2026-11-10T13:00:00Z"}

    client.post("/v1/t", content=json.dumps(body))

    assert events(database)["m1"]["ts"] == NOW - HOUR // 2


def test_single_endpoint_refuses_a_message_of_another_type(client, database):
    response = client.post("/v1/track", content=json.dumps(
        {"type": "identify", "messageId": "i1", "userId": "u1"}))

    assert response.status_code == 400
    assert "sent to the track endpoint" in reasons(response)[0]
    assert counts(database) == EMPTY


def test_single_event_over_32_kib_is_413(client, database):
    response = client.post("/v1/track", content=json.dumps(padded("m1", 33 * 1024)))

    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        "the event is over 32 KiB once decoded; send fewer or smaller properties")
    assert counts(database) == EMPTY


def test_unknown_ingest_call_is_404_with_the_error_shape(client):
    response = client.post("/v1/page", content=b"{}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# -- field limits and ids ------------------------------------------------------------------


def test_oversized_field_values_are_rejected_with_their_reasons(client, database):
    long = "x" * 201
    response = send(client,
                    track("long-name", "u1", "E" * 201),
                    track("long-user", long, "Signed In"),
                    {**track("long-anon", "u1", "Signed In"), "userId": None,
                     "anonymousId": long},
                    track("long-group", "u1", "Signed In", account=long),
                    track("m" * 201, "u1", "Signed In"),
                    track("at-limit", "u" * 200, "E" * 200, account="g" * 200))

    assert statuses(response) == ["rejected"] * 5 + ["pending_account"]
    why = reasons(response)
    assert why[0] == "event name is 201 characters, over 200"
    assert why[1] == why[2] == "userId or anonymousId is longer than 200 characters"
    assert why[3] == "groupId is longer than 200 characters"
    assert why[4] == "messageId is longer than 200 characters"
    assert set(events(database)) == {"at-limit"}


def test_ids_given_as_numbers_are_stored_as_their_text(client, database):
    response = send(client,
                    {**group("g1", "42", 1001, "2026-10-01T00:00:00Z"), "userId": 42},
                    {**track("t1", "u1", "Signed In"), "userId": 42,
                     "context": {"groupId": 1001}},
                    {**track("t2", "u1", "Signed In", "2026-10-02T00:00:00Z"),
                     "userId": "42"},
                    {**track("t3", "u1", "Signed In"), "userId": None, "anonymousId": 7})

    assert statuses(response) == ["accepted", "accepted", "accepted", "pending_account"]
    stored = events(database)
    assert (stored["g1"]["group_id"], stored["g1"]["user_id"]) == ("1001", "42")
    assert (stored["t1"]["account_id"], stored["t1"]["user_id"]) == ("1001", "42")
    assert stored["t2"]["account_id"] == "1001"  # the same user as 42 through membership
    assert (stored["t3"]["user_id"], stored["t3"]["anonymous_id"]) == ("anonymous:7", "7")


def test_message_id_given_as_a_number_is_rejected_naming_the_field(client, database):
    response = send(client, {**track("x", "u1", "Signed In"), "messageId": 77})

    assert statuses(response) == ["rejected"]
    assert "messageId" in reasons(response)[0]
    assert counts(database) == EMPTY


def test_nul_character_in_an_event_name_is_rejected_and_the_rest_of_the_batch_is_stored(
        client, database):
    """PostgreSQL cannot store a NUL character in text: one such event must not fail the
    whole batch (nor be stored on SQLite only)."""
    send(client, group("member", "u1", "acme", "2026-09-01T00:00:00Z"))
    response = send(client, track("nul", "u1", "Signed\u0000In"),
                    track("nul-user", "u1\u0000", "Signed In"),
                    track("good", "u1", "Signed In"),
                    # Trait and property values reach text columns (an owner, a rendered
                    # email), where PostgreSQL cannot store one either; keys count too.
                    track("nul-property", "u1", "Signed In", note={"deep": ["a\u0000b"]}),
                    group("nul-trait", "u1", "acme", "2026-10-01T00:00:00Z", owner="ana\u0000"),
                    group("nul-key", "u1", "acme", "2026-10-01T00:00:00Z", **{"k\u0000": 1}),
                    # The six characters \u0000 typed as text are no NUL.
                    track("typed", "u1", "Signed In", note="C:\\u0000dir"))

    assert response.status_code == 200
    assert statuses(response) == ["rejected", "rejected", "accepted", "rejected", "rejected",
                                  "rejected", "accepted"]
    assert "trait or property holds a NUL" in reasons(response)[3]
    assert set(events(database)) == {"member", "good", "typed"}
    assert json.loads(events(database)["typed"]["properties"]) == {"note": "C:\\u0000dir"}


# -- the account API -----------------------------------------------------------------------


def test_account_api_shows_milestones_with_local_times_and_days(client, database, token):
    send(client, ACME_GROUP, ACME_KICKOFF,
         track("t-ws", "u1", "Workspace Created", "2026-10-22T07:00:00Z"),
         track("t-int", "u1", "Integration Connected", "2026-10-23T12:00:00Z"),
         track("t-inv", "u1", "User Invited", "2026-10-26T09:00:00Z"),
         track("t-data", "u1", "Data Source Connected", "2026-10-27T23:30:00Z"))

    body = account(client, token, "acme")

    assert (body["id"], body["name"], body["segment"], body["track"], body["timezone"]) == (
        "acme", "Acme GmbH", "mid_market", "mid_market", "Europe/Berlin")
    assert body["contract_signed_at"] == "2026-10-19T10:00:00+02:00"
    assert body["kickoff_at"] == "2026-10-21T10:00:00+02:00"
    assert body["day0"] == "2026-10-21"
    assert body["day"] == 20
    done = {m["key"]: m for m in body["milestones"] if m["status"] == "done"}
    assert set(done) == {"account_configured", "data_connected"}
    assert done["account_configured"]["completed_at"] == "2026-10-26T10:00:00+01:00"
    assert (done["account_configured"]["local_day"], done["account_configured"]["on_time"],
            done["account_configured"]["overdue_days"]) == (5, False, 2)
    assert done["data_connected"]["evidence"] == "t-data"


def test_account_listing_pages_through_accounts_in_id_order(client, database, token):
    send(client, *(group(f"g{i}", "u1", f"acct-{i}", "2026-10-01T00:00:00Z") for i in range(3)))
    headers = {"Authorization": f"Bearer {token}"}

    page = client.get("/api/accounts?limit=2&offset=1", headers=headers).json()

    assert [a["id"] for a in page["accounts"]] == ["acct-1", "acct-2"]
    assert (page["limit"], page["offset"]) == (2, 1)


@pytest.mark.parametrize("account_id", ["org/42", "Zürich AG", "a%b?c#d"])
def test_account_whose_id_needs_escaping_in_a_url_is_found(client, token, account_id):
    send(client, group("g1", "u1", account_id, "2026-10-01T00:00:00Z", name="Escaped"))

    response = client.get(f"/api/accounts/{quote(account_id, safe='')}",
                          headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert (response.json()["id"], response.json()["name"]) == (account_id, "Escaped")


def test_unknown_account_is_404_with_the_error_shape(client, token):
    response = client.get("/api/accounts/nope", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "unknown_account",
                                         "message": "no account 'nope'"}}


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "offset=-1", "limit=many"])
def test_bad_page_parameters_are_400_with_the_error_shape(client, token, query):
    response = client.get(f"/api/accounts?{query}", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_page", "invalid_request")
    assert "limit" in response.json()["error"]["message"]


def test_unknown_route_and_wrong_method_answer_the_error_shape(client):
    missing = client.get("/nothing-here")
    wrong_method = client.get("/v1/batch")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_unexpected_failure_is_500_with_the_error_shape_and_stores_nothing(
        client, database, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr("firstvalue.api.app.ingest_messages", broken)

    response = send(client, track("m1", "u1", "Signed In"))

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "fire" not in response.text
    assert counts(database) == EMPTY



def test_a_write_key_outside_ascii_is_refused_with_401_not_a_crash(client):
    raw = base64.b64encode("é:".encode()).decode()
    response = client.post("/v1/track", content=b'{"userId":"u","event":"E"}',
                           headers={"Authorization": f"Basic {raw}"})
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("path", ["/api/accounts/acme%00", "/api/actions?account=%00",
                                  "/api/in-app/%00/x"])
def test_a_nul_in_a_path_or_query_is_a_400(client, token, path):
    response = client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400, response.text
    assert "NUL" in response.json()["error"]["message"]


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(client, token):
    response = client.get("/api/team/", headers={"Authorization": f"Bearer {token}",
                                                 "Host": "evil.example"},
                          follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers


def test_the_api_s_own_write_bodies_are_limited(client, database):
    csm = create_api_token(database, "csm", "csm", NOW)
    response = client.post("/api/tasks/done", content=b'{"key": "' + b"x" * 70_000 + b'"}',
                           headers={"Authorization": f"Bearer {csm}"})
    assert response.status_code == 413, response.text
    admin = create_api_token(database, "admin", "admin", NOW)
    huge = client.put("/api/team/ana", json={"email": "a@b.example",
                                             "capacity": 9_223_372_036_854_775_808},
                      headers={"Authorization": f"Bearer {admin}"})
    assert huge.status_code == 400 and "capacity" in huge.json()["error"]["message"]


def test_ingest_that_waits_past_sqlites_write_lock_is_503_with_retry_after(
        tmp_path, playbook, monkeypatch):
    import sqlite3

    from firstvalue.store import database as store_database

    monkeypatch.setattr(store_database, "SQLITE_BUSY_SECONDS", 0.2)
    monkeypatch.setenv("FIRSTVALUE_WRITE_KEYS", WRITE_KEY)
    path = tmp_path / "busy.db"
    database = store_database.open_database(f"sqlite:///{path}")
    holder = sqlite3.connect(path, isolation_level=None)  # another process's long import
    holder.execute("BEGIN IMMEDIATE")
    try:
        with TestClient(create_app(database, playbook, clock=lambda: NOW),
                        raise_server_exceptions=False) as client:
            client.headers["Authorization"] = basic(WRITE_KEY)
            busy = send(client, track("m1", "u1", "Signed In"))
            holder.execute("ROLLBACK")
            later = send(client, track("m1", "u1", "Signed In"))
    finally:
        holder.close()

    assert busy.status_code == 503, busy.text
    assert busy.headers["Retry-After"] == "5"
    assert busy.json()["error"]["code"] == "store_busy"
    assert later.status_code == 200
    assert later.json()["results"][0]["status"] == "pending_account"
    database.dispose()


def test_ingest_that_finds_no_free_connection_is_503_too(client, database, monkeypatch):
    def pool_exhausted(*_args, **_kwargs):
        raise sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")

    monkeypatch.setattr("firstvalue.api.app.ingest_messages", pool_exhausted)

    response = send(client, track("m1", "u1", "Signed In"))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "store_busy"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert counts(database) == EMPTY
