"""The report as of a time other than the last tick's: the same runs, kickoffs and milestones
as a store ticked at that very time (cases found by trying to break the report)."""

from __future__ import annotations

import pytest

from firstvalue.ingest.service import ingest_messages
from firstvalue.metrics.runs import load_runs
from firstvalue.runtime.evaluation import tick
from tests.conftest import encode, fresh_postgres, micros


def group(account: str, at: str) -> dict:
    return {"type": "group", "groupId": account, "userId": f"u-{account}", "timestamp": at,
            "messageId": f"g-{account}",
            "traits": {"name": account, "segment": "mid_market", "tier": 2, "timezone": "UTC"}}


def track(account: str, mid: str, event: str, at: str, **properties) -> dict:
    return {"type": "track", "event": event, "userId": f"u-{account}", "timestamp": at,
            "properties": properties, "context": {"groupId": account}, "messageId": mid}


def runs_as_of(database, playbook, messages, arrived: str, ticked: str, asked: str):
    ingest_messages(database, [encode(m) for m in messages], micros(arrived),
                    playbook.anchor_names)
    tick(database, playbook, micros(ticked))
    return {r.account_id: (r.run, r.started_at, r.day0, dict(r.milestones))
            for r in load_runs(database, playbook, micros(asked))}


@pytest.fixture
def second_store():
    with fresh_postgres() as database:
        yield database


CASES = {
    # A second deal on 04-01: on 03-01 the first run, value on day 15, was current.
    "a later run": [
        group("r1", "2026-01-05T08:00:00Z"),
        track("r1", "m1", "Deal Closed Won", "2026-01-05T09:00:00Z", deal_id="d1"),
        track("r1", "m2", "Kickoff Completed", "2026-01-06T10:00:00Z"),
        track("r1", "m3", "Value Delivered", "2026-01-20T10:00:00Z"),
        track("r1", "m4", "Deal Closed Won", "2026-04-01T09:00:00Z", deal_id="d2")],
    # Booked for 03-03, completed on 03-05: on 03-04 the booking was the kickoff.
    "a later completed kickoff": [
        group("ks", "2026-03-01T08:00:00Z"),
        track("ks", "k1", "Deal Closed Won", "2026-03-01T09:00:00Z", deal_id="ks"),
        track("ks", "k2", "Kickoff Scheduled", "2026-03-01T10:00:00Z",
              start_time="2026-03-03T15:00:00Z"),
        track("ks", "k3", "Workspace Created", "2026-03-04T12:00:00Z"),
        track("ks", "k4", "Integration Connected", "2026-03-04T12:00:00Z"),
        track("ks", "k5", "User Invited", "2026-03-04T12:00:00Z"),
        track("ks", "k6", "Kickoff Completed", "2026-03-05T15:00:00Z")],
}
ASKED = {"a later run": "2026-03-01T12:00:00Z", "a later completed kickoff": "2026-03-04T20:00:00Z"}


@pytest.mark.parametrize("case", list(CASES))
def test_a_report_looking_back_sees_what_was_current_then(database, second_store, playbook,
                                                          case):
    asked = ASKED[case]
    late = runs_as_of(database, playbook, CASES[case], "2026-05-01T00:00:00Z",
                      "2026-05-01T12:00:00Z", asked)
    then = runs_as_of(second_store, playbook, CASES[case], "2026-05-01T00:00:00Z", asked, asked)
    assert late == then


def test_events_dated_after_the_tick_count_when_the_report_reaches_them(database, playbook):
    messages = [group("a7", "2026-03-31T08:00:00Z"),
                track("a7", "a1", "Deal Closed Won", "2026-03-31T09:00:00Z", deal_id="a7"),
                track("a7", "a2", "Kickoff Completed", "2026-04-01T10:00:00Z"),
                track("a7", "a3", "Value Delivered", "2026-06-10T11:00:00Z")]
    found = runs_as_of(database, playbook, messages, "2026-06-15T00:00:00Z",
                       "2026-06-01T12:00:00Z", "2026-06-15T00:00:00Z")
    # Imported on 06-15 with a tick at 06-01: the value of 06-10 is in the report of 06-15.
    assert "first_value" in found["a7"][3]
