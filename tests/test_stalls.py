"""Stalls: shared/DESIGN.md "Time" rules 4 to 6, diagnosis, episodes, retraction, missed calls."""

from __future__ import annotations

import zoneinfo

import sqlalchemy as sa

from firstvalue.engine import evaluate_account
from firstvalue.engine.stalls import Episode, _first_of_each_spell
from firstvalue.ingest.service import ingest_messages
from firstvalue.runtime.evaluation import tick
from tests.conftest import HANDOFF, encode, micros
from tests.engine_helpers import event, facts, us

MID = {"segment": "mid_market", "tier": 2, "handoff": HANDOFF}
CHAMPION = {"u1": {"role": "champion"}, "u2": {"role": "user"}}


def stalls_of(state, rule):
    return [s for s in state.stalls if s["rule"] == rule]


def kicked_off(timezone: str, when: str, *events, contacts=None):
    return facts({**MID, "timezone": timezone},
                 event("Deal Closed Won", "2026-01-01T10:00:00Z", deal_id="d1"),
                 event("Kickoff Completed", when), *events, contacts=contacts or CHAMPION)


def test_inactivity_is_raised_at_the_midnight_that_ends_the_fifth_day_without_login(playbook):
    # Day 0 is Monday 2 March in Berlin with a login; days 1 to 5 have none.
    account = kicked_off("Europe/Berlin", "2026-03-02T10:00:00+01:00",
                         event("Signed In", "2026-03-02T11:00:00+01:00", actor="u2"))
    before = evaluate_account(account, playbook, us("2026-03-07T23:59:59+01:00"))
    assert stalls_of(before, "inactivity") == []
    raised = evaluate_account(account, playbook, us("2026-03-08T00:00:00+01:00"))
    [stall] = stalls_of(raised, "inactivity")
    assert stall["opened_at"] == "2026-03-08T00:00:00+01:00"
    assert stall["status"] == "open"


def test_inactivity_counts_local_days_across_the_dst_change(playbook):
    # Day 0 is 27 March in Berlin, login on it; days 28 to 1 April have none. Clocks move on
    # 29 March: the fifth day still ends at the local midnight starting 2 April.
    account = kicked_off("Europe/Berlin", "2026-03-27T10:00:00+01:00",
                         event("Signed In", "2026-03-27T11:00:00+01:00"),
                         event("Signed In", "2026-04-03T09:00:00+02:00", message_id="back"))
    state = evaluate_account(account, playbook, us("2026-04-05T12:00:00Z"))
    [stall] = stalls_of(state, "inactivity")
    assert stall["opened_at"] == "2026-04-02T00:00:00+02:00"
    assert stall["closed_at"] == "2026-04-03T09:00:00+02:00"  # closed by the next login
    assert stall["status"] == "closed"


def test_day_0_without_a_login_counts_and_the_first_30_days_bound_the_rule(playbook):
    account = kicked_off("UTC", "2026-03-02T10:00:00Z",
                         event("Signed In", "2026-03-27T10:00:00Z"))  # day 25
    state = evaluate_account(account, playbook, us("2026-05-01T00:00:00Z"))
    opened = [s["opened_at"] for s in stalls_of(state, "inactivity")]
    # Days 0-4 raise it at the start of day 5; after the day-25 login, days 26-30 would end
    # on day 30, past the first 30 days (days 0 to 29): not raised.
    assert opened == ["2026-03-07T00:00:00+00:00"]


def test_overdue_is_raised_on_the_first_day_past_half_the_target(playbook):
    account = kicked_off("UTC", "2026-03-02T10:00:00Z")
    state = evaluate_account(account, playbook, us("2026-03-30T12:00:00Z"))
    opened = {s["milestone"]: s["opened_at"][:10] for s in stalls_of(state, "overdue")}
    # Targets: account_configured 3 -> day 5; data_connected 7 -> day 11; first_workflow 14
    # -> day 22; first_value 21 -> day 32, not yet; second_user 30 -> day 46, not yet.
    assert opened == {"account_configured": "2026-03-07", "data_connected": "2026-03-13",
                      "first_workflow": "2026-03-24"}


