"""Late news, missed ticks, send windows, caps and re-entry (shared/DESIGN.md "Time" 3, 9, 10)."""

from __future__ import annotations

import sqlalchemy as sa

from firstvalue.actions.dispatch import Dispatcher
from firstvalue.engine.compiled import compile_playbook
from firstvalue.engine.rules import nth_business_day
from firstvalue.ingest.service import ingest_messages
from firstvalue.playbook.loader import parse_playbook, read_default_text
from firstvalue.runtime.evaluation import tick
from tests.conftest import HANDOFF, encode, micros
from tests.test_sequences import DAY3_OPENING, DAY5_OPENING, HOUR, onboarding, simulate

SANDBOX: dict = {"email": lambda outgoing: None, "slack": lambda outgoing: None,
                 "webhook": lambda outgoing: None}


def actions(database, where="1 = 1") -> dict[str, dict]:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM actions WHERE {where}")).all()
    return {row.rule: dict(row._mapping) for row in rows}


def test_importing_three_months_of_history_sends_nothing_that_fell_due_long_ago(database,
                                                                                playbook):
    # Given the whole history of an account that kicked off 80 days ago, imported today,
    now = micros("2026-05-21T12:00:00Z")
    history = [message for _, message in onboarding("acme")]
    ingest_messages(database, [encode(m) for m in history], now, playbook.anchor_names)
    tick(database, playbook, now)

    # then what fell due back then is recorded as suppressed (backfill), not sent,
    found = actions(database)
    for rule in ("welcome", "integration_tutorial", "integration_tutorial.csm_alert",
                 "template_recommendation", "template_recommendation.session", "re_engagement",
                 "re_engagement.manager", "re_engagement.risk_flag"):
        assert found[rule]["status"] == "suppressed", rule
        assert found[rule]["reason"].startswith("backfill:")
    result = Dispatcher(database, playbook, SANDBOX).run_once(now)
    assert result.sent == 0

    # while what falls due after now fires as usual.
    later = micros("2026-05-22T12:00:00Z")
    ingest_messages(database, [encode({
        "type": "track", "messageId": "data", "userId": "acme-champion",
        "event": "Data Source Connected", "timestamp": "2026-05-22T11:00:00Z",
        "context": {"groupId": "acme"}})], later, playbook.anchor_names)
    tick(database, playbook, later)
    Dispatcher(database, playbook, SANDBOX).run_once(later)
    assert actions(database)["data_congrats"]["status"] == "sent"


def test_an_account_kicked_off_two_days_before_its_import_gets_its_day3_email(database,
                                                                              playbook):
    now = micros("2026-03-04T12:00:00Z")
    history = [message for _, message in onboarding("acme")]
    ingest_messages(database, [encode(m) for m in history], now, playbook.anchor_names)
    simulate(database, playbook, [], until=DAY3_OPENING + HOUR, start=now, deliver=SANDBOX)
    found = actions(database)
    assert found["welcome"]["status"] == "suppressed"  # due on 27 February
    assert found["integration_tutorial"]["status"] == "sent"
    assert found["integration_tutorial"]["sent_at"] == DAY3_OPENING


def test_after_three_days_without_scheduler_each_due_rule_fires_once_marked_late(database,
                                                                                 playbook):
    deliveries = onboarding("acme")
    simulate(database, playbook, deliveries, until=micros("2026-03-02T12:00:00+01:00"))
    # The scheduler is down from 2 March noon until 8 March noon: days 3 and 5 pass unseen.
    dispatcher = Dispatcher(database, playbook, SANDBOX)
    back = micros("2026-03-08T12:00:00+01:00")
    for moment in (back, back + HOUR, back + 2 * HOUR):
        tick(database, playbook, moment)
        dispatcher.run_once(moment)
    found = actions(database)
    for rule, due in (("integration_tutorial", DAY3_OPENING),
                      ("integration_tutorial.csm_alert", DAY5_OPENING)):
        assert found[rule]["status"] == "sent"
        assert found[rule]["late"] == 1
        assert found[rule]["due_at"] == due
        assert found[rule]["sent_at"] == back
    with database.engine.connect() as conn:
        count = conn.execute(sa.text("SELECT COUNT(*) FROM actions WHERE rule LIKE "
                                     "'integration_tutorial%'")).scalar()
    assert count == 2


