"""The funnel, stall rates, retention and expansion on small hand-built sets of runs."""

from __future__ import annotations

import math

import pytest

from firstvalue.metrics.cohorts import (
    activation,
    retention_by_activation,
    retention_by_cohort,
    retention_window,
)
from firstvalue.metrics.expansion import (
    expansion_by_activation,
    expansion_by_ttv_quartile,
    ttv_expansion_correlation,
)
from firstvalue.metrics.funnel import drilldown, funnel
from firstvalue.metrics.stall_rates import stall_rates
from tests.metrics_helpers import KEYS, at, run

# Day 0 is 2026-03-01 for every run; read on 2026-03-31 (day 30). Mid-market targets:
# account_configured 3, data_connected 7, first_workflow 14, first_value 21, second_user 30.
TARGETS3 = {"a": 3, "b": 7, "c": 14}
ABC = ("a", "b", "c")


def funnel_runs():
    """Three milestones a (target 3), b (target 7), c (target 14); read on day 30, or day 5.

    r1: a day 2, b day 5, c day 20             (all reached; a, b on time, c late)
    r2: a day 4, c day 10 (b never)            (c reached out of order)
    r3: nothing                                (all targets past: open everywhere)
    r4: read on day 5: a day 1                 (b, c targets still ahead: not eligible)
    r5: b day 6, a day 8                       (a after b: out of order)
    """
    return [
        run("r1", targets=TARGETS3, done={"a": "2026-03-03", "b": "2026-03-06",
                                          "c": "2026-03-21"}),
        run("r2", targets=TARGETS3, done={"a": "2026-03-05", "c": "2026-03-11"}),
        run("r3", targets=TARGETS3),
        run("r4", targets=TARGETS3, now="2026-03-06T12:00:00+00:00",
            done={"a": "2026-03-02"}),
        run("r5", targets=TARGETS3, done={"b": "2026-03-07", "a": "2026-03-09"}),
    ]


def test_the_funnel_counts_only_eligible_runs_in_any_order():
    rows = {r["key"]: r for r in funnel(funnel_runs(), ABC, "any")}
    # a: eligible r1..r5 (all reached a or day 5 > 3 for r4... r4 reached it): 5;
    #    reached r1, r2, r4, r5 = 4; on time (day <= 3): r1 (2), r4 (1) = 2; open r3 = 1.
    assert [rows["a"][k] for k in ("eligible", "reached", "on_time", "open")] == [5, 4, 2, 1]
    # b: r4's target day 7 is ahead on day 5: not eligible. Eligible r1, r2, r3, r5 = 4;
    #    reached r1, r5 = 2; on time r1 (5), r5 (6) = 2; open r2, r3 = 2.
    assert [rows["b"][k] for k in ("eligible", "reached", "on_time", "open")] == [4, 2, 2, 2]
    # conversion a -> b: reached a and eligible for b: r1, r2, r5 -> reached b: r1, r5 = 2/3.
    assert rows["b"]["from_previous"] == {"reached_previous_and_eligible": 3, "reached": 2}
    assert rows["b"]["conversion"] == pytest.approx(0.6667)
    # c: eligible r1, r2, r3, r5 (r4 not); reached r1, r2 = 2; on time r2 (10) = 1; open 2.
    assert [rows["c"][k] for k in ("eligible", "reached", "on_time", "open")] == [4, 2, 1, 2]


def test_the_strict_funnel_counts_a_milestone_only_after_the_earlier_ones_in_order():
    rows = {r["key"]: r for r in funnel(funnel_runs(), ABC, "strict")}
    # a: as in any order (nothing comes before it): reached 4.
    # b: r1 (a day 2 <= b day 5) counts; r5 (b day 6 before a day 8) does not: reached 1,
    #    eligible r1, r2, r3, r5 (targets past) = 4, open 3.
    assert [rows["b"][k] for k in ("eligible", "reached", "open")] == [4, 1, 3]
    # c: only r1 reached a, b and c in order; r2 skipped b.
    assert [rows["c"][k] for k in ("eligible", "reached", "open")] == [4, 1, 3]