def test_overdue_with_target_8_is_raised_on_day_13_not_12():
    from firstvalue.engine.stalls import _overdue
    from tests.test_engine_milestones import custom_playbook

    playbook = custom_playbook("milestones:\n  - key: first_value\n"
                               "    when: {meaning: value_delivered}\n")
    from firstvalue.engine.stalls import StallContext
    from firstvalue.playbook.model import StallRule

    context = StallContext("a", {}, __import__("zoneinfo").ZoneInfo("UTC"),
                           __import__("datetime").date(2026, 3, 2), us("2026-04-01T00:00:00Z"),
                           {}, {}, {"first_value": 8}, ["first_value"], {},
                           playbook.loaded.model, 1, 0)
    [(milestone, opened, closed, evidence)] = list(
        _overdue(StallRule(key="overdue", kind="overdue", percent=50), context))
    assert opened == us("2026-03-15T00:00:00Z")  # day 13
    assert evidence["raised_on_day"] == 13


def test_an_overdue_stall_closes_when_its_milestone_is_done(playbook):
    account = kicked_off("UTC", "2026-03-02T10:00:00Z",
                         event("Data Source Connected", "2026-03-15T10:00:00Z"))
    state = evaluate_account(account, playbook, us("2026-03-20T12:00:00Z"))
    [stall] = [s for s in stalls_of(state, "overdue") if s["milestone"] == "data_connected"]
    assert (stall["opened_at"], stall["closed_at"]) == ("2026-03-13T00:00:00+00:00",
                                                        "2026-03-15T10:00:00+00:00")


def test_champion_silence_counts_only_the_champions_own_activity(playbook):
    # The champion u1 replies on day 1; a colleague logs in daily and an email to the champion
    # is opened: neither counts. Silence holds from the midnight ending day 1 + 7.
    noise = [event("Signed In", f"2026-03-{day:02d}T10:00:00Z", actor="u2")
             for day in range(3, 20)]
    noise += [event("Email Opened", "2026-03-05T10:00:00Z", actor="u1")]
    account = kicked_off("UTC", "2026-03-02T10:00:00Z",
                         event("Email Replied", "2026-03-03T10:00:00Z", actor="u1"), *noise)
    state = evaluate_account(account, playbook, us("2026-03-20T12:00:00Z"))
    [stall] = stalls_of(state, "champion_silent")
    assert stall["opened_at"] == "2026-03-11T00:00:00+00:00"
    assert stall["diagnosis"] == "champion_quiet"


def test_a_call_the_champion_attended_ends_the_silence(playbook):
    account = kicked_off("UTC", "2026-03-02T10:00:00Z",
                         event("Call Completed", "2026-03-14T15:00:00Z", actor="u9",
                               attendees=["u1", "csm"], message_id="call"))
    state = evaluate_account(account, playbook, us("2026-03-20T12:00:00Z"))
    [stall] = stalls_of(state, "champion_silent")
    assert stall["opened_at"] == "2026-03-10T00:00:00+00:00"  # day 0 + 8
    assert stall["closed_at"] == "2026-03-14T15:00:00+00:00"


def test_failed_connections_diagnose_an_integration_blocker_with_its_interventions(playbook):
    account = kicked_off("UTC", "2026-03-02T10:00:00Z",
                         event("Data Source Connection Failed", "2026-03-04T10:00:00Z",
                               error="sso_required"),
                         event("Ticket Opened", "2026-03-05T10:00:00Z", topic="sso"))
    state = evaluate_account(account, playbook, us("2026-03-20T12:00:00Z"))
    [stall] = [s for s in stalls_of(state, "overdue") if s["milestone"] == "data_connected"]
    assert stall["diagnosis"] == "integration_blocker"
    rules = {p.rule for p in state.planned}
    assert {"stall.sandbox_offer", "stall.concierge_integration"} <= rules