def test_a_message_due_outside_the_send_window_waits_for_its_opening(database, playbook):
    # The workspace is created at 22:00 Berlin time: the in-app prompt waits for 09:00.
    deliveries = onboarding("acme") + [(micros("2026-03-02T22:00:00+01:00"), {
        "type": "track", "messageId": "ws", "userId": "acme-champion",
        "event": "Workspace Created", "timestamp": "2026-03-02T22:00:00+01:00",
        "context": {"groupId": "acme"}})]
    waiting = simulate(database, playbook, deliveries, until=micros("2026-03-02T23:00:00+01:00"))
    prompt = next(a for a in list_actions(waiting) if a["rule"] == "setup_prompts")
    assert (prompt["status"], prompt["next_attempt_at"]) == ("pending",
                                                            "2026-03-03T08:00:00+00:00")
    dispatcher = simulate(database, playbook, deliveries,
                          until=micros("2026-03-03T10:00:00+01:00"),
                          start=micros("2026-03-02T23:00:00+01:00"))
    assert dispatcher is not None
    prompt = actions(database)["setup_prompts"]
    assert prompt["status"] == "sent"
    assert prompt["sent_at"] == micros("2026-03-03T09:00:00+01:00")
    assert prompt["late"] == 0  # waiting for the window is not lateness


def list_actions(dispatcher) -> list[dict]:
    """The outbox as `firstvalue actions --json` shows it."""
    from firstvalue.actions.outbox import action_json
    from firstvalue.actions.outbox import list_actions as rows

    with dispatcher.database.engine.connect() as conn:
        return [action_json(row) for row in rows(conn, None, None)]


def test_no_contact_gets_more_messages_a_day_than_the_cap(database):
    text = read_default_text().replace("daily_cap: 3", "daily_cap: 1")
    playbook = compile_playbook(parse_playbook(text, "capped.yaml"))
    # Data arrives on day 3 at 10:00, an hour after the tutorial: its congratulations wait.
    deliveries = onboarding("acme") + [(micros("2026-03-05T10:00:00+01:00"), {
        "type": "track", "messageId": "data", "userId": "acme-champion",
        "event": "Data Source Connected", "timestamp": "2026-03-05T10:00:00+01:00",
        "context": {"groupId": "acme"}})]
    simulate_sandboxed(database, playbook, deliveries, micros("2026-03-06T10:00:00+01:00"))
    found = actions(database)
    assert found["integration_tutorial"]["sent_at"] == DAY3_OPENING
    assert found["data_congrats"]["sent_at"] == micros("2026-03-06T09:00:00+01:00")


def simulate_sandboxed(database, playbook, deliveries, until):
    simulate(database, playbook, deliveries, until, deliver=SANDBOX)


def test_a_rule_once_per_occurrence_fires_for_each_event_and_once_per_run_only_once(database):
    text = read_default_text().replace(
        "    on: {meaning: workspace_created}\n",
        "    on: {meaning: workspace_created}\n    once: occurrence\n")
    playbook = compile_playbook(parse_playbook(text, "occurrence.yaml"))
    created = [(micros(f"2026-03-0{day}T10:00:00+01:00"), {
        "type": "track", "messageId": f"ws{day}", "userId": "acme-champion",
        "event": "Workspace Created", "timestamp": f"2026-03-0{day}T10:00:00+01:00",
        "context": {"groupId": "acme"}}) for day in (3, 4)]
    simulate_sandboxed(database, playbook, onboarding("acme") + created,
                       micros("2026-03-04T12:00:00+01:00"))
    with database.engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT key FROM actions WHERE rule = 'setup_prompts' "
                                    "ORDER BY key")).scalars().all()
    assert keys == ["acme/acme-deal/setup_prompts/ws3", "acme/acme-deal/setup_prompts/ws4"]
    assert actions(database)["welcome"]["key"] == "acme/acme-deal/welcome/1"