@pytest.mark.parametrize("mode", ["any", "strict"])
def test_the_drill_down_lists_are_the_very_runs_behind_each_count(mode):
    runs = funnel_runs()
    for row in funnel(runs, ABC, mode):
        for status in ("eligible", "reached", "on_time", "open"):
            ids = drilldown(runs, ABC, row["key"], status, mode)
            assert len(ids) == row[status], (row["key"], status)
    assert drilldown(runs, ABC, "b", "open", "any") == ["r2", "r3"]
    assert drilldown(runs, ABC, "b", "open", "strict") == ["r2", "r3", "r5"]


def test_stall_rate_per_milestone_attributes_each_stall_to_the_milestone_being_worked_on():
    runs = [
        run("s1", targets=TARGETS3, done={"a": "2026-03-03", "b": "2026-03-06"}),
        run("s2", targets=TARGETS3, done={"a": "2026-03-02"}),
        run("s3", targets=TARGETS3),
        run("s4", targets=TARGETS3, done={"a": "2026-03-02", "b": "2026-03-03",
                                          "c": "2026-03-04"}),
    ]
    stalls = [
        ("s1", 1, "inactivity", None, at("2026-03-02")),   # a not done yet -> on a
        ("s1", 1, "inactivity", None, at("2026-03-10")),   # a, b done -> on c
        ("s2", 1, "overdue", "b", at("2026-03-12")),       # names b
        ("s2", 1, "champion_silent", None, at("2026-03-15")),  # a done, b not -> on b again
        ("s3", 1, "inactivity", None, at("2026-03-06")),   # on a
        ("s9", 1, "inactivity", None, at("2026-03-06")),   # no such run: ignored
        ("s4", 2, "inactivity", None, at("2026-03-06")),   # another run: ignored
    ]
    result = stall_rates(runs, ABC, stalls)
    rows = {r["key"]: r for r in result["milestones"]}
    # Worked on a: all four (day 0 is before now). Stalled on a: s1, s3 -> 2/4.
    assert (rows["a"]["worked_on"], rows["a"]["stalled"], rows["a"]["stall_rate"]) == (4, 2, 0.5)
    # Worked on b: s1, s2, s4 (a done, b not done before); s3 never finished a. Stalled: s2
    # (twice, counted once) -> 1/3.
    assert (rows["b"]["worked_on"], rows["b"]["stalled"]) == (3, 1)
    assert rows["b"]["by_kind"] == {"overdue": 1}
    # Worked on c: s1 and s4. Stalled: s1 -> 1/2.
    assert (rows["c"]["worked_on"], rows["c"]["stalled"], rows["c"]["stall_rate"]) == (2, 1, 0.5)
    assert result["most_stalled"] == "a"


def retention_runs():
    """Read on 2026-07-15. Day 0 in March (day 89 ended long ago) or late June (not yet).

    m1: March, active in days 60-89, not churned           -> retained
    m2: March, active, churned on day 70                    -> not retained
    m3: March, not active in the window                     -> not retained
    m4: March, active, churned on day 100 (after day 89)    -> retained
    j1: June 20 (day 25 on the reading date)                -> pending: cohort incomplete
    """
    now = "2026-07-15T12:00:00+00:00"
    every = {k: "2026-03-20" for k in KEYS}
    return [
        run("m1", day0="2026-03-01", signed="2026-02-27", now=now, done=every),
        run("m2", day0="2026-03-01", signed="2026-02-27", now=now, churned="2026-05-10"),
        run("m3", day0="2026-03-02", signed="2026-02-27", now=now, done=every),
        run("m4", day0="2026-03-01", signed="2026-02-27", now=now, churned="2026-06-09"),
        run("j1", day0="2026-06-20", signed="2026-06-18", now=now),
    ]


def test_retention_by_cohort_is_measured_on_days_60_to_89_and_young_cohorts_are_incomplete():
    runs = retention_runs()
    windows = {w[0]: w for w in (retention_window(r) for r in runs) if w}
    # The window of m1 is [2026-04-30, 2026-05-30): day 60 to the end of day 89.
    assert windows["m1"][1:] == (at("2026-04-30T00:00:00+00:00"), at("2026-05-30T00:00:00+00:00"))
    assert "j1" not in windows
    active = {"m1", "m2", "m4"}
    rows = {r["cohort"]: r for r in retention_by_cohort(runs, active)}
    # March: m1 and m4 retained (m4 churned after day 89), m2 churned on day 70, m3 inactive.
    assert rows["2026-03"] == {"cohort": "2026-03", "accounts": 4, "measured": 4, "pending": 0,
                               "retained": 2, "complete": True, "retention_rate": 0.5}
    # June: not a zero, an incomplete cohort.
    assert rows["2026-06"]["complete"] is False
    assert rows["2026-06"]["retention_rate"] is None and rows["2026-06"]["pending"] == 1


