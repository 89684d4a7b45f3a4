"""shared/DESIGN.md "Time": day 0 is the local kickoff date; on time means done by local day T."""

from __future__ import annotations

from firstvalue.engine import evaluate_account
from firstvalue.engine.days import local_date, next_local_midnight, zone
from tests.engine_helpers import event, facts, milestone, us

MID = {"segment": "mid_market", "tier": 2}


def test_day0_is_the_local_kickoff_date_in_los_angeles_not_the_utc_date(playbook):
    # 23:30 on 2 March in Los Angeles is already 3 March in UTC.
    account = facts({**MID, "timezone": "America/Los_Angeles"},
                    event("Deal Closed Won", "2026-02-25T18:00:00Z", deal_id="d1"),
                    event("Kickoff Completed", "2026-03-02T23:30:00-08:00"))
    state = evaluate_account(account, playbook, us("2026-03-04T12:00:00Z"))
    assert state.day0 == "2026-03-02"
    assert state.day == 2


def test_milestone_done_late_on_local_day_t_is_on_time_across_the_us_dst_change(playbook):
    # US clocks move forward on 8 March 2026; data_connected has target 7 on mid-market.
    kickoff = event("Kickoff Completed", "2026-03-02T10:00:00-08:00")
    just_in_time = event("Data Source Connected", "2026-03-09T23:59:00-07:00")
    state = evaluate_account(facts({**MID, "timezone": "America/Los_Angeles"}, kickoff,
                                   just_in_time), playbook, us("2026-03-20T12:00:00Z"))
    data = milestone(state, "data_connected")
    assert (data.local_day, data.target_day, data.on_time) == (7, 7, True)
    assert data.due_on == "2026-03-09"
    assert data.completed_at == "2026-03-09T23:59:00-07:00"


def test_milestone_done_minutes_after_local_midnight_of_day_t_plus_1_is_late(playbook):
    kickoff = event("Kickoff Completed", "2026-03-02T10:00:00-08:00")
    too_late = event("Data Source Connected", "2026-03-10T00:05:00-07:00")
    state = evaluate_account(facts({**MID, "timezone": "America/Los_Angeles"}, kickoff,
                                   too_late), playbook, us("2026-03-20T12:00:00Z"))
    data = milestone(state, "data_connected")
    assert (data.local_day, data.on_time, data.overdue_days) == (8, False, 1)


def test_tokyo_counts_its_own_date_where_utc_is_still_the_day_before(playbook):
    # 08:00 on 1 June in Tokyo is 23:00 on 31 May in UTC.
    kickoff = event("Kickoff Completed", "2026-06-01T08:00:00+09:00")
    done = event("Data Source Connected", "2026-06-08T07:00:00+09:00")  # 7 June in UTC
    state = evaluate_account(facts({**MID, "timezone": "Asia/Tokyo"}, kickoff, done),
                             playbook, us("2026-06-10T00:00:00Z"))
    assert state.day0 == "2026-06-01"
    assert milestone(state, "data_connected").local_day == 7
    # Late on 8 June in Tokyo (14:30 UTC): Tokyo's day 7, but day 8 for an account on UTC,
    # whose day 0 is 31 May.
    late = event("Data Source Connected", "2026-06-08T23:30:00+09:00")
    state = evaluate_account(facts({**MID, "timezone": "Asia/Tokyo"}, kickoff, late),
                             playbook, us("2026-06-10T00:00:00Z"))
    assert milestone(state, "data_connected").local_day == 7
    utc_state = evaluate_account(facts({**MID, "timezone": "UTC"}, kickoff, late), playbook,
                                 us("2026-06-10T00:00:00Z"))
    assert utc_state.day0 == "2026-05-31"
    assert milestone(utc_state, "data_connected").local_day == 8


def test_berlin_day_counts_are_date_differences_across_the_eu_dst_change(playbook):
    # EU clocks move forward on 29 March 2026: day 7 is 3 April, though fewer than 7 * 24
    # hours separate the two local midnights.
    kickoff = event("Kickoff Completed", "2026-03-27T10:00:00+01:00")
    configured = [event("Workspace Created", "2026-03-28T09:00:00+01:00"),
                  event("Integration Connected", "2026-03-29T09:00:00+02:00"),
                  event("User Invited", "2026-03-30T23:59:00+02:00")]
    data = event("Data Source Connected", "2026-04-03T23:30:00+02:00")
    state = evaluate_account(facts({**MID, "timezone": "Europe/Berlin"}, kickoff, *configured,
                                   data), playbook, us("2026-04-10T12:00:00Z"))
    assert milestone(state, "account_configured").local_day == 3
    assert milestone(state, "account_configured").on_time is True
    assert milestone(state, "data_connected").local_day == 7
    assert milestone(state, "data_connected").on_time is True
    assert state.day == 14


