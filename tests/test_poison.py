"""One bad value, one bad account, one bad action: never the whole system."""

from __future__ import annotations

import sqlalchemy as sa

from firstvalue.actions.dispatch import Dispatcher
from firstvalue.ingest.service import ingest_messages
from firstvalue.runtime.evaluation import evaluate_accounts, tick
from tests.conftest import encode, micros
from tests.test_delivery import delivery_playbook, hook, sign_up, smtp  # noqa: F401

NOW = micros("2026-03-10T12:00:00Z")


def test_placeholder_dates_and_zone_folders_do_not_stop_any_account(database, playbook):
    messages = [
        {"type": "group", "messageId": "g1", "userId": "crm", "groupId": "sentinel",
         "timestamp": "2026-03-01T00:00:00Z",
         "traits": {"kickoff_at": "9999-12-31", "contract_signed_at": "0001-01-01T00:00:00",
                    "timezone": "America"}},
        {"type": "track", "messageId": "t1", "userId": "crm", "event": "Kickoff Scheduled",
         "timestamp": "2026-03-01T00:00:00Z", "context": {"groupId": "sentinel"},
         "properties": {"start_time": "9999-12-31T23:59:59-12:00"}},
        {"type": "track", "messageId": "t2", "userId": "crm", "event": "Deal Closed Won",
         "timestamp": "2026-03-01T00:00:00Z", "context": {"groupId": "sentinel"},
         "properties": {"deal_id": "x"}},
        {"type": "group", "messageId": "g2", "userId": "u2", "groupId": "healthy",
         "timestamp": "2026-03-01T00:00:00Z", "traits": {"timezone": "UTC"}},
    ]
    ingest_messages(database, [encode(m) for m in messages], NOW, playbook.anchor_names)
    assert tick(database, playbook, NOW).evaluated == 2
    states = {s.id: s for s in evaluate_accounts(database, playbook, NOW)}
    assert set(states) == {"sentinel", "healthy"}
    assert states["sentinel"].timezone_is_default is True
    assert states["sentinel"].kickoff_at is None


def test_a_number_out_of_range_in_stored_properties_is_read_as_nothing(database, playbook):
    raw = b'{"type":"track","messageId":"t9","userId":"u","event":"Deal Closed Won",' \
          b'"timestamp":"2026-03-01T00:00:00Z","context":{"groupId":"acme"},' \
          b'"properties":{"deal_id":"d","big":1e999}}'
    group = encode({"type": "group", "messageId": "g", "userId": "u", "groupId": "acme",
                    "timestamp": "2026-02-01T00:00:00Z"})
    statuses = ingest_messages(database, [group, raw], NOW, playbook.anchor_names)
    assert [s.status for s in statuses] == ["accepted", "accepted"]
    [state] = evaluate_accounts(database, playbook, NOW)
    assert state.run is not None and state.run["deal_id"] is None


def test_an_infinite_retry_after_parks_nothing_else(database, delivery_playbook, hook,  # noqa: F811
                                                     smtp):  # noqa: F811
    playbook, _ = delivery_playbook
    hook.script = [(429, {"Retry-After": "inf"})]
    sign_up(database, playbook, "acme")
    sign_up(database, playbook, "globex")
    result = Dispatcher(database, playbook).run_once(micros("2026-03-02T10:00:00Z"))
    with database.engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT key, status FROM actions")).all())
    assert rows["acme/acme-t0/signed/1"] == "failed"
    assert rows["globex/globex-t0/signed/1"] == "sent"
    assert result.sent >= 5