def test_many_features_started_and_no_milestone_finished_is_scope_creep(playbook):
    features = [event(name, "2026-03-03T10:00:00Z") for name in
                ("Dashboard Started", "Alert Started", "Automation Started")]
    account = kicked_off("UTC", "2026-03-02T10:00:00Z", *features)
    state = evaluate_account(account, playbook, us("2026-03-20T12:00:00Z"))
    assert {s["diagnosis"] for s in stalls_of(state, "overdue")} == {"scope_creep"}
    assert "stall.one_use_case" in {p.rule for p in state.planned}


def send(database, playbook, messages, at):
    ingest_messages(database, [encode(m) for m in messages], at, playbook.anchor_names)
    tick(database, playbook, at)


def base_messages():
    return [
        {"type": "identify", "messageId": "i1", "userId": "u1", "timestamp": "2026-03-01T00:00Z",
         "traits": {"role": "champion", "email": "kim@example.com"}},
        {"type": "group", "messageId": "g1", "userId": "u1", "groupId": "acme",
         "timestamp": "2026-03-01T00:00:00Z",
         "traits": {"segment": "mid_market", "tier": 2, "timezone": "UTC", "handoff": HANDOFF}},
        {"type": "track", "messageId": "deal", "userId": "u1", "event": "Deal Closed Won",
         "timestamp": "2026-03-01T10:00:00Z", "context": {"groupId": "acme"}},
        {"type": "track", "messageId": "kick", "userId": "u1", "event": "Kickoff Completed",
         "timestamp": "2026-03-02T10:00:00Z", "context": {"groupId": "acme"}},
        {"type": "track", "messageId": "login0", "userId": "u1", "event": "Signed In",
         "timestamp": "2026-03-02T11:00:00Z", "context": {"groupId": "acme"}},
    ] + [{"type": "track", "messageId": f"setup{index}", "userId": "u1", "event": name,
          "timestamp": "2026-03-02T12:00:00Z", "context": {"groupId": "acme"}}
         for index, name in enumerate(("Workspace Created", "Integration Connected",
                                       "User Invited"))]


def recorded(database, rule):
    with database.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(
            "SELECT * FROM stalls WHERE rule = :r ORDER BY opened_at"), {"r": rule})]


def test_a_late_login_dated_before_a_stall_retracts_it_and_stops_its_intervention(database,
                                                                                 playbook):
    send(database, playbook, base_messages(), micros("2026-03-02T12:00:00Z"))
    # Logged in on day 0; days 1 to 5 have no login: raised at the start of 8 March.
    send(database, playbook, [], micros("2026-03-08T06:00:00Z"))
    [stall] = recorded(database, "inactivity")
    assert stall["status"] == "open"

    # A login of day 3 arrives late (a delayed pipeline): there were never 5 days without one.
    late = {"type": "track", "messageId": "login3", "userId": "u1", "event": "Signed In",
            "timestamp": "2026-03-05T09:00:00Z", "context": {"groupId": "acme"}}
    send(database, playbook, [late], micros("2026-03-08T07:00:00Z"))
    [stall] = recorded(database, "inactivity")
    assert (stall["status"], stall["retracted_at"]) == ("retracted", micros(
        "2026-03-08T07:00:00Z"))
    with database.engine.connect() as conn:
        statuses = conn.execute(sa.text(
            "SELECT status FROM actions WHERE rule LIKE 'stall.%' AND key LIKE '%inactivity%'")
        ).scalars().all()
    assert statuses and set(statuses) == {"cancelled"}


def test_stall_history_is_kept_per_milestone(database, playbook):
    send(database, playbook, base_messages(), micros("2026-03-02T13:00:00Z"))
    send(database, playbook, [], micros("2026-03-25T00:00:00Z"))
    milestones = {row["milestone"] for row in recorded(database, "overdue")}
    assert milestones == {"data_connected", "first_workflow"}


