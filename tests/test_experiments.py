"""Experiments: declared in the playbook, assigned once in balanced blocks, recorded, applied
by the engine, and read out with their tests."""

from __future__ import annotations

from collections import Counter

import pytest
import sqlalchemy as sa

from firstvalue.errors import PlaybookError
from firstvalue.ingest.service import ingest_messages
from firstvalue.metrics.experiments import readout
from firstvalue.playbook.loader import parse_playbook, read_default_text
from firstvalue.playbook.model import Experiment
from firstvalue.runtime.evaluation import evaluate_accounts, tick
from firstvalue.runtime.experiments import variant_at
from tests.conftest import HANDOFF, encode, micros
from tests.metrics_helpers import KEYS, run

TWO_ARMS = Experiment.model_validate({"key": "x", "seed": 11, "block_size": 4, "variants": [
    {"key": "control"}, {"key": "treatment"}]})


def test_permuted_blocks_hold_every_variant_equally_often_within_a_tier():
    for stratum in ("1", "2", "3"):
        sequence = [variant_at(TWO_ARMS, stratum, position) for position in range(40)]
        for start in range(0, 40, 4):
            assert Counter(sequence[start:start + 4]) == {"control": 2, "treatment": 2}


def test_the_assignment_is_reproducible_from_the_seed_and_depends_on_it():
    first = [variant_at(TWO_ARMS, "1", p) for p in range(40)]
    again = [variant_at(TWO_ARMS, "1", p) for p in range(40)]
    other = TWO_ARMS.model_copy(update={"seed": 12})
    assert first == again
    assert first != [variant_at(other, "1", p) for p in range(40)]


def messages(account: str) -> list[bytes]:
    traits = {"segment": "mid_market", "tier": 2, "timezone": "UTC", "handoff": HANDOFF,
              "use_case": "pipeline_visibility"}
    common = {"userId": f"{account}-u1", "context": {"groupId": account}}
    return [
        encode({"type": "group", "messageId": f"{account}-g", "userId": f"{account}-u1",
                "groupId": account, "timestamp": "2026-02-28T08:00:00Z", "traits": traits}),
        encode({"type": "track", "messageId": f"{account}-d", "event": "Deal Closed Won",
                "timestamp": "2026-03-01T09:00:00Z", "properties": {"deal_id": account},
                **common}),
        encode({"type": "track", "messageId": f"{account}-k", "event": "Kickoff Completed",
                "timestamp": "2026-03-03T08:00:00Z", "properties": {}, **common}),
    ]


def test_a_tick_assigns_each_account_once_records_it_and_applies_its_variant(database,
                                                                              playbook):
    # Given eight pipeline-visibility accounts of tier 2 (the default playbook's experiment
    # early_crm_tutorial takes them), kicked off on 2026-03-03 in UTC:
    accounts = [f"acct-{n}" for n in range(8)]
    batch = [m for a in accounts for m in messages(a)]
    ingest_messages(database, batch, micros("2026-03-03T10:00:00Z"), playbook.anchor_names)

    # when two ticks run, one before and one after local day 1:
    tick(database, playbook, micros("2026-03-03T10:00:00Z"))
    tick(database, playbook, micros("2026-03-05T10:00:00Z"))

    # then each account is assigned once, four to each variant (two blocks of four),
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT account_id, variant, stratum, position FROM experiment_assignments "
            "ORDER BY position")).all()
        tutorials = dict(conn.execute(sa.text(
            "SELECT account_id, due_at FROM actions WHERE rule = 'integration_tutorial'")).all())
    assert [r.account_id for r in rows] == accounts  # entered in account id order
    assert Counter(r.variant for r in rows) == {"control": 4, "day_1": 4}
    assert {r.stratum for r in rows} == {"2"}
    # and the day_1 variant's tutorial is due on day 1 at 09:00, the control's on day 3.
    variants = {r.account_id: r.variant for r in rows}
    expected = {"day_1": micros("2026-03-04T09:00:00Z"), "control": micros("2026-03-06T09:00:00Z")}
    for account, variant in variants.items():
        if variant == "day_1":
            assert tutorials[account] == expected["day_1"]
        else:
            assert account not in tutorials  # day 3 has not come by 03-05
    # The read path shows the recorded variant's state, and never assigns again.
    states = {s.id: s for s in evaluate_accounts(database, playbook,
                                                  micros("2026-03-07T10:00:00Z"))}
    planned = {s.id: {p.rule: p for p in s.planned} for s in states.values()}
    for account, variant in variants.items():
        due = planned[account]["integration_tutorial"].due_at
        assert due == expected[variant]
    with database.engine.connect() as conn:
        count = conn.execute(sa.text("SELECT COUNT(*) FROM experiment_assignments")).scalar()
    assert count == 8
    # The report as of 03-07 reads eight runs in the experiment; as of 03-02, before the tick
    # that assigned them, none: nothing later than --now is used.
    from firstvalue.metrics.runs import load_runs

    later = load_runs(database, playbook, micros("2026-03-07T10:00:00Z"))
    earlier = load_runs(database, playbook, micros("2026-03-02T10:00:00Z"))
    assert Counter(r.variants.get("early_crm_tutorial") for r in later) == {
        "control": 4, "day_1": 4}
    assert [r.variants for r in earlier] == [{}] * 8
    assert {r.use_case for r in later} == {"pipeline_visibility"}  # what --by use_case reads


