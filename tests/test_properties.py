"""Property tests: state is a function of the set of stored events and the time.

Whatever order the events arrive in, in whatever batches, with exact redeliveries mixed in and
ticks in between, the stored state ends up as if everything had arrived at once and been
evaluated from scratch.
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firstvalue.clock import from_micros
from firstvalue.ingest.service import ingest_messages
from firstvalue.runtime.evaluation import evaluate_accounts, stored_states, tick
from firstvalue.store.database import open_database
from tests.conftest import fresh_postgres
from tests.engine_helpers import us

BASE = us("2026-03-01T00:00:00Z")
HOUR = 3_600_000_000
FINAL = BASE + 40 * 24 * HOUR
ACCOUNTS = ("acme", "globex")
USERS = ("u1", "u2", "u3")
TRACKS = ("Deal Closed Won", "Kickoff Completed", "Kickoff Scheduled", "Workspace Created",
          "Integration Connected", "User Invited", "Data Source Connected", "Workflow Run",
          "Value Delivered", "Report Shared", "Signed In")
ZONES = ("Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo")


def iso(micros: int) -> str:
    return from_micros(micros).isoformat().replace("+00:00", "Z")


@st.composite
def histories(draw):
    """A set of messages for two accounts and three users, with unique ids."""
    messages = []
    for index in range(draw(st.integers(1, 4))):
        account = draw(st.sampled_from(ACCOUNTS))
        messages.append({"type": "group", "messageId": f"g{index}",
                         "userId": draw(st.sampled_from(USERS)), "groupId": account,
                         "timestamp": iso(BASE + draw(st.integers(0, 30 * 24)) * HOUR),
                         "traits": {"segment": draw(st.sampled_from(["smb", "mid_market",
                                                                     "enterprise"])),
                                    "timezone": draw(st.sampled_from(ZONES))}})
    for index in range(draw(st.integers(0, 2))):
        messages.append({"type": "identify", "messageId": f"i{index}",
                         "userId": draw(st.sampled_from(USERS)),
                         "timestamp": iso(BASE + draw(st.integers(0, 30 * 24)) * HOUR),
                         "traits": {"function": draw(st.sampled_from(["ops", "sales"]))}})
    for index in range(draw(st.integers(1, 25))):
        name = draw(st.sampled_from(TRACKS))
        message = {"type": "track", "messageId": f"t{index}", "event": name,
                   "userId": draw(st.sampled_from(USERS)),
                   "timestamp": iso(BASE + draw(st.integers(0, 30 * 24)) * HOUR),
                   "properties": {}}
        if name == "Kickoff Scheduled":
            start = BASE + draw(st.integers(0, 30 * 24)) * HOUR
            message["properties"] = {"start_time": iso(start)}
        if name == "Deal Closed Won":
            message["properties"] = {"deal_id": draw(st.sampled_from(["d1", "d2"]))}
        if draw(st.booleans()):
            message["context"] = {"groupId": draw(st.sampled_from(ACCOUNTS))}
        messages.append(message)
    return messages


@st.composite
def deliveries(draw):
    """The history, and how it arrives: shuffled, redelivered in part, cut into batches."""
    history = draw(histories())
    arrival = draw(st.permutations(history))
    redelivered = draw(st.lists(st.sampled_from(history), max_size=5))
    stream = list(arrival)
    for message in redelivered:
        stream.insert(draw(st.integers(0, len(stream))), message)
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=4,
                                unique=True)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return history, [b for b in batches if b]


@contextmanager
def fresh_sqlite(template: Path, directory: Path):
    path = directory / f"{uuid.uuid4().hex}.db"
    shutil.copy(template, path)
    database = open_database(f"sqlite:///{path}", migrate=False)
    try:
        yield database
    finally:
        database.dispose()
        path.unlink()


def comparable(states: dict) -> dict:
    """States without what is allowed to differ: the evaluation time, and for a finished run
    (which stops waking daily) the day count and the overdue figures that follow it."""
    result = {}
    for key, state in states.items():
        state = {k: v for k, v in state.items() if k != "evaluated_at"}
        if state["run"] is not None and state["run"]["status"] != "active":
            state["day"] = None
            state["milestones"] = [{**m, "overdue_days": None, "severely_overdue": None}
                                   if m["status"] == "open" else m for m in state["milestones"]]
        result[key] = state
    return result


def deliver_incrementally(database, playbook, batches) -> None:
    """Each batch arrives an hour after the last of the history, then a tick runs."""
    received = BASE + 31 * 24 * HOUR
    for batch in batches:
        ingest_messages(database, [msgspec.json.encode(m) for m in batch], received,
                        playbook.anchor_names)
        tick(database, playbook, received)
        received += 12 * HOUR
    tick(database, playbook, FINAL)


def deliver_at_once(database, playbook, history) -> None:
    ingest_messages(database, [msgspec.json.encode(m) for m in history],
                    BASE + 31 * 24 * HOUR, playbook.anchor_names)
    tick(database, playbook, FINAL)


def check_same_state(incremental, scratch, playbook) -> None:
    with scratch.engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT id FROM accounts")).scalars().all()
    assert comparable(stored_states(incremental, ids)) == comparable(stored_states(scratch, ids))
    fresh = {s.id: s.as_json() for s in evaluate_accounts(scratch, playbook, FINAL)}
    assert comparable(stored_states(incremental, ids)) == comparable(fresh)
    with incremental.engine.connect() as a, scratch.engine.connect() as b:
        query = "SELECT message_id, account_id FROM events ORDER BY message_id"
        assert a.execute(sa.text(query)).all() == b.execute(sa.text(query)).all()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    open_database(f"sqlite:///{path}").dispose()
    return path


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=deliveries())
def test_state_is_the_same_whatever_the_arrival_order_on_sqlite(case, playbook, template,
                                                                 tmp_path):
    history, batches = case
    with fresh_sqlite(template, tmp_path) as incremental, \
            fresh_sqlite(template, tmp_path) as scratch:
        deliver_incrementally(incremental, playbook, batches)
        deliver_at_once(scratch, playbook, history)
        check_same_state(incremental, scratch, playbook)


@pytest.mark.postgres
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=deliveries())
def test_state_is_the_same_whatever_the_arrival_order_on_postgresql(case, playbook):
    history, batches = case
    with fresh_postgres() as incremental, fresh_postgres() as scratch:
        deliver_incrementally(incremental, playbook, batches)
        deliver_at_once(scratch, playbook, history)
        check_same_state(incremental, scratch, playbook)
