"""Two writers ingesting at once, as several API processes over one PostgreSQL store do.

Given writer A has stored a call in a transaction it has not committed yet, when writer B
stores another call for the same account or contact (and waits for A's locks), then after
both commit nothing either of them wrote is lost. SQLite has one writer at a time, so there B
simply waits for A; PostgreSQL lets both read first, which is where updates can get lost.
"""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
import sqlalchemy as sa

from firstvalue.ingest.messages import Accepted, validate_message
from firstvalue.ingest.pipeline import store_messages
from firstvalue.ingest.service import ingest_messages
from firstvalue.store.traits import plain_traits
from tests.conftest import encode, micros

NOW = micros("2026-11-10T12:00:00Z")


def group(mid: str, **traits) -> bytes:
    return encode({"type": "group", "messageId": mid, "userId": "u1", "groupId": "acme",
                   "timestamp": "2026-11-01T00:00:00Z", "traits": traits})


def identify(mid: str, **traits) -> bytes:
    return encode({"type": "identify", "messageId": mid, "userId": "u1",
                   "timestamp": "2026-11-01T00:00:00Z", "traits": traits})


def accepted(raw: bytes) -> Accepted:
    message = validate_message(raw, NOW)
    assert isinstance(message, Accepted)
    return message


def _wait_until_blocked_by(database, conn: sa.Connection, seconds: float = 5) -> None:
    """On PostgreSQL, poll until some session waits for a lock `conn` holds (or give up)."""
    if database.is_sqlite:
        return
    some_session_waits_for(database, conn.exec_driver_sql("SELECT pg_backend_pid()").scalar(),
                           seconds)


def some_session_waits_for(database, pid: int, seconds: float) -> bool:
    """On PostgreSQL, poll until some session waits for a lock the session `pid` holds;
    whether one did within `seconds`."""
    deadline = time.monotonic() + seconds
    with database.engine.connect() as probe:
        while time.monotonic() < deadline:
            waiting = probe.execute(sa.text(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                {"pid": pid}).scalar()
            if waiting:
                return True
            time.sleep(0.02)
    return False


def _store_while_another_writer_waits(database, playbook, first: bytes, second: bytes):
    statuses = {}

    def writer_b() -> None:
        statuses["b"] = [s.status for s in ingest_messages(database, [second], NOW,
                                                           playbook.anchor_names)]

    with database.engine.connect() as conn:
        transaction = conn.begin()
        statuses["a"] = store_messages(conn, [accepted(first)], playbook.anchor_names).statuses
        b = threading.Thread(target=writer_b)
        b.start()
        _wait_until_blocked_by(database, conn)
        transaction.commit()
    b.join(timeout=60)
    assert not b.is_alive()
    return statuses


def _traits(database, sql: str) -> dict:
    with database.engine.connect() as conn:
        return plain_traits(msgspec.json.decode(conn.execute(sa.text(sql)).scalar()))


def test_concurrent_group_calls_for_one_account_keep_both_writers_traits(database, playbook):
    ingest_messages(database, [group("g0", segment="mid_market")], NOW, playbook.anchor_names)

    statuses = _store_while_another_writer_waits(
        database, playbook, group("g-a", name="Acme GmbH"), group("g-b", plan="pro"))

    assert statuses == {"a": ["accepted"], "b": ["accepted"]}
    assert _traits(database, "SELECT traits FROM accounts WHERE id = 'acme'") == {
        "segment": "mid_market", "name": "Acme GmbH", "plan": "pro"}


def test_concurrent_identify_calls_for_a_new_contact_keep_both_writers_traits(
        database, playbook):
    statuses = _store_while_another_writer_waits(
        database, playbook, identify("i-a", role="champion"), identify("i-b", title="CTO"))

    assert statuses == {"a": ["accepted"], "b": ["accepted"]}
    assert _traits(database, "SELECT traits FROM contacts WHERE user_id = 'u1'") == {
        "role": "champion", "title": "CTO"}


@pytest.mark.parametrize("delivery, conflicts", [("same", 0), ("changed", 1)])
def test_concurrent_deliveries_of_one_id_store_it_once_and_count_a_conflict(
        database, playbook, delivery, conflicts):
    second = group("g-a", name="Acme GmbH") if delivery == "same" else group("g-a", name="X")

    statuses = _store_while_another_writer_waits(
        database, playbook, group("g-a", name="Acme GmbH"), second)

    assert statuses == {"a": ["accepted"], "b": ["duplicate"]}
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() == 1
        assert conn.execute(sa.text("SELECT COUNT(*) FROM memberships")).scalar() == 1
        assert conn.execute(sa.text("SELECT COALESCE(SUM(value), 0) FROM counters "
                                    "WHERE name = 'ingest_conflicts'")).scalar() == conflicts
    assert _traits(database, "SELECT traits FROM accounts WHERE id = 'acme'") == {
        "name": "Acme GmbH"}
