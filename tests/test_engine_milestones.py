"""Milestone detection, anchors, runs, TTV and phases of the pure engine."""

from __future__ import annotations

import pytest

from firstvalue.engine import evaluate_account
from firstvalue.engine.compiled import compile_playbook
from firstvalue.playbook.loader import parse_playbook
from tests.engine_helpers import event, facts, milestone, us

MID = {"segment": "mid_market", "tier": 2, "timezone": "UTC"}
NOW = "2026-04-30T12:00:00Z"


def custom_playbook(milestones_yaml: str):
    """A one-track playbook with the given milestones (its first value is `first_value`)."""
    return compile_playbook(parse_playbook(custom_playbook_text(milestones_yaml), "test"))


def custom_playbook_text(milestones_yaml: str) -> str:
    """The YAML of `custom_playbook`."""
    return """name: test
meanings:
  contract_signed: [Deal Closed Won]
  kickoff_completed: [Kickoff Completed]
  kickoff_scheduled: [Kickoff Scheduled]
  login: [Signed In]
  value_delivered: [Value Delivered]
  meaningful_action: [Workflow Run, Value Delivered, Report Shared]
""" + milestones_yaml + """
phases: [contract_signed, kickoff, first_value]
tracks:
  - key: only
    targets: {first_value: 10}
"""