def test_next_wake_is_the_local_midnight_even_on_the_night_the_clocks_change():
    berlin = zone("Europe/Berlin")
    wake = next_local_midnight(us("2026-03-28T12:00:00+01:00"), berlin)
    assert wake == us("2026-03-29T00:00:00+01:00")
    after = next_local_midnight(us("2026-03-29T12:00:00+02:00"), berlin)
    assert after == us("2026-03-30T00:00:00+02:00")
    assert local_date(after, berlin).isoformat() == "2026-03-30"


def test_a_track_without_kickoff_counts_days_from_the_local_contract_date(playbook):
    # SMB is self-serve: day 0 is the day the contract was signed, in Tokyo.
    account = facts({"segment": "smb", "timezone": "Asia/Tokyo"},
                    event("Deal Closed Won", "2026-05-10T20:00:00Z", deal_id="d1"),  # 11 May
                    event("Value Delivered", "2026-05-16T10:00:00+09:00"))
    state = evaluate_account(account, playbook, us("2026-05-20T00:00:00Z"))
    assert state.track == "smb"
    assert state.day0 == "2026-05-11"
    assert state.kickoff_at is None
    first_value = milestone(state, "first_value")
    assert (first_value.local_day, first_value.target_day, first_value.on_time) == (5, 5, True)
    assert state.ttv_days == 5


def test_overdue_counts_local_days_past_the_target_and_severity_starts_past_half(playbook):
    kickoff = event("Kickoff Completed", "2026-03-02T10:00:00+01:00")
    account = facts({**MID, "timezone": "Europe/Berlin"}, kickoff)
    # data_connected target 7: more than 50 % overdue from day 11 ((11 - 7) / 7 > 0.5).
    day10 = evaluate_account(account, playbook, us("2026-03-12T12:00:00+01:00"))
    day11 = evaluate_account(account, playbook, us("2026-03-13T00:00:00+01:00"))
    assert day10.day == 10
    assert milestone(day10, "data_connected").overdue_days == 3
    assert milestone(day10, "data_connected").severely_overdue is False
    assert day11.day == 11
    assert milestone(day11, "data_connected").severely_overdue is True
    # account_configured target 3: day 4 is 1/3 over, day 5 is 2/3 over.
    assert milestone(day10, "account_configured").overdue_days == 7


def test_severity_of_a_target_of_eight_starts_on_day_13_not_day_12():
    from firstvalue.engine.evaluate import _severely_overdue

    assert _severely_overdue(12, 8) is False
    assert _severely_overdue(13, 8) is True
    assert _severely_overdue(1, 0) is True
    assert _severely_overdue(0, 0) is False


def test_an_account_without_timezone_uses_the_playbook_default_and_says_so(playbook):
    state = evaluate_account(facts(MID, event("Kickoff Completed", "2026-03-02T23:30:00Z")),
                             playbook, us("2026-03-03T12:00:00Z"))
    assert (state.timezone, state.timezone_is_default, state.day0) == ("UTC", True, "2026-03-02")
    state = evaluate_account(
        facts({**MID, "timezone": "Not/AZone"}, event("Kickoff Completed",
                                                     "2026-03-02T23:30:00Z")),
        playbook, us("2026-03-03T12:00:00Z"))
    assert state.timezone_is_default is True


def test_an_unknown_kickoff_leaves_day_null_and_due_dates_unknown(playbook):
    account = facts({**MID, "timezone": "Europe/Berlin"},
                    event("Deal Closed Won", "2026-03-01T10:00:00Z", deal_id="d1"))
    state = evaluate_account(account, playbook, us("2026-03-05T10:00:00Z"))
    assert state.day is None and state.day0 is None
    assert all(m.due_on is None and m.overdue_days is None for m in state.milestones)
    assert state.contract_signed_at == "2026-03-01T11:00:00+01:00"


def test_events_dated_after_now_are_not_used(playbook):
    account = facts({**MID, "timezone": "UTC"},
                    event("Kickoff Completed", "2026-03-02T10:00:00Z"),
                    event("Data Source Connected", "2026-03-06T10:00:00Z"))
    before = evaluate_account(account, playbook, us("2026-03-05T10:00:00Z"))
    after = evaluate_account(account, playbook, us("2026-03-06T10:00:00Z"))
    assert milestone(before, "data_connected").status == "open"
    assert milestone(after, "data_connected").status == "done"