def test_retention_by_activation_splits_on_every_milestone_done_by_day_90():
    runs = retention_runs()
    assert [activation(r, KEYS) for r in runs] == [
        "activated", "not_activated", "activated", "not_activated", None]
    rows = {r["activation"]: r for r in retention_by_activation(runs, {"m1", "m2", "m4"}, KEYS)}
    # Activated: m1 (retained), m3 (inactive) -> 1/2. Not activated: m2 (churned), m4
    # (retained) -> 1/2. j1 can still go either way: in neither.
    assert (rows["activated"]["measured"], rows["activated"]["retained"]) == (2, 1)
    assert (rows["not_activated"]["measured"], rows["not_activated"]["retained"]) == (2, 1)


def expansion_runs():
    """Eight runs with value on days 1, 2, 2, 3, 5, 8, 13, 21 after signing, and two without.

    Quartiles of the eight observed TTVs (ranks 0-1, 2-3, 4-5, 6-7; ties stay together in the
    lower quartile): Q1 = days 1, 2, 2 (the tie at rank 2 joins rank 1); Q2 = 3; Q3 = 5, 8;
    Q4 = 13, 21.
    """
    days = [1, 2, 2, 3, 5, 8, 13, 21]
    amounts = [10_000, 0, 5_000, 0, 2_000, 0, 0, 1_000]
    runs = [run(f"e{i}", done={"first_value": f"2026-03-{1 + d:02d}"}, expansion=amount,
                expansions=1 if amount else 0)
            for i, (d, amount) in enumerate(zip(days, amounts, strict=True))]
    runs += [run("n1", expansion=3_000, expansions=1), run("n2")]
    return runs


def test_expansion_by_ttv_quartile_keeps_censored_runs_apart():
    rows = {r["quartile"]: r for r in expansion_by_ttv_quartile(expansion_runs(), "first_value")}
    assert (rows["Q1"]["ttv_days"], rows["Q1"]["accounts"], rows["Q1"]["expanded"]) == (
        [1, 2], 3, 2)
    assert rows["Q1"]["expansion_amount"] == 15_000
    assert (rows["Q2"]["ttv_days"], rows["Q2"]["accounts"]) == ([3, 3], 1)
    assert (rows["Q3"]["ttv_days"], rows["Q3"]["expanded"], rows["Q3"]["expansion_rate"]) == (
        [5, 8], 1, 0.5)
    assert (rows["Q4"]["accounts"], rows["Q4"]["expansion_amount"]) == (2, 1_000)
    assert (rows["value_not_reached"]["accounts"], rows["value_not_reached"]["expanded"]) == (
        2, 1)


def test_expansion_by_activation_counts_rate_and_amount():
    now = "2026-07-15T12:00:00+00:00"
    every = {k: "2026-03-20" for k in KEYS}
    runs = [run("x1", now=now, done=every, expansion=4_000, expansions=2),
            run("x2", now=now, done=every),
            run("x3", now=now, expansion=1_000, expansions=1),
            run("x4", day0="2026-07-01", signed="2026-06-30", now=now)]
    rows = {r["activation"]: r for r in expansion_by_activation(runs, KEYS)}
    assert (rows["activated"]["expanded"], rows["activated"]["expansion_rate"],
            rows["activated"]["expansion_amount"]) == (1, 0.5, 4_000)
    assert (rows["not_activated"]["accounts"], rows["not_activated"]["expanded"]) == (1, 1)
    assert rows["not_known_yet"]["accounts"] == 1


def test_the_correlation_says_not_enough_data_below_the_minimum():
    result = ttv_expansion_correlation(expansion_runs(), "first_value")
    assert (result["enough_data"], result["rho"], result["observed"],
            result["censored_left_out"]) == (False, None, 8, 2)


