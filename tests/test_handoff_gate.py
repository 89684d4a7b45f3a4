"""The handoff gate: on a gated track the customer hears nothing until the handoff is complete;
the AE is reminded and their manager told, on time; what waited goes out at completion."""

from __future__ import annotations

import pytest

from firstvalue.engine.compiled import compile_playbook
from firstvalue.playbook.loader import parse_playbook, read_default_text
from firstvalue.runtime.handoff import submit_handoff
from tests.conftest import micros
from tests.test_handoff import COMPLETE
from tests.test_sequences import HOUR, action, onboarding, simulate
from tests.test_timing_rules import SANDBOX

CONTRACT = micros("2026-02-27T11:00:00+01:00")


@pytest.fixture
def gated():
    text = read_default_text()
    if "\nhandoff:" not in text:
        text += "\nhandoff:\n  gate: [mid_market, enterprise]\n"
    return compile_playbook(parse_playbook(text, "gated.yaml"))


def without_handoff(account: str) -> list[tuple[int, dict]]:
    """The shared onboarding, minus the handoff trait its group call carries."""
    messages = onboarding(account)
    for _, message in messages:
        message.get("traits", {}).pop("handoff", None)
    return messages


def customer_messages(database) -> list[tuple[str, str]]:
    import sqlalchemy as sa

    with database.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT rule, status FROM actions WHERE kind IN ('email', 'in_app') AND recipient "
            "IN ('champion', 'actor') ORDER BY due_at, rule")).all()]


def test_no_customer_message_before_the_handoff_then_they_go_when_it_completes(
        database, gated):
    day4 = micros("2026-03-05T12:00:00+01:00")  # day 3's tutorial came due yesterday
    simulate(database, gated, without_handoff("acme"), until=day4, deliver=SANDBOX)
    assert customer_messages(database) == []

    # The AE reminder 24 hours after the contract, the manager 72 hours after: on the dot.
    reminder = action(database, "acme/acme-deal/handoff.ae_reminder/1")
    escalation = action(database, "acme/acme-deal/handoff.manager/1")
    assert (reminder["status"], reminder["due_at"]) == ("sent", CONTRACT + 24 * HOUR)
    assert (escalation["status"], escalation["due_at"]) == ("sent", CONTRACT + 72 * HOUR)
    assert reminder["recipient"] == "ae" and escalation["recipient"] == "manager"
    assert reminder["resolved_at"] is None

    with database.write() as conn:
        submit_handoff(conn, gated.loaded.model.handoff, "acme", COMPLETE, day4, "test")
    simulate(database, gated, [], until=day4 + 2 * HOUR, start=day4, deliver=SANDBOX)
    # The reminders were sent; now that the handoff is in, they are resolved.
    assert action(database, "acme/acme-deal/handoff.ae_reminder/1")["resolved_at"] == day4
    assert action(database, "acme/acme-deal/handoff.manager/1")["resolved_at"] == day4
    sent = customer_messages(database)
    assert ("welcome", "sent") in sent and ("integration_tutorial", "sent") in sent
    welcome = action(database, "acme/acme-deal/welcome/1")
    assert welcome["due_at"] == day4  # due when the handoff completed, and not late for it
    assert not welcome["late"]


def test_a_handoff_complete_in_time_cancels_the_reminders(database, gated):
    early = CONTRACT + 2 * HOUR
    simulate(database, gated, without_handoff("acme")[:3], until=early, deliver=SANDBOX)
    with database.write() as conn:
        submit_handoff(conn, gated.loaded.model.handoff, "acme", COMPLETE, early, "test")
    simulate(database, gated, without_handoff("acme")[3:], until=CONTRACT + 80 * HOUR,
             start=early, deliver=SANDBOX)
    assert action(database, "handoff.ae_reminder")["status"] == "cancelled"
    assert action(database, "handoff.manager")["status"] == "cancelled"
    assert ("welcome", "sent") in customer_messages(database)


def test_what_the_customer_did_while_waiting_is_not_prompted_afterwards(database, gated):
    from tests.test_sequences import track

    connected = (micros("2026-03-06T10:00:00+01:00"),
                 track("acme", "data", "Data Source Connected", "2026-03-06T10:00:00+01:00"))
    day6 = micros("2026-03-08T12:00:00+01:00")
    simulate(database, gated, [*without_handoff("acme"), connected], until=day6, deliver=SANDBOX)
    with database.write() as conn:
        submit_handoff(conn, gated.loaded.model.handoff, "acme", COMPLETE, day6, "test")
    simulate(database, gated, [], until=day6 + HOUR, start=day6, deliver=SANDBOX)
    # Day 3's "connect your data" waited for the handoff; the data came on day 4 (local),
    # before the handoff completed on day 6: the tutorial is not sent.
    tutorial = action(database, "acme/acme-deal/integration_tutorial/1")
    assert tutorial["status"] == "cancelled" and "handoff" in tutorial["reason"]