def bad(text: str) -> list[dict]:
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(text, "bad.yaml")
    return [p.as_dict() for p in caught.value.problems]


EXPERIMENTS = """
experiments:
  - key: one
    seed: 1
    block_size: 3
    milestone: first_valu
    variants:
      - key: control
      - key: quick
        rules:
          - key: integration_tutorial
            at: {day: 1}
            actions: [{kind: email, to: champion, template: no_such_template}]
  - key: two
    seed: 2
    variants:
      - key: control
      - key: other
        rules:
          - key: integration_tutorial
            at: {day: 2}
            actions: [{kind: email, to: champion, template: integration_tutorial}]
"""


def test_a_bad_experiment_declaration_is_reported_with_its_place_and_fix():
    # The default playbook with its experiments replaced by two bad ones.
    text = read_default_text()
    start, end = text.index("\nexperiments:\n"), text.index("\n# Stalls:")
    problems = {p["location"]: p for p in bad(text[:start] + EXPERIMENTS + text[end:])}
    assert len(problems) == 4
    assert "multiple of 2" in problems["experiments[0].block_size"]["fix"]
    assert "unknown milestone 'first_valu'" in problems["experiments[0].milestone"]["message"]
    template = problems["experiments[0].variants[1].rules[0].actions[0].template"]
    assert "unknown template 'no_such_template'" in template["message"]
    clash = problems["experiments[1].variants[1].rules[0].key"]
    assert "overridden by experiment 'one' too" in clash["message"]


def test_the_readout_gives_fisher_p_and_the_minimum_detectable_effect_by_hand():
    # Control: 1 of 4 eligible runs reached first value (target day 21 long past on day 30);
    # treatment: 4 of 4.
    def arm(name, variant, reached):
        done = {"first_value": "2026-03-10"} if reached else {}
        return run(name, done=done, variants={"x": variant})

    runs = [arm("c1", "control", True)] + [arm(f"c{i}", "control", False) for i in (2, 3, 4)]
    runs += [arm(f"t{i}", "treatment", True) for i in range(4)]
    result = readout(TWO_ARMS, runs, KEYS, "first_value")
    control, treatment = result["variants"]
    assert (control["completion"], treatment["completion"]) == (
        {"eligible": 4, "reached": 1, "rate": 0.25}, {"eligible": 4, "reached": 4, "rate": 1.0})
    versus = treatment["versus_control"]
    # Fisher, two-sided: 5 reached of 8, 4 in the treatment. P(k reached in treatment) =
    # C(5,k) C(3,4-k) / C(8,4): k=1: 5/70, k=2: 30/70, k=3: 30/70, k=4: 5/70. As or less
    # likely than the observed k=4: k=1 and k=4 -> 10/70 = 0.142857.
    assert versus["completion_fisher_p"] == pytest.approx(10 / 70, abs=1e-6)
    # MDE: (1.959964 + 0.841621) * sqrt(0.625 * 0.375 * (1/4 + 1/4)) = 2.801585 * 0.342327.
    assert versus["completion_mde"] == pytest.approx(0.9591, abs=1e-4)
    assert versus["completion_difference"] == 0.75
    # Every treatment run reached value on day 9, the control's one too and three censored at
    # day 30: the log-rank test sees a difference.
    assert result["ttv_logrank_p"] is not None and result["ttv_logrank_p"] < 0.05


def test_the_dispatcher_renders_a_variant_template_for_the_accounts_in_that_variant(
        sqlite_database, playbook):
    from firstvalue.actions.dispatch import Dispatcher, sandbox_channels

    # Given the same eight accounts, none connecting data, ticked up to day 5:
    batch = [m for n in range(8) for m in messages(f"acct-{n}")]
    ingest_messages(sqlite_database, batch, micros("2026-03-03T10:00:00Z"),
                    playbook.anchor_names)
    sent: list = []
    dispatcher = Dispatcher(sqlite_database, playbook, sandbox_channels(sent), lambda: True)
    for moment in ("2026-03-03T10:00:00Z", "2026-03-06T10:00:00Z", "2026-03-08T10:00:00Z"):
        tick(sqlite_database, playbook, micros(moment))
        dispatcher.run_once(micros(moment))
    with sqlite_database.engine.connect() as conn:
        variants = dict(conn.execute(sa.text(
            "SELECT account_id, variant FROM experiment_assignments")).all())

    # then the CSM alert of a day_1 account says day 1 (the variant's template), the
    # control's says day 3 (the playbook's).
    alerts = {o.key.split("/")[0]: o.body for o in sent if "csm_alert" in o.key}
    assert set(alerts) == set(variants)
    for account, body in alerts.items():
        expected = "went out on day 1" if variants[account] == "day_1" else "went out on day 3"
        assert expected in body, (account, variants[account], body)
