"""Time-to-value with censoring: the estimator's figures against values worked out by hand, and
what each kind of account feeds the estimator."""

from __future__ import annotations

import pytest

from firstvalue.ingest.service import ingest_messages
from firstvalue.metrics.phases import decomposition
from firstvalue.metrics.runs import load_runs
from firstvalue.metrics.survival import (
    Observation,
    kaplan_meier,
    survival_at,
    target_table,
    ttv_by,
    ttv_observation,
)
from firstvalue.runtime.evaluation import tick
from tests.conftest import encode, micros
from tests.metrics_helpers import run


def heavy_censoring_runs():
    """Six runs signed on 2026-03-01 (one on 03-25), read on 2026-03-31; three of them censored.

    a: value on 03-03            -> observed at 2
    b: churned on 03-04, no value -> censored at 3 (churn)
    c: value on 03-05            -> observed at 4
    d: signed 03-25, no value    -> censored at 6 (now)
    e: value on 03-11            -> observed at 10
    f: no value                  -> censored at 30 (now)
    """
    return [
        run("a", done={"first_value": "2026-03-03"}),
        run("b", churned="2026-03-04"),
        run("c", done={"first_value": "2026-03-05"}),
        run("d", signed="2026-03-25", day0="2026-03-25"),
        run("e", done={"first_value": "2026-03-11"}),
        run("f"),
    ]


def test_the_estimator_is_fed_days_and_censoring_as_worked_out_by_hand():
    observations = [ttv_observation(r, "first_value") for r in heavy_censoring_runs()]
    assert [(o.account_id, o.days, o.observed, o.censored_by) for o in observations] == [
        ("a", 2, True, None), ("b", 3, False, "churn"), ("c", 4, True, None),
        ("d", 6, False, "now"), ("e", 10, True, None), ("f", 30, False, "now")]


def test_kaplan_meier_median_and_quartiles_under_heavy_censoring_match_the_hand_working():
    summary = kaplan_meier([ttv_observation(r, "first_value") for r in heavy_censoring_runs()])
    # By hand (at risk n, reached d, S = product of (1 - d/n)):
    #   day 2:  n 6, d 1 -> S = 5/6         = 0.833333
    #   day 3:  b censored (no step)
    #   day 4:  n 4, d 1 -> S = 5/6 * 3/4   = 0.625
    #   day 6:  d censored (no step)
    #   day 10: n 2, d 1 -> S = 0.625 * 1/2 = 0.3125
    #   day 30: f censored
    # Median: first day with S <= 0.5 -> 10 (the naive median of the three reached is 4).
    # First quartile (S <= 0.75): 4. Third quartile (S <= 0.25): never reached.
    assert (summary["accounts"], summary["reached"], summary["censored"]) == (6, 3, 3)
    assert summary["median_days"] == 10
    assert (summary["q1_days"], summary["q3_days"]) == (4, None)
    curve = {p["day"]: p for p in summary["curve"]}
    assert curve[2]["survival"] == pytest.approx(5 / 6, abs=1e-6)
    assert curve[4]["survival"] == pytest.approx(0.625)
    assert curve[10]["survival"] == pytest.approx(0.3125)
    assert (curve[2]["at_risk"], curve[4]["at_risk"], curve[10]["at_risk"]) == (6, 4, 2)
    assert survival_at(summary, 9) == pytest.approx(0.625)


def test_a_median_the_curve_never_reaches_is_reported_as_not_reached():
    # One of four reaches value on day 5, the three others are censored on day 20:
    # S(5) = 3/4 and the curve stays there, so it never crosses one half.
    observations = [Observation("a", 5, True, None)] + [
        Observation(name, 20, False, "now") for name in "bcd"]
    summary = kaplan_meier(observations)
    assert summary["median_days"] is None and summary["median_reached"] is False
    assert summary["q1_days"] == 5  # S(5) = 0.75 <= 0.75
    assert summary["median_ci"][1] is None


def test_value_after_the_end_day_is_censored_at_the_end_day():
    # Day 0 on 03-01 with end day 10: value on 03-15 (day 14) is outside the run.
    late = run("late", done={"first_value": "2026-03-15"}, end_day=10)
    observation = ttv_observation(late, "first_value")
    assert (observation.days, observation.observed, observation.censored_by) == (
        10, False, "end_day")


def test_ttv_by_segment_keeps_censored_runs_in_the_denominator():
    rows = ttv_by(heavy_censoring_runs() + [run("s1", segment="smb")], "segment", "first_value")
    assert [(r["group"], r["accounts"], r["censored"]) for r in rows] == [
        ("smb", 1, 1), ("mid_market", 6, 3)]
    # mid-market share reached by the 30-day target: 1 - S(30) = 1 - 0.3125.
    assert rows[1]["reached_by_target"] == pytest.approx(0.6875)


def test_the_target_table_sets_the_median_beside_the_target_and_the_reference(playbook):
    rows = target_table(heavy_censoring_runs(), playbook.loaded.model.tracks, "first_value")
    mid = next(r for r in rows if r["track"] == "mid_market")
    assert (mid["median_days"], mid["ttv_target_days"], mid["on_target"]) == (10, 30, True)
    assert (mid["reference_target_days"], mid["reference_industry_average_days"]) == (
        "under 14", "30 to 45")
    smb = next(r for r in rows if r["track"] == "smb")
    assert (smb["product_type"], smb["accounts"], smb["median_days"]) == ("self_serve", 0, None)