def test_a_track_outside_the_gate_does_not_wait(database, gated):
    messages = without_handoff("acme")
    messages[1][1]["traits"]["segment"] = "smb"  # self-serve: no sales handoff
    simulate(database, gated, messages, until=CONTRACT + 4 * HOUR, deliver=SANDBOX)
    assert ("welcome", "sent") in customer_messages(database)
    assert action(database, "handoff.ae_reminder") is None


def test_a_gate_naming_an_unknown_track_is_refused_by_place():
    from firstvalue.errors import PlaybookError

    text = read_default_text() + "\nhandoff:\n  gate: [mid_markets]\n"
    with pytest.raises(PlaybookError, match=r"handoff.gate\[0\]"):
        parse_playbook(text, "bad.yaml")


def test_history_imported_a_month_late_does_not_remind_the_ae_of_a_month_old_handoff(
        database, gated):
    # The whole onboarding arrives at once, a month after the contract (an import of
    # history): the engine could not have reminded anyone in time, so the reminders are
    # backfill, suppressed like every other action that late, and nothing goes out.
    late = CONTRACT + 30 * 24 * HOUR
    simulate(database, gated, [(late, m) for _, m in without_handoff("acme")], until=late,
             start=late, deliver=SANDBOX)
    for key in ("acme/acme-deal/handoff.ae_reminder/1", "acme/acme-deal/handoff.manager/1"):
        reminder = action(database, key)
        assert reminder["status"] == "suppressed", reminder
        assert reminder["reason"].startswith("backfill: ")


def test_history_imported_late_stays_backfill_when_the_handoff_comes_afterwards(
        database, gated):
    # The onboarding arrives a month after the contract (an import of history) and the
    # handoff is submitted a day later: what fell due long before anyone could have acted
    # stays backfill. The gate holds only what would have been sent but for it (a new user
    # saw a month-old welcome and a weeks-old "congrats" go out as the handoff came in).
    late = CONTRACT + 30 * 24 * HOUR
    simulate(database, gated, [(late, m) for _, m in without_handoff("acme")], until=late,
             start=late, deliver=SANDBOX)
    assert customer_messages(database) == []
    submitted = late + 24 * HOUR
    with database.write() as conn:
        submit_handoff(conn, gated.loaded.model.handoff, "acme", COMPLETE, submitted, "test")
    simulate(database, gated, [], until=submitted + 2 * HOUR, start=submitted,
             deliver=SANDBOX)
    found = customer_messages(database)
    assert found, "the customer's actions are recorded once the handoff is in"
    assert all(status in ("suppressed", "cancelled") for _, status in found), found
    welcome = action(database, "acme/acme-deal/welcome/1")
    assert welcome["status"] == "suppressed" and welcome["reason"].startswith("backfill: ")


def test_a_gated_track_without_a_kickoff_sends_what_waited_once_the_handoff_is_in(database):
    # A playbook that gates the self-serve track, which has no kickoff: its day-based rules
    # count from the contract, and what they planned waited for the handoff, it did not
    # arrive late (found by review: it was suppressed as backfill on the handoff's day).
    text = read_default_text().replace("gate: [mid_market, enterprise]", "gate: [smb]")
    assert "gate: [smb]" in text
    smb_gated = compile_playbook(parse_playbook(text, "smb-gated.yaml"))
    messages = without_handoff("tiny")
    for _, message in messages:
        if message["type"] == "group":
            message["traits"].update(segment="smb", tier=3)
    messages = [(at, m) for at, m in messages if m.get("event") != "Kickoff Completed"]
    day12 = CONTRACT + 12 * 24 * HOUR
    simulate(database, smb_gated, messages, until=day12, deliver=SANDBOX)
    assert customer_messages(database) == []
    with database.write() as conn:
        submit_handoff(conn, smb_gated.loaded.model.handoff, "tiny", COMPLETE, day12, "test")
    simulate(database, smb_gated, [], until=day12 + 2 * HOUR, start=day12, deliver=SANDBOX)
    found = dict(customer_messages(database))
    assert found.get("welcome") == "sent"
    assert found.get("integration_tutorial") == "sent", found
    assert "suppressed" not in found.values(), found
