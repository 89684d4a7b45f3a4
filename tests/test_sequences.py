"""Sequences on a simulated clock, against a real SMTP server and a local HTTP receiver.

The mid-market track in Berlin: kickoff on Monday 2 March 2026 (day 0). The integration
tutorial is due at the send window's opening (09:00) of local day 3, 5 March; its CSM alert at
09:00 of local day 5, 7 March.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from firstvalue.actions.dispatch import Dispatcher
from firstvalue.ingest.service import ingest_messages
from firstvalue.runtime.evaluation import tick
from tests.channel_fakes import HttpReceiver, SmtpServer
from tests.conftest import HANDOFF, encode, micros

HOUR = 3_600_000_000
SECOND = 1_000_000
DAY3_OPENING = micros("2026-03-05T09:00:00+01:00")
DAY5_OPENING = micros("2026-03-07T09:00:00+01:00")


@pytest.fixture
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def slack():
    receiver = HttpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def channels(monkeypatch, smtp, slack):
    monkeypatch.setenv("FIRSTVALUE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FIRSTVALUE_SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("FIRSTVALUE_SLACK_WEBHOOK_URL", slack.url)
    return smtp, slack


def onboarding(account: str) -> list[tuple[int, dict]]:
    """An account signed on 27 February, kicked off on 2 March, configured, no data yet."""
    champion = f"{account}-champion"
    return [
        (micros("2026-02-27T10:00:00+01:00"), {
            "type": "identify", "messageId": f"{account}-i1", "userId": champion,
            "timestamp": "2026-02-27T09:00:00Z",
            "traits": {"email": f"{champion}@example.com", "role": "champion", "name": "Kim"}}),
        (micros("2026-02-27T10:00:00+01:00"), {
            "type": "group", "messageId": f"{account}-g1", "userId": champion,
            "groupId": account, "timestamp": "2026-02-27T09:00:00Z",
            "traits": {"name": account.title(), "segment": "mid_market", "tier": 2,
                       "timezone": "Europe/Berlin", "owner": "csm@example.com",
                       "handoff": HANDOFF}}),
        (micros("2026-02-27T11:00:00+01:00"), track(account, "deal", "Deal Closed Won",
                                                    "2026-02-27T11:00:00+01:00", deal_id="d1")),
        (micros("2026-03-02T11:00:00+01:00"), track(account, "kickoff", "Kickoff Completed",
                                                    "2026-03-02T11:00:00+01:00")),
    ]


def track(account: str, suffix: str, name: str, when: str, **properties) -> dict:
    return {"type": "track", "messageId": f"{account}-{suffix}", "userId": f"{account}-champion",
            "event": name, "timestamp": when, "properties": properties,
            "context": {"groupId": account}}


def data_connected(account: str, at: int) -> tuple[int, dict]:
    from firstvalue.clock import from_micros

    return at, track(account, "data", "Data Source Connected", from_micros(at).isoformat())


def simulate(database, playbook, deliveries, until: int, step: int = HOUR,
             start: int | None = None, deliver=None) -> Dispatcher:
    """Walk the clock from the first delivery to `until`: deliver, tick, dispatch."""
    dispatcher = Dispatcher(database, playbook, deliver)
    pending = sorted(deliveries, key=lambda item: item[0])
    now = start if start is not None else pending[0][0]
    moments = sorted({*range(now, until + 1, step), *(at for at, _ in pending)})
    for moment in moments:
        arrived = [m for at, m in pending if at <= moment]
        pending = [(at, m) for at, m in pending if at > moment]
        if arrived:
            ingest_messages(database, [encode(m) for m in arrived], moment,
                            playbook.anchor_names)
        tick(database, playbook, moment)
        dispatcher.run_once(moment)
    return dispatcher


def action(database, key_part: str) -> dict | None:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM actions WHERE key LIKE :k"),
                            {"k": f"%{key_part}%"}).all()
    assert len(rows) <= 1, rows
    return dict(rows[0]._mapping) if rows else None


def emails_with(smtp: SmtpServer, subject_part: str, to: str) -> list:
    return [m for m in smtp.messages if subject_part in m["Subject"] and m["To"] == to]


def test_an_account_that_never_connects_gets_the_day3_email_once_and_the_day5_alert(
        database, playbook, channels):
    smtp, slack = channels
    simulate(database, playbook, onboarding("acme"), until=DAY5_OPENING + 6 * HOUR)

    tutorial = action(database, "acme/acme-deal/integration_tutorial/1")
    assert tutorial["status"] == "sent"
    assert tutorial["sent_at"] == DAY3_OPENING  # 09:00 on local day 3, the window's opening
    mails = emails_with(smtp, "Connect", "acme-champion@example.com")
    assert len(mails) == 1
    assert "tutorial" in mails[0].get_content()

    alert = action(database, "acme/acme-deal/integration_tutorial.csm_alert/1")
    assert (alert["status"], alert["sent_at"], alert["kind"]) == ("sent", DAY5_OPENING, "slack")
    alerts = [r for r in slack.received if "still not connected" in r.json()["text"]]
    assert len(alerts) == 1
    assert "day 5" in alerts[0].json()["text"]


def test_connecting_on_day_4_gets_the_email_no_alert_and_a_recorded_cancellation(
        database, playbook, channels):
    smtp, slack = channels
    day4 = micros("2026-03-06T14:00:00+01:00")
    simulate(database, playbook, [*onboarding("beta"), data_connected("beta", day4)],
             until=DAY5_OPENING + 6 * HOUR)

    assert action(database, "beta/beta-deal/integration_tutorial/1")["status"] == "sent"
    alert = action(database, "beta/beta-deal/integration_tutorial.csm_alert/1")
    assert alert["status"] == "cancelled"
    assert "milestone data_connected happened" in alert["reason"]
    assert alert["sent_at"] is None
    assert not [r for r in slack.received if "Beta" in r.json()["text"]]
    assert len(emails_with(smtp, "Your data is flowing", "beta-champion@example.com")) == 1


def test_connecting_seconds_before_the_alert_is_due_cancels_it(database, playbook, channels):
    _, slack = channels
    just_before = DAY5_OPENING - 5 * SECOND
    simulate(database, playbook, [*onboarding("gamma"), data_connected("gamma", just_before)],
             until=DAY5_OPENING + 2 * HOUR)
    alert = action(database, "gamma/gamma-deal/integration_tutorial.csm_alert/1")
    assert alert["status"] == "cancelled"
    assert not [r for r in slack.received if "Gamma" in r.json()["text"]]


def test_connecting_seconds_after_the_alert_gets_it_and_marks_it_resolved(database, playbook,
                                                                         channels):
    _, slack = channels
    just_after = DAY5_OPENING + 5 * SECOND
    simulate(database, playbook, [*onboarding("delta"), data_connected("delta", just_after)],
             until=DAY5_OPENING + 2 * HOUR)
    alert = action(database, "delta/delta-deal/integration_tutorial.csm_alert/1")
    assert (alert["status"], alert["sent_at"]) == ("sent", DAY5_OPENING)
    assert alert["resolved_at"] == just_after
    assert len([r for r in slack.received if "Delta" in r.json()["text"]]) == 1