def test_missed_calls_count_one_reschedule_and_one_miss_and_raise_at_the_second(playbook):
    calls = [
        event("Call Scheduled", "2026-03-03T10:00:00Z", call_id="c1"),
        event("Call Cancelled", "2026-03-05T09:00:00Z", call_id="c1"),
        event("Call Scheduled", "2026-03-05T15:00:00Z", call_id="c2"),  # rebooked in 6 h
        event("Call Missed", "2026-03-09T10:10:00Z", call_id="c2", message_id="noshow"),
        event("Call Missed", "2026-03-09T10:11:00Z", call_id="c2", message_id="noshow-again"),
    ]
    account = kicked_off("UTC", "2026-03-02T10:00:00Z",
                         event("Signed In", "2026-03-09T12:00:00Z", actor="u1"), *calls)
    state = evaluate_account(account, playbook, us("2026-03-10T12:00:00Z"))
    [stall] = stalls_of(state, "missed_calls")
    assert stall["opened_at"] == "2026-03-09T10:10:00+00:00"
    assert [i["what"] for i in stall["evidence"]["incidents"]] == ["rescheduled", "missed"]
    assert stall["status"] == "open"
    completed = kicked_off("UTC", "2026-03-02T10:00:00Z", *calls,
                       event("Call Completed", "2026-03-12T10:30:00Z", call_id="c3"))
    [closed] = stalls_of(evaluate_account(completed, playbook, us("2026-03-13T12:00:00Z")),
                         "missed_calls")
    assert closed["closed_at"] == "2026-03-12T10:30:00+00:00"  # the next call took place
    only_one = facts({**MID, "timezone": "UTC"}, *calls[:4][:-1],
                     event("Kickoff Completed", "2026-03-02T10:00:00Z"), contacts=CHAMPION)
    assert stalls_of(evaluate_account(only_one, playbook, us("2026-03-10T12:00:00Z")),
                     "missed_calls") == []


def test_a_user_defined_stall_holds_from_its_condition_until_its_end(playbook):
    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.playbook.loader import parse_playbook, read_default_text

    text = read_default_text().replace(
        "  - {key: overdue, kind: overdue, percent: 50}\n",
        "  - {key: overdue, kind: overdue, percent: 50}\n"
        "  - key: connection_trouble\n"
        "    kind: custom\n"
        "    when: {meaning: data_connection_failed, count: 2}\n"
        "    until: {milestone: data_connected}\n")
    custom = compile_playbook(parse_playbook(text, "custom.yaml"))
    account = kicked_off("UTC", "2026-03-02T10:00:00Z",
                         event("Data Source Connection Failed", "2026-03-03T10:00:00Z"),
                         event("Data Source Connection Failed", "2026-03-04T10:00:00Z"),
                         event("Data Source Connected", "2026-03-06T10:00:00Z"))
    [stall] = stalls_of(evaluate_account(account, custom, us("2026-03-10T00:00:00Z")),
                        "connection_trouble")
    assert (stall["opened_at"], stall["closed_at"]) == ("2026-03-04T10:00:00+00:00",
                                                        "2026-03-06T10:00:00+00:00")
    assert stall["diagnosis"] == "integration_blocker"


def test_inactivity_in_business_days_skips_the_weekend_and_holidays(playbook):
    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.playbook.loader import parse_playbook, read_default_text

    text = read_default_text().replace(
        "{key: inactivity, kind: inactivity, days: 5, within_days: 30}",
        "{key: inactivity, kind: inactivity, days: 5, within_days: 30, business_days: true}")
    business = compile_playbook(parse_playbook(text, "business.yaml"))
    # Day 0 is Thursday 30 April 2026 in Germany, with a login. 1 May is a holiday; 2-3 May a
    # weekend: the five business days without login are 4 to 8 May.
    account = facts({**MID, "timezone": "Europe/Berlin", "country": "DE"},
                    event("Deal Closed Won", "2026-04-20T10:00:00Z", deal_id="d1"),
                    event("Kickoff Completed", "2026-04-30T10:00:00+02:00"),
                    event("Signed In", "2026-04-30T11:00:00+02:00"), contacts=CHAMPION)
    [stall] = stalls_of(evaluate_account(account, business, us("2026-05-12T00:00:00Z")),
                        "inactivity")
    assert stall["opened_at"] == "2026-05-09T00:00:00+02:00"