def test_account_configured_is_done_when_the_last_of_its_three_events_happens(playbook):
    account = facts(MID, event("Kickoff Completed", "2026-03-02T10:00:00Z"),
                    event("User Invited", "2026-03-04T10:00:00Z"),
                    event("Workspace Created", "2026-03-02T12:00:00Z"),
                    event("Integration Connected", "2026-03-03T10:00:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    configured = milestone(state, "account_configured")
    assert configured.completed_at == "2026-03-04T10:00:00+00:00"
    assert configured.local_day == 2


def test_a_milestone_missing_one_part_of_all_of_stays_open(playbook):
    account = facts(MID, event("Kickoff Completed", "2026-03-02T10:00:00Z"),
                    event("Workspace Created", "2026-03-02T12:00:00Z"),
                    event("Integration Connected", "2026-03-03T10:00:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    assert milestone(state, "account_configured").status == "open"
    assert state.current_milestone == "account_configured"


def test_a_milestone_takes_the_earliest_qualifying_event(playbook):
    account = facts(MID, event("Workflow Run", "2026-03-09T10:00:00Z", message_id="late"),
                    event("Workflow Run", "2026-03-05T10:00:00Z", message_id="early"))
    state = evaluate_account(account, playbook, us(NOW))
    assert milestone(state, "first_workflow").evidence == "early"


def test_second_user_needs_a_meaningful_action_of_a_second_distinct_user(playbook):
    one_user = facts(MID, event("Workflow Run", "2026-03-05T10:00:00Z", actor="u1"),
                     event("Report Shared", "2026-03-06T10:00:00Z", actor="u1"),
                     event("Signed In", "2026-03-06T11:00:00Z", actor="u2"))
    assert milestone(evaluate_account(one_user, playbook, us(NOW)),
                     "second_user").status == "open"
    two_users = facts(MID, event("Workflow Run", "2026-03-05T10:00:00Z", actor="u1"),
                      event("Report Shared", "2026-03-07T10:00:00Z", actor="u2"))
    done = milestone(evaluate_account(two_users, playbook, us(NOW)), "second_user")
    assert done.completed_at == "2026-03-07T10:00:00+00:00"


def test_property_filters_and_count_pick_the_nth_matching_event():
    playbook = custom_playbook("""milestones:
  - key: first_value
    when: {event: Report Shared, where: {audience: {in: [vp, exec]}, pages: {gte: 2}},
           count: 2}
""")
    account = facts(MID,
                    event("Report Shared", "2026-03-05T10:00:00Z", audience="vp", pages=1),
                    event("Report Shared", "2026-03-06T10:00:00Z", audience="exec", pages=3),
                    event("Report Shared", "2026-03-07T10:00:00Z", audience="team", pages=9),
                    event("Report Shared", "2026-03-08T10:00:00Z", audience="vp", pages=2,
                          message_id="second-match"))
    state = evaluate_account(account, playbook, us(NOW))
    assert milestone(state, "first_value").evidence == "second-match"


def test_a_bool_property_does_not_match_a_number_filter():
    playbook = custom_playbook("""milestones:
  - key: first_value
    when: {event: Value Delivered, where: {paid: true}}
""")
    account = facts(MID, event("Value Delivered", "2026-03-05T10:00:00Z", paid=1))
    assert milestone(evaluate_account(account, playbook, us(NOW)), "first_value").status == "open"


def test_distinct_by_function_needs_a_user_of_a_different_function_from_the_first():
    playbook = custom_playbook("""milestones:
  - key: first_value
    when: {users: 2, of: [meaningful_action], distinct_by: function}
""")
    contacts = {"u1": {"function": "sales"}, "u2": {"function": "sales"},
                "u3": {"function": "ops"}}
    account = facts(MID, event("Workflow Run", "2026-03-05T10:00:00Z", actor="u1"),
                    event("Workflow Run", "2026-03-06T10:00:00Z", actor="u2"),
                    event("Report Shared", "2026-03-08T10:00:00Z", actor="u3",
                          message_id="other-function"), contacts=contacts)
    state = evaluate_account(account, playbook, us(NOW))
    assert milestone(state, "first_value").evidence == "other-function"


def test_contact_filters_count_only_events_of_matching_contacts():
    playbook = custom_playbook("""milestones:
  - key: first_value
    when: {meaning: value_delivered, contact: {role: champion}}
""")
    contacts = {"u1": {"role": "user"}, "u2": {"role": "champion"}}
    account = facts(MID, event("Value Delivered", "2026-03-05T10:00:00Z", actor="u1"),
                    event("Value Delivered", "2026-03-09T10:00:00Z", actor="u2",
                          message_id="champion"), contacts=contacts)
    state = evaluate_account(account, playbook, us(NOW))
    assert milestone(state, "first_value").evidence == "champion"


def test_any_of_takes_the_earliest_part():
    playbook = custom_playbook("""milestones:
  - key: first_value
    when:
      any_of:
        - {event: Value Delivered}
        - {event: Report Shared, count: 2}
""")
    account = facts(MID, event("Report Shared", "2026-03-03T10:00:00Z"),
                    event("Report Shared", "2026-03-04T10:00:00Z", message_id="two"),
                    event("Value Delivered", "2026-03-09T10:00:00Z"))
    assert milestone(evaluate_account(account, playbook, us(NOW)),
                     "first_value").evidence == "two"


def test_kickoff_completed_beats_any_booking_and_moves_day0(playbook):
    account = facts(MID, event("Kickoff Scheduled", "2026-03-01T10:00:00Z",
                               start_time="2026-03-05T15:00:00Z"),
                    event("Kickoff Completed", "2026-03-07T15:45:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    assert (state.day0, state.kickoff_source) == ("2026-03-07", "completed")


def test_the_kickoff_booked_last_decides_not_the_latest_meeting(playbook):
    account = facts(MID, event("Kickoff Scheduled", "2026-03-01T10:00:00Z",
                               start_time="2026-03-10T15:00:00Z"),
                    event("Kickoff Scheduled", "2026-03-02T10:00:00Z",
                          start_time="2026-03-06T15:00:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    assert (state.day0, state.kickoff_source) == ("2026-03-06", "scheduled")


def test_the_kickoff_at_trait_counts_as_a_booking_made_when_its_group_call_was(playbook):
    # The trait was set on 3 March, after the event booking of 1 March: the trait wins.
    account = facts({**MID, "kickoff_at": "2026-03-09T09:00:00Z"},
                    event("Kickoff Scheduled", "2026-03-01T10:00:00Z",
                          start_time="2026-03-05T15:00:00Z"),
                    traits_at="2026-03-03T00:00:00Z")
    state = evaluate_account(account, playbook, us(NOW))
    assert (state.day0, state.kickoff_source) == ("2026-03-09", "trait")
    earlier = facts({**MID, "kickoff_at": "2026-03-09T09:00:00Z"},
                    event("Kickoff Scheduled", "2026-03-04T10:00:00Z",
                          start_time="2026-03-05T15:00:00Z"),
                    traits_at="2026-03-03T00:00:00Z")
    assert evaluate_account(earlier, playbook, us(NOW)).day0 == "2026-03-05"


def test_a_kickoff_meeting_without_offset_is_read_in_the_accounts_timezone(playbook):
    account = facts({**MID, "timezone": "Asia/Tokyo"},
                    event("Kickoff Scheduled", "2026-03-01T10:00:00Z",
                          start_time="2026-03-05T08:00:00"))
    assert evaluate_account(account, playbook, us(NOW)).kickoff_at == "2026-03-05T08:00:00+09:00"


def test_ttv_counts_local_days_from_contract_to_first_value_and_phases_split_it(playbook):
    account = facts(MID,
                    event("Deal Closed Won", "2026-03-01T10:00:00Z", deal_id="d1"),
                    event("Kickoff Completed", "2026-03-04T10:00:00Z"),
                    event("Workspace Created", "2026-03-05T10:00:00Z"),
                    event("Integration Connected", "2026-03-05T11:00:00Z"),
                    event("User Invited", "2026-03-06T10:00:00Z"),
                    event("Workflow Run", "2026-03-10T10:00:00Z"),
                    event("Value Delivered", "2026-03-20T10:00:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    assert state.ttv_days == 19
    assert (state.ttv_target_days, state.ttv_on_time) == (30, True)
    assert [(p.from_, p.to, p.days) for p in state.phases] == [
        ("contract_signed", "kickoff", 3), ("kickoff", "account_configured", 2),
        ("account_configured", "first_workflow", 4), ("first_workflow", "first_value", 10)]
    assert sum(p.days for p in state.phases) == state.ttv_days


def test_a_checkpoint_reached_before_the_previous_one_is_a_zero_day_phase_marked(playbook):
    account = facts(MID, event("Deal Closed Won", "2026-03-01T10:00:00Z", deal_id="d1"),
                    event("Workflow Run", "2026-02-20T10:00:00Z"),
                    event("Kickoff Completed", "2026-03-04T10:00:00Z"),
                    event("Value Delivered", "2026-03-06T10:00:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    workflow_to_value = next(p for p in state.phases if p.to == "first_value")
    assert (workflow_to_value.days, workflow_to_value.out_of_order) == (14, False)
    unknown = next(p for p in state.phases if p.to == "account_configured")
    assert unknown.days is None


def test_the_same_deal_sent_again_does_not_start_a_new_run(playbook):
    account = facts(MID, event("Deal Closed Won", "2026-03-01T10:00:00Z", deal_id="d1"),
                    event("Deal Closed Won", "2026-03-09T10:00:00Z", deal_id="d1"),
                    event("Deal Closed Won", "2026-03-10T10:00:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    assert state.run["number"] == 1
    assert state.contract_signed_at == "2026-03-01T10:00:00+00:00"


@pytest.mark.parametrize("restart", [
    ("Deal Closed Won", {"deal_id": "d2"}),
    ("Onboarding Restarted", {}),
])
def test_a_new_deal_or_an_explicit_restart_starts_a_new_run_with_fresh_milestones(
        playbook, restart):
    name, properties = restart
    account = facts(MID, event("Deal Closed Won", "2026-01-01T10:00:00Z", deal_id="d1"),
                    event("Kickoff Completed", "2026-01-03T10:00:00Z"),
                    event("Workflow Run", "2026-01-10T10:00:00Z"),
                    event(name, "2026-03-01T10:00:00Z", **properties),
                    event("Kickoff Completed", "2026-03-03T10:00:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    assert state.run["number"] == 2
    assert state.day0 == "2026-03-03"
    assert milestone(state, "first_workflow").status == "open"


def test_the_contract_trait_is_used_when_no_deal_event_came(playbook):
    account = facts({**MID, "contract_signed_at": "2026-03-01"},
                    event("Kickoff Completed", "2026-03-04T10:00:00Z"))
    state = evaluate_account(account, playbook, us(NOW))
    assert state.run["source"] == "trait"
    assert state.contract_signed_at == "2026-03-01T00:00:00+00:00"


def test_the_track_follows_the_segment_and_unknown_segments_get_the_default_track(playbook):
    assert evaluate_account(facts({"segment": "enterprise"}), playbook, us(NOW)).track == \
        "enterprise"
    assert evaluate_account(facts({}), playbook, us(NOW)).track == "mid_market"


def test_a_run_is_completed_when_every_milestone_is_done_and_ended_after_its_end_day(playbook):
    kickoff = event("Kickoff Completed", "2026-01-01T10:00:00Z")
    state = evaluate_account(facts(MID, event("Deal Closed Won", "2025-12-30T10:00:00Z"),
                                   kickoff), playbook, us("2026-04-05T12:00:00Z"))
    assert state.day == 94
    assert state.run["status"] == "ended"
    assert state.next_wake_at is None  # a finished run no longer wakes every day


def test_an_active_run_wakes_at_the_next_local_midnight(playbook):
    account = facts({**MID, "timezone": "Asia/Tokyo"},
                    event("Deal Closed Won", "2026-03-01T10:00:00Z"),
                    event("Kickoff Completed", "2026-03-02T10:00:00Z"))
    state = evaluate_account(account, playbook, us("2026-03-05T12:00:00Z"))
    assert state.next_wake_at == us("2026-03-06T00:00:00+09:00")


def test_the_state_records_the_playbook_version(playbook):
    state = evaluate_account(facts(MID), playbook, us(NOW))
    assert state.playbook_version == playbook.version
    assert state.as_json()["playbook_version"].startswith("default@")


def test_a_first_deal_without_id_and_the_same_deal_with_its_id_are_one_run(playbook):
    account = facts(MID, event("Deal Closed Won", "2026-03-01T10:00:00Z"),
                    event("Deal Closed Won", "2026-03-02T10:00:00Z", deal_id="d1"),
                    event("Deal Closed Won", "2026-03-20T10:00:00Z", deal_id="d2"))
    state = evaluate_account(account, playbook, us("2026-03-10T00:00:00Z"))
    assert state.run["number"] == 1
    assert evaluate_account(account, playbook, us(NOW)).run["number"] == 2


def test_a_contract_dated_ahead_wakes_the_account_when_it_starts(playbook):
    account = facts({**MID, "contract_signed_at": "2026-05-01T08:00:00Z"})
    state = evaluate_account(account, playbook, us(NOW))
    assert state.run is None
    assert state.next_wake_at == us("2026-05-01T08:00:00Z")


def test_the_next_scheduled_rule_is_never_one_its_unless_has_already_ruled_out(playbook):
    # First workflow done on day 2: the day-10 template recommendation and the day-30
    # re-engagement (both `unless: first_workflow`) will never act, so neither is what comes
    # next, and the account does not wake for them (found by a new user: the account page
    # named the re-engagement as next).
    account = facts(MID, event("Deal Closed Won", "2026-03-01T10:00:00Z"),
                    event("Kickoff Completed", "2026-03-02T10:00:00Z"),
                    event("Workflow Run", "2026-03-04T10:00:00Z"))
    state = evaluate_account(account, playbook, us("2026-03-08T12:00:00Z"))
    assert milestone(state, "first_workflow").status == "done"
    ruled_out = {"template_recommendation", "re_engagement"}
    assert state.next_scheduled is None or state.next_scheduled["rule"] not in ruled_out
    assert state.next_wake_at is not None  # midnight: the run is active