def test_business_day_n_skips_weekends_and_the_countrys_holidays():
    from datetime import date

    # Thursday 30 April 2026; 1 May is a holiday in Germany, 2 and 3 May a weekend.
    assert nth_business_day(date(2026, 4, 30), 1, "DE") == date(2026, 5, 4)
    assert nth_business_day(date(2026, 4, 30), 1, "US") == date(2026, 5, 1)
    assert nth_business_day(date(2026, 4, 30), 3, None) == date(2026, 5, 5)


def test_every_action_records_its_rule_playbook_version_and_facts(database, playbook):
    simulate(database, playbook, onboarding("acme"), until=DAY3_OPENING + HOUR)
    tutorial = actions(database)["integration_tutorial"]
    assert tutorial["playbook_version"] == playbook.version
    assert "day 3 since kickoff" in tutorial["reason"]
    assert "milestone data_connected not done" in tutorial["reason"]
    assert '"trigger_at":"2026-03-05T09:00:00+01:00"' in tutorial["facts"]


def test_an_event_before_the_contract_acts_when_the_run_starts(playbook):
    from firstvalue.engine import evaluate_account
    from tests.engine_helpers import event, facts, us

    account = facts({"segment": "smb", "timezone": "UTC"},
                    event("Workspace Created", "2026-02-20T10:00:00Z", message_id="trial"),
                    event("Deal Closed Won", "2026-03-01T10:00:00Z", deal_id="d1"))
    state = evaluate_account(account, playbook, us("2026-03-01T12:00:00Z"))
    [prompt] = [p for p in state.planned if p.rule == "setup_prompts"]
    assert prompt.due_at == us("2026-03-01T10:00:00Z")
    assert "before the contract" in prompt.reason


def test_hours_since_a_kickoff_still_ahead_wait_for_the_kickoff(playbook):
    from firstvalue.engine import evaluate_account
    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.playbook.loader import parse_playbook, read_default_text
    from tests.engine_helpers import event, facts, us

    text = read_default_text().replace("    at: {day: 3}\n", "    at: {hours: 2, since: kickoff}\n")
    hourly = compile_playbook(parse_playbook(text, "hours.yaml"))
    account = facts({"segment": "mid_market", "timezone": "UTC", "handoff": HANDOFF},
                    event("Deal Closed Won", "2026-03-01T10:00:00Z", deal_id="d1"),
                    event("Kickoff Scheduled", "2026-03-01T11:00:00Z",
                          start_time="2026-03-04T10:00:00Z"))
    early = evaluate_account(account, hourly, us("2026-03-02T12:00:00Z"))
    assert not [p for p in early.planned if p.rule == "integration_tutorial"]
    later = evaluate_account(account, hourly, us("2026-03-04T12:30:00Z"))
    [tutorial] = [p for p in later.planned if p.rule == "integration_tutorial"]
    assert tutorial.due_at == us("2026-03-04T12:00:00Z")


def test_without_an_smtp_server_emails_wait_without_using_their_attempts(database, playbook,
                                                                        monkeypatch):
    monkeypatch.delenv("FIRSTVALUE_SMTP_HOST", raising=False)
    simulate(database, playbook, onboarding("acme"), until=DAY3_OPENING + 30 * HOUR)
    welcome = actions(database)["welcome"]
    assert (welcome["status"], welcome["attempts"]) == ("pending", 0)
    assert "FIRSTVALUE_SMTP_HOST" in welcome["error"]