def test_phases_take_each_median_and_its_share_and_name_the_bottleneck():
    # Kickoff (day 0) on 03-03 for runs signed 03-01, read on 03-31. Phases of the playbook:
    # contract -> kickoff (2 days for all three), kickoff -> configured, configured -> value.
    runs = [
        run("a", day0="2026-03-03", done={"account_configured": "2026-03-04",
                                          "first_value": "2026-03-14"}),
        run("b", day0="2026-03-03", done={"account_configured": "2026-03-05",
                                          "first_value": "2026-03-25"}),
        run("c", day0="2026-03-03", done={"account_configured": "2026-03-06"}),
    ]
    result = decomposition(runs, ["contract_signed", "kickoff", "account_configured",
                                  "first_value"])
    medians = {(p["from"], p["to"]): p["median_days"] for p in result["phases"]}
    # contract -> kickoff: 2, 2, 2 -> median 2.
    # kickoff -> configured: 1, 2, 3 -> S(1) = 2/3, S(2) = 1/3 -> median 2.
    # configured -> value: 10 (a), 20 (b), c censored at 25 (03-06 to 03-31):
    #   S(10) = 2/3, S(20) = 1/3 -> median 20.
    assert medians == {("contract_signed", "kickoff"): 2, ("kickoff", "account_configured"): 2,
                       ("account_configured", "first_value"): 20}
    shares = [p["share"] for p in result["phases"]]
    assert shares == [round(2 / 24, 4), round(2 / 24, 4), round(20 / 24, 4)]
    assert result["bottleneck"] == {"from": "account_configured", "to": "first_value"}


def test_a_track_without_kickoff_has_no_contract_to_kickoff_phase():
    selfserve = run("s", done={"account_configured": "2026-03-02"})
    selfserve = selfserve.__class__(**{**selfserve.__dict__, "has_kickoff": False})
    result = decomposition([selfserve], ["contract_signed", "kickoff", "account_configured"])
    assert [(p["from"], p["to"], p["median_days"]) for p in result["phases"]] == [
        ("contract_signed", "account_configured", 1)]


def track(message_id: str, name: str, ts: str, account: str, **props) -> bytes:
    return encode({"type": "track", "messageId": message_id, "userId": f"{account}-u1",
                   "event": name, "timestamp": ts, "properties": props,
                   "context": {"groupId": account}})


def account_messages(account: str) -> list[bytes]:
    return [
        encode({"type": "group", "messageId": f"{account}-g", "userId": f"{account}-u1",
                "groupId": account, "timestamp": "2026-02-28T08:00:00Z",
                "traits": {"segment": "mid_market", "tier": 2, "timezone": "UTC"}}),
        track(f"{account}-deal", "Deal Closed Won", "2026-03-01T09:00:00Z", account,
              deal_id=f"d-{account}"),
        track(f"{account}-kickoff", "Kickoff Completed", "2026-03-03T09:00:00Z", account),
    ]


def test_the_store_path_feeds_the_estimator_the_censoring_of_each_kind_of_account(
        database, playbook):
    # Given four mid-market accounts signed 2026-03-01 in UTC, and a tick on 03-30 that has
    # seen every event, when the report is read as of 03-20 12:00:
    messages = []
    for account in ("onboarding", "churned", "late_value", "reached"):
        messages += account_messages(account)
    messages += [
        track("c-churn", "Account Churned", "2026-03-10T10:00:00Z", "churned"),
        track("c-value", "Value Delivered", "2026-03-12T10:00:00Z", "churned"),
        track("l-value", "Value Delivered", "2026-03-25T10:00:00Z", "late_value"),
        track("r-value", "Value Delivered", "2026-03-15T10:00:00Z", "reached"),
    ]
    ingest_messages(database, messages, micros("2026-03-30T00:00:00Z"), playbook.anchor_names)
    tick(database, playbook, micros("2026-03-30T00:00:00Z"))

    runs = load_runs(database, playbook, micros("2026-03-20T12:00:00Z"))
    fed = {r.account_id: ttv_observation(r, "first_value") for r in runs}
    # still onboarding: 03-01 to 03-20 = 19 days, censored by now;
    # churned on 03-10 before its value on 03-12: 9 days, censored by the churn;
    # value on 03-25, after --now: not seen, censored by now at 19 days;
    # value on 03-15: reached after 14 days.
    assert {k: (o.days, o.observed, o.censored_by) for k, o in fed.items()} == {
        "onboarding": (19, False, "now"), "churned": (9, False, "churn"),
        "late_value": (19, False, "now"), "reached": (14, True, None)}


def test_a_contract_dated_ahead_of_the_last_tick_counts_once_its_time_has_come(
        sqlite_database, playbook):
    # Given an SMB account whose `contract_signed_at` trait is 03-05, ticked on 03-01 (no run
    # yet in the stored state), when the report is read on 03-10:
    group = encode({"type": "group", "messageId": "g", "userId": "u1", "groupId": "ahead",
                    "timestamp": "2026-03-01T08:00:00Z",
                    "traits": {"segment": "smb", "tier": 3, "timezone": "UTC",
                               "contract_signed_at": "2026-03-05T09:00:00Z"}})
    ingest_messages(sqlite_database, [group], micros("2026-03-01T09:00:00Z"),
                    playbook.anchor_names)
    tick(sqlite_database, playbook, micros("2026-03-01T09:00:00Z"))

    (record,) = load_runs(sqlite_database, playbook, micros("2026-03-10T12:00:00Z"))
    # then its run is there: 03-05 to 03-10, 5 days without value, censored by now.
    observation = ttv_observation(record, "first_value")
    assert (observation.days, observation.observed, observation.censored_by) == (5, False, "now")
    assert load_runs(sqlite_database, playbook, micros("2026-03-02T12:00:00Z")) == []