def test_spearman_correlation_and_its_interval_match_the_hand_working():
    # Ten runs with TTV 1..10 days; the amounts' ranks swap in pairs: 2 1 4 3 6 5 8 7 10 9.
    amounts = [200, 100, 400, 300, 600, 500, 800, 700, 1000, 900]
    runs = [run(f"c{d}", done={"first_value": f"2026-03-{1 + d:02d}"}, expansion=amount,
                expansions=1) for d, amount in zip(range(1, 11), amounts, strict=True)]
    runs.append(run("censored"))
    result = ttv_expansion_correlation(runs, "first_value")
    # rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 10 / (10 * 99) = 0.939394.
    assert result["rho"] == pytest.approx(0.9394, abs=1e-4)
    # Fisher z: atanh(0.939394) = 1.732868; Bonett-Wright SE = sqrt((1 + rho^2 / 2) / 7)
    # = 0.453751; 1.959964 * SE = 0.889336; tanh(1.732868 -+ 0.889336) = 0.6876, 0.9895.
    rho = 1 - 60 / 990
    half = 1.959964 * math.sqrt((1 + rho * rho / 2) / 7)
    assert result["ci"] == pytest.approx([math.tanh(math.atanh(rho) - half),
                                          math.tanh(math.atanh(rho) + half)], abs=1e-4)
    assert result["ci"] == pytest.approx([0.6876, 0.9895], abs=1e-3)
    assert (result["observed"], result["censored_left_out"]) == (10, 1)


def test_retention_and_expansion_are_read_from_the_store(database, playbook):
    from firstvalue.ingest.service import ingest_messages
    from firstvalue.metrics.analytics import build_analytics
    from firstvalue.runtime.evaluation import tick
    from tests.conftest import micros
    from tests.test_metrics_survival import account_messages, track

    # Given three mid-market accounts signed 2026-03-01, kicked off 03-03 (day 0) in UTC, so
    # that days 60 to 89 are 2026-05-02 to 2026-05-31, read on 2026-06-15:
    messages = []
    for account in ("active", "quiet", "churned"):
        messages += account_messages(account)
    messages += [
        # active: a login on day 75, and two expansions (one after --now: not counted);
        track("a-login", "Signed In", "2026-05-17T10:00:00Z", "active"),
        track("a-exp1", "Expansion Closed", "2026-04-01T10:00:00Z", "active", amount=12000),
        track("a-exp2", "Expansion Closed", "2026-06-20T10:00:00Z", "active", amount=5000),
        # quiet: its last login on day 59, the day before the window;
        track("q-login", "Signed In", "2026-05-01T10:00:00Z", "quiet"),
        # churned: active on day 61, churned on day 80.
        track("c-login", "Signed In", "2026-05-03T10:00:00Z", "churned"),
        track("c-churn", "Account Churned", "2026-05-22T10:00:00Z", "churned"),
    ]
    ingest_messages(database, messages, micros("2026-06-30T00:00:00Z"), playbook.anchor_names)
    tick(database, playbook, micros("2026-06-30T00:00:00Z"))

    report = build_analytics(database, playbook, micros("2026-06-15T12:00:00Z"))

    # then only `active` is retained: 1 of 3 in the complete March cohort,
    (march,) = report["retention"]["by_cohort"]
    assert (march["cohort"], march["measured"], march["retained"], march["retention_rate"]) == (
        "2026-03", 3, 1, round(1 / 3, 4))
    # and one account of three expanded, by 12,000 (the June 20 expansion is after --now).
    rows = {r["activation"]: r for r in report["expansion"]["by_activation"]}
    assert rows["not_activated"]["accounts"] == 3
    assert (rows["not_activated"]["expanded"], rows["not_activated"]["expansion_amount"]) == (
        1, 12000)


def test_the_stall_history_leaves_out_retracted_stalls_and_those_opened_after_now(database):
    import sqlalchemy as sa

    from firstvalue.metrics.stall_rates import load_stalls

    rows = [("kept", "open", at("2026-03-05")), ("wrong", "retracted", at("2026-03-05")),
            ("later", "open", at("2026-03-25")), ("closed", "closed", at("2026-03-06"))]
    with database.write() as conn:
        for identity, status, opened in rows:
            conn.execute(sa.text(
                "INSERT INTO stalls (account_id, run, identity, rule, kind, milestone, "
                "diagnosis, opened_at, status, recorded_at) VALUES ('acme', 1, :i, "
                "'inactivity', 'inactivity', NULL, 'unknown', :o, :s, :o)"),
                {"i": identity, "o": opened, "s": status})
    found = load_stalls(database, at("2026-03-20"))
    assert sorted(opened for *_, opened in found) == [at("2026-03-05"), at("2026-03-06")]
    assert {kind for _, _, kind, _, _ in found} == {"inactivity"}