def test_a_stall_task_already_sent_is_resolved_when_the_stall_closes(database, playbook):
    from firstvalue.actions.dispatch import Dispatcher
    from tests.test_timing_rules import SANDBOX

    send(database, playbook, base_messages(), micros("2026-03-02T12:00:00Z"))
    send(database, playbook, [], micros("2026-03-08T06:00:00Z"))  # inactivity from 8 March
    Dispatcher(database, playbook, SANDBOX).run_once(micros("2026-03-08T06:00:00Z"))

    def review_tasks():
        with database.engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT status, resolved_at FROM actions WHERE rule = 'stall.stall_review' "
                "AND key LIKE '%inactivity%'")).all()

    assert [tuple(row) for row in review_tasks()] == [("sent", None)]
    # The champion logs in again: the stall closes, and its review task has nothing left to do.
    login = {"type": "track", "messageId": "login9", "userId": "u1", "event": "Signed In",
             "timestamp": "2026-03-09T09:00:00Z", "context": {"groupId": "acme"}}
    send(database, playbook, [login], micros("2026-03-09T10:00:00Z"))
    [stall] = recorded(database, "inactivity")
    assert stall["status"] == "closed"
    assert [tuple(row) for row in review_tasks()] == [("sent", micros("2026-03-09T10:00:00Z"))]


def test_a_stall_task_still_waiting_when_its_stall_ends_is_cancelled_not_sent(database,
                                                                             playbook):
    send(database, playbook, base_messages(), micros("2026-03-02T12:00:00Z"))
    send(database, playbook, [], micros("2026-03-08T06:00:00Z"))  # raised, not dispatched
    login = {"type": "track", "messageId": "login9", "userId": "u1", "event": "Signed In",
             "timestamp": "2026-03-08T07:30:00Z", "context": {"groupId": "acme"}}
    send(database, playbook, [login], micros("2026-03-08T08:00:00Z"))
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT status, reason FROM actions WHERE rule LIKE 'stall.%' "
            "AND key LIKE '%inactivity%'")).all()
    assert rows and {row.status for row in rows} == {"cancelled"}
    assert all(row.reason.startswith("cancelled: the stall was over before this was sent")
               for row in rows)


def episode(opened: int, closed: int | None, diagnosis: str = "unknown") -> Episode:
    return Episode("inactivity", "inactivity", None, opened, closed, diagnosis)


def test_a_spell_lasts_until_the_last_overlapping_episode_of_its_diagnosis_closes():
    # An episode still open keeps the spell going: a later one of its diagnosis is part of it.
    first, overlapping, later = episode(1, 5), episode(3, None), episode(10, 12)
    assert _first_of_each_spell([first, overlapping, later]) == [(first, None)]
    first, overlapping = episode(1, 5), episode(3, 8)
    assert _first_of_each_spell([overlapping, first]) == [(first, 8)]
    first, apart, other = episode(1, 5), episode(6, 7), episode(2, None, "scope_creep")
    assert _first_of_each_spell([first, apart, other]) == [(first, 5), (other, None),
                                                           (apart, 7)]


def test_an_intervention_is_cleared_only_when_its_whole_spell_is_over(playbook):
    from firstvalue.engine.stalls import StallContext, plan_interventions

    model = playbook.loaded.model
    context = StallContext("acme", {"tier": 2}, zoneinfo.ZoneInfo("UTC"), None, 100, {}, {},
                           {}, [], {}, model, 1, 0)
    review = [i for i in model.interventions if i.key == "stall_review"]
    still_open = plan_interventions([episode(1, 5), episode(3, None)], review, context, None)
    assert still_open and not any(action.cleared for action in still_open)
    over = plan_interventions([episode(1, 5), episode(3, 8)], review, context, None)
    assert over and all(action.cleared for action in over)
    ahead = plan_interventions([episode(1, 500)], review, context, None)  # ends after now
    assert ahead and not any(action.cleared for action in ahead)
