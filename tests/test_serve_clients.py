"""`firstvalue serve` as a real process, fed by Segment's and RudderStack's own Python clients.

Each test starts the server on a free loopback port with a temporary SQLite store, talks to it
over HTTP the way a customer's backend would, and stops it at the end. The clients stamp
`sentAt` with the real clock when they send, so the server's clock correction moves each event
by the time the request took to arrive: times are compared to the second, days exactly.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import rudderstack.analytics as rudder_analytics
import segment.analytics as segment_analytics
from rudderstack.analytics.request import APIError as RudderAPIError
from segment.analytics.request import APIError as SegmentAPIError

from firstvalue.store.traits import plain_traits

WRITE_KEY = "fvw_serve_test_key"
STARTUP_SECONDS = 30


def firstvalue_command() -> list[str]:
    """The `firstvalue` entry point installed beside the running interpreter."""
    script = Path(sys.executable).with_name("firstvalue")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from firstvalue.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    token: str
    db_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(trust_env=False, timeout=10) as http:
            return http.get(self.url + path, headers=headers)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        with httpx.Client(trust_env=False, timeout=10) as http:
            return http.post(self.url + path, content=body, headers=headers)

    def account(self, account_id: str) -> dict:
        response = self.get(f"/api/accounts/{account_id}", self.token)
        assert response.status_code == 200, response.text
        return response.json()

    def query(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute(sql).fetchall()


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"firstvalue serve exited with {process.returncode}:\n"
                        f"{log_path.read_text()}")
        try:
            with httpx.Client(trust_env=False, timeout=1) as http:
                if http.get(url + "/health").status_code == 200:
                    return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"firstvalue serve did not answer /health in {STARTUP_SECONDS} s:\n"
                f"{log_path.read_text()}")


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[Server]:
    # The clients go through requests, which honours proxy variables: loopback goes direct.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    db_path = tmp_path / "serve.db"
    db = f"sqlite:///{db_path}"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("FIRSTVALUE_")}
    env["FIRSTVALUE_WRITE_KEYS"] = WRITE_KEY
    command = firstvalue_command()

    created = subprocess.run([*command, "--db", db, "tokens", "create", "t", "--role", "viewer"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("fvt_")

    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--db", db, "serve", "--port", str(port), "--tick-seconds", "0.2"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process, log_path)
        yield Server(url, token, db_path, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# The account's story, in UTC. Berlin leaves summer time on 25 October 2026, between the
# kickoff (day 0, 21 October) and the invitation that completes the account's configuration.
CONTRACT = at("2026-10-19T08:00:00+00:00")
KICKOFF = at("2026-10-21T08:00:00+00:00")
WORKSPACE = at("2026-10-22T07:00:00+00:00")
INTEGRATION = at("2026-10-23T12:00:00+00:00")
INVITED = at("2026-10-26T09:00:00+00:00")
DATA = at("2026-10-27T23:30:00+00:00")  # already 28 October in Berlin


def send_onboarding(client, account_id: str, user: str) -> None:
    """A group call that creates the account, its kickoff, then milestone events."""
    client.group(user, account_id, {
        "name": "Acme GmbH", "segment": "mid_market", "timezone": "Europe/Berlin",
        "contract_signed_at": "2026-10-19T10:00:00+02:00"}, timestamp=CONTRACT)
    client.track(user, "Kickoff Completed", {}, context={"groupId": account_id},
                 timestamp=KICKOFF)
    # These name no account: they belong to it through the user's group membership.
    client.track(user, "Workspace Created", {"workspace": "main"}, timestamp=WORKSPACE)
    client.track(user, "Integration Connected", {"integration": "salesforce"},
                 timestamp=INTEGRATION)
    client.track(user, "User Invited", {"role": "admin"}, timestamp=INVITED)
    client.track(user, "Data Source Connected", {"source": "postgres"},
                 context={"groupId": account_id}, timestamp=DATA)


def assert_close(actual: str, expected: datetime, offset: str) -> None:
    """`actual` is `expected` (moved by at most the request's trip) shown at `offset`."""
    moment = datetime.fromisoformat(actual)
    assert moment.isoformat().endswith(offset), actual
    assert timedelta(seconds=-1) <= moment - expected <= timedelta(seconds=30), actual


def assert_onboarding_shows(server: Server, account_id: str) -> None:
    body = server.account(account_id)
    assert (body["name"], body["segment"], body["track"], body["timezone"]) == (
        "Acme GmbH", "mid_market", "mid_market", "Europe/Berlin")
    assert body["day0"] == "2026-10-21"
    assert_close(body["kickoff_at"], KICKOFF, "+02:00")

    by_key = {m["key"]: m for m in body["milestones"]}
    configured, data = by_key["account_configured"], by_key["data_connected"]
    assert configured["status"] == data["status"] == "done"
    assert_close(configured["completed_at"], INVITED, "+01:00")
    assert configured["completed_at"].startswith("2026-10-26T10:00:0")
    assert (configured["local_day"], configured["on_time"]) == (5, False)
    assert_close(data["completed_at"], DATA, "+01:00")
    assert data["completed_at"].startswith("2026-10-28T00:30:0")
    assert (data["local_day"], data["on_time"]) == (7, True)
    assert [by_key[k]["status"] for k in ("first_workflow", "first_value", "second_user")] == [
        "open", "open", "open"]


def wait_for_tick(server: Server, account_id: str) -> None:
    """The scheduler evaluates what changed on its own: poll the stored state briefly."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = server.query(f"SELECT evaluated_seq, change_seq, state FROM accounts "
                            f"WHERE id = '{account_id}'")
        if rows and rows[0][2] is not None and rows[0][0] == rows[0][1]:
            return
        time.sleep(0.05)
    pytest.fail(f"the scheduler did not evaluate {account_id} within 60 s:\n"
                f"{server.log_path.read_text()}")


# -- Segment's client ----------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_segment_client_events_show_as_milestones_in_the_account_api(server, gzip):
    client = segment_analytics.Client(WRITE_KEY, host=server.url, sync_mode=True, gzip=gzip,
                                      max_retries=0)

    send_onboarding(client, "acme", "u-segment")

    assert_onboarding_shows(server, "acme")
    rows = server.query("SELECT COUNT(*), COUNT(account_id) FROM events")
    assert rows == [(6, 6)]


def test_segment_client_batches_sent_by_its_consumer_thread_arrive(server):
    """The client's usual mode: a background thread sends batches; flush waits for them."""
    client = segment_analytics.Client(WRITE_KEY, host=server.url, gzip=True, max_retries=0,
                                      upload_interval=0.05)
    try:
        send_onboarding(client, "acme", "u-segment")
        client.flush()
    finally:
        client.join()

    assert_onboarding_shows(server, "acme")


def test_segment_client_module_api_sends_to_the_configured_host(server, monkeypatch):
    monkeypatch.setattr(segment_analytics, "write_key", WRITE_KEY)
    monkeypatch.setattr(segment_analytics, "host", server.url)
    monkeypatch.setattr(segment_analytics, "sync_mode", True)
    monkeypatch.setattr(segment_analytics, "default_client", None)

    send_onboarding(segment_analytics, "acme", "u-module")

    assert_onboarding_shows(server, "acme")


def test_segment_client_with_an_unknown_write_key_gets_401(server):
    client = segment_analytics.Client("fvw_wrong", host=server.url, sync_mode=True)

    with pytest.raises(SegmentAPIError) as raised:
        client.track("u1", "Signed In", {})

    assert raised.value.status == 401
    assert raised.value.code == "unknown_write_key"
    assert server.query("SELECT COUNT(*) FROM events") == [(0,)]


def test_scheduler_evaluates_the_account_after_ingest(server):
    client = segment_analytics.Client(WRITE_KEY, host=server.url, sync_mode=True)
    send_onboarding(client, "acme", "u-segment")

    wait_for_tick(server, "acme")

    state = json.loads(server.query("SELECT state FROM accounts WHERE id = 'acme'")[0][0])
    done = [m["key"] for m in state["milestones"] if m["status"] == "done"]
    assert done == ["account_configured", "data_connected"]


# -- RudderStack's client ------------------------------------------------------------------


def test_rudderstack_client_events_show_as_milestones_in_the_account_api(server):
    client = rudder_analytics.Client(WRITE_KEY, host=server.url, sync_mode=True,
                                     max_retries=0)
    assert client.gzip is True  # RudderStack's client compresses by default

    send_onboarding(client, "acme", "u-rudder")

    assert_onboarding_shows(server, "acme")
    assert server.query("SELECT COUNT(*), COUNT(account_id) FROM events") == [(6, 6)]


def test_rudderstack_client_with_an_unknown_write_key_gets_401_and_gives_up(server):
    client = rudder_analytics.Client("fvw_wrong", host=server.url, sync_mode=True)

    # An APIError with the status is what makes the client's consumer give up on a 4xx
    # instead of retrying it as if the network had failed.
    with pytest.raises(RudderAPIError) as raised:
        client.track("u1", "Signed In", {})

    assert raised.value.status == 401
    assert raised.value.code == "unknown_write_key"


def test_rudderstack_identify_traits_are_stored_as_the_contacts_traits(server):
    """RudderStack's client sends an identify call's traits in `context.traits`."""
    client = rudder_analytics.Client(WRITE_KEY, host=server.url, sync_mode=True)

    client.identify("u-rudder", {"email_domain": "acme.example", "role": "champion"},
                    timestamp=CONTRACT)

    rows = server.query("SELECT traits FROM contacts WHERE user_id = 'u-rudder'")
    assert len(rows) == 1
    assert plain_traits(json.loads(rows[0][0])) == {"email_domain": "acme.example",
                                                    "role": "champion"}


# -- access --------------------------------------------------------------------------------


def test_ingest_without_a_write_key_is_401(server):
    body = json.dumps({"batch": [{"type": "track", "userId": "u1", "event": "A"}]}).encode()

    response = server.post("/v1/batch", body, {"Content-Type": "application/json"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unknown_write_key"


def test_ingest_with_an_unknown_write_key_is_401(server):
    body = json.dumps({"batch": [{"type": "track", "userId": "u1", "event": "A"}]}).encode()
    auth = "Basic " + base64.b64encode(b"fvw_wrong:").decode()

    response = server.post("/v1/batch", body, {"Authorization": auth})

    assert response.status_code == 401
    assert server.query("SELECT COUNT(*) FROM events") == [(0,)]


def test_health_answers_without_auth(server):
    response = server.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_api_without_a_token_is_401_and_with_the_token_200(server):
    assert server.get("/api/accounts").status_code == 401
    assert server.get("/api/accounts", token="fvt_wrong").status_code == 401
    assert server.get("/api/accounts", token=WRITE_KEY).status_code == 401

    response = server.get("/api/accounts", token=server.token)

    assert response.status_code == 200
    assert response.json() == {"accounts": [], "limit": 100, "offset": 0}


def test_serve_binds_to_loopback_and_stops_without_a_traceback_on_sigterm(server):
    server.process.terminate()
    server.process.wait(timeout=20)

    log = server.log_path.read_text()
    assert f"firstvalue serving on {server.url}" in log
    # uvicorn shuts down gracefully, then raises the signal it caught again, so the exit
    # status is the signal's.
    assert server.process.returncode == -signal.SIGTERM
    assert "Traceback" not in log