def test_an_older_deal_arriving_late_does_not_repeat_the_welcome(database, playbook):
    simulate(database, playbook, onboarding("acme"), until=micros("2026-03-01T12:00:00+01:00"),
             deliver=SANDBOX)
    late_pilot = (micros("2026-03-01T13:00:00+01:00"), {
        "type": "track", "messageId": "pilot", "userId": "acme-champion",
        "event": "Deal Closed Won", "timestamp": "2026-01-10T10:00:00+01:00",
        "properties": {"deal_id": "pilot-0"}, "context": {"groupId": "acme"}})
    simulate(database, playbook, [late_pilot], until=micros("2026-03-01T15:00:00+01:00"),
             deliver=SANDBOX)
    with database.engine.connect() as conn:
        welcomes = conn.execute(sa.text(
            "SELECT key, status FROM actions WHERE rule = 'welcome' ORDER BY key")).all()
    # The pilot became run 1 and the real deal run 2, but the welcome keeps its key: once.
    assert [tuple(w) for w in welcomes] == [("acme/acme-deal/welcome/1", "sent")]
    with database.engine.connect() as conn:
        state = conn.execute(sa.text("SELECT state FROM accounts WHERE id = 'acme'")).scalar()
    assert '"number":2' in state and '"key":"acme-deal"' in state


def test_a_cancellation_at_the_very_moment_its_escalation_came_due_does_not_say_before():
    import zoneinfo

    from firstvalue.engine.rules import _cancel_reason
    from firstvalue.playbook.model import Happening

    due = micros("2026-11-22T10:00:00Z")
    utc = zoneinfo.ZoneInfo("UTC")
    kickoff = Happening(anchor="kickoff")
    assert _cancel_reason(kickoff, due, due, utc)() == (
        "cancelled: anchor kickoff was booked at 2026-11-22T10:00:00+00:00, just as the "
        "escalation came due")
    assert _cancel_reason(kickoff, due - HOUR, due, utc)() == (
        "cancelled: anchor kickoff was booked at 2026-11-22T09:00:00+00:00, before the "
        "escalation came due at 2026-11-22T10:00:00+00:00")


def test_a_reason_names_what_has_not_happened_in_words_that_read_right():
    from firstvalue.engine.rules import _unless_text
    from firstvalue.playbook.model import Happening

    assert _unless_text(Happening(milestone="data_connected")) == (
        ", milestone data_connected not done")
    assert _unless_text(Happening(meaning="account_churned")) == ", no account_churned yet"
    assert _unless_text(Happening(event="Report Shared")) == ", no Report Shared yet"
    assert _unless_text(None) == ""


def test_a_scheduler_outage_on_a_track_without_a_kickoff_does_not_turn_due_rules_into_backfill(
        database, playbook):
    # Self-serve (smb) has no kickoff: its days count from the contract, which firstvalue
    # knew on time. After two days without a scheduler, day 3's rule is sent, marked late,
    # not suppressed as if its news had come late (it was judged as arriving when the
    # scheduler came back).
    deliveries = [(at, m) for at, m in onboarding("tiny") if m.get("event") != "Kickoff Completed"]
    for _, message in deliveries:
        if message["type"] == "group":
            message["traits"].update(segment="smb", tier=3)
    signed = micros("2026-02-27T11:00:00+01:00")
    simulate(database, playbook, deliveries, until=signed + 24 * HOUR)
    back = signed + 5 * 24 * HOUR  # days 2 to 4 passed unseen
    dispatcher = Dispatcher(database, playbook, SANDBOX)
    for moment in (back, back + HOUR):
        tick(database, playbook, moment)
        dispatcher.run_once(moment)
    tutorial = actions(database)["integration_tutorial"]
    assert tutorial["status"] == "sent", tutorial["reason"]
    assert tutorial["late"] == 1
    # Its reason counts the days from what day 0 is on this track: there was no kickoff.
    assert tutorial["reason"].startswith("rule integration_tutorial: day 3 since contract "
                                         "signed (day 0 of a track without kickoff), ")
