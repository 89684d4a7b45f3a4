"""A change of segment mid-run (shared/DESIGN.md "Accounts, runs and anchors"): the run moves to
the new track and keeps its day 0, the old track's pending actions are cancelled with the
reason, nothing already sent is repeated, and reports can group by the segment at kickoff."""

from __future__ import annotations

import sqlalchemy as sa

from firstvalue.actions.dispatch import Dispatcher
from firstvalue.engine.compiled import compile_playbook
from firstvalue.ingest.service import ingest_messages
from firstvalue.metrics.runs import load_runs
from firstvalue.playbook.loader import parse_playbook
from firstvalue.runtime.evaluation import stored_states, tick
from tests.conftest import encode, micros
from tests.test_timing_rules import SANDBOX

PLAYBOOK = """name: moves
meanings:
  contract_signed: [Deal Closed Won]
  kickoff_completed: [Kickoff Completed]
  kickoff_scheduled: [Kickoff Scheduled]
  login: [Signed In]
  value_delivered: [Value Delivered]
milestones:
  - key: first_value
    when: {meaning: value_delivered}
tracks:
  - key: mid_market
    match: {segment: mid_market}
    targets: {first_value: 21}
    rules:
      - key: mid_market_check_in
        at: {day: 5}
        actions: [{kind: email, to: champion, template: note}]
  - key: enterprise
    match: {segment: enterprise}
    targets: {first_value: 45}
rules:
  - key: welcome
    on: {anchor: contract_signed}
    actions: [{kind: email, to: champion, template: note}]
templates:
  note: {subject: "Hello", body: "A note."}
"""


def message(mid: str, kind: str, when: str, **fields) -> bytes:
    return encode({"type": kind, "messageId": mid, "userId": "kim", "timestamp": when,
                   **fields})


def test_a_segment_change_on_day_5_moves_the_run_and_keeps_its_day_count(database):
    playbook = compile_playbook(parse_playbook(PLAYBOOK, "moves.yaml"))
    start = [
        message("i1", "identify", "2026-03-01T08:00:00Z",
                traits={"email": "kim@acme.example", "role": "champion"}),
        message("g1", "group", "2026-03-01T08:00:00Z", groupId="acme",
                traits={"segment": "mid_market", "timezone": "UTC"}),
        message("d1", "track", "2026-03-01T09:00:00Z", event="Deal Closed Won",
                context={"groupId": "acme"}),
        message("k1", "track", "2026-03-02T10:00:00Z", event="Kickoff Completed",
                context={"groupId": "acme"})]
    arrivals = ((start[:3], "2026-03-01T09:30:00Z"), (start[3:], "2026-03-02T11:00:00Z"))
    for batch, arrived in arrivals:
        ingest_messages(database, batch, micros(arrived), playbook.anchor_names)
        tick(database, playbook, micros(arrived))
        Dispatcher(database, playbook, SANDBOX).run_once(micros(arrived))

    # Day 5 (03-07), 09:00: the mid-market check-in comes due; it is not delivered yet.
    tick(database, playbook, micros("2026-03-07T09:30:00Z"))
    before = stored_states(database, ["acme"])["acme"]
    assert before["track"] == "mid_market" and before["day"] == 5

    # 10:00 on day 5: the CRM says the account is enterprise now.
    moved = message("g2", "group", "2026-03-07T10:00:00Z", groupId="acme",
                    traits={"segment": "enterprise"})
    ingest_messages(database, [moved], micros("2026-03-07T10:05:00Z"), playbook.anchor_names)
    tick(database, playbook, micros("2026-03-07T10:05:00Z"))
    Dispatcher(database, playbook, SANDBOX).run_once(micros("2026-03-07T10:05:00Z"))

    after = stored_states(database, ["acme"])["acme"]
    assert after["track"] == "enterprise"
    assert (after["day0"], after["day"]) == (before["day0"], 5)  # day 0 and the count stay
    assert [m["target_day"] for m in after["milestones"]] == [45]  # judged by the new track
    with database.engine.connect() as conn:
        rows = {r.rule: r for r in conn.execute(sa.text(
            "SELECT rule, status, reason FROM actions WHERE account_id = 'acme'")).all()}
        welcomes = conn.execute(sa.text(
            "SELECT COUNT(*) FROM actions WHERE rule = 'welcome'")).scalar()
    check_in = rows["mid_market_check_in"]
    assert check_in.status == "cancelled"
    assert "it is on the enterprise track now" in check_in.reason
    assert rows["welcome"].status == "sent" and welcomes == 1  # sent once, not again

    (record,) = load_runs(database, playbook, micros("2026-03-07T12:00:00Z"))
    assert (record.segment, record.segment_at_kickoff) == ("enterprise", "mid_market")
