"""Onboarding paths: the handoff's use case picks the milestone definitions and templates."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from firstvalue.actions.dispatch import Dispatcher
from firstvalue.engine.compiled import compile_playbook
from firstvalue.errors import PlaybookError
from firstvalue.ingest.service import ingest_messages
from firstvalue.playbook.loader import parse_playbook
from firstvalue.runtime.evaluation import stored_states, tick
from firstvalue.runtime.handoff import submit_handoff
from tests.conftest import HANDOFF, encode, micros
from tests.test_timing_rules import SANDBOX

PLAYBOOK = """name: paths
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
  - key: only
    kickoff: false
    targets: {first_value: 5}
rules:
  - key: welcome
    on: {anchor: contract_signed}
    actions: [{kind: email, to: champion, template: welcome}]
templates:
  welcome: {subject: "Welcome", body: "The general guide."}
paths:
  - key: enrichment
    use_case: [lead_enrichment]
    milestones:
      - {key: first_value, name: First enriched leads, when: {event: Leads Enriched}}
    templates:
      welcome: {subject: "Welcome", body: "Your first enriched leads, step by step."}
  - key: intelligence
    use_case: [competitive_intelligence]
    milestones:
      - {key: first_value, name: First battlecard, when: {event: Battlecard Viewed}}
    templates:
      welcome: {subject: "Welcome", body: "Your first battlecard, step by step."}
"""
NOW = micros("2026-03-02T12:00:00Z")


def messages(account: str) -> list[bytes]:
    def track(mid, event, when):
        return {"type": "track", "messageId": f"{account}-{mid}", "userId": f"{account}-kim",
                "event": event, "timestamp": when, "context": {"groupId": account}}

    return [encode(m) for m in (
        {"type": "identify", "messageId": f"{account}-i", "userId": f"{account}-kim",
         "timestamp": "2026-03-01T08:00:00Z",
         "traits": {"email": f"kim@{account}.example", "role": "champion"}},
        {"type": "group", "messageId": f"{account}-g", "userId": f"{account}-kim",
         "groupId": account, "timestamp": "2026-03-01T08:00:00Z",
         "traits": {"segment": "mid_market", "timezone": "UTC"}},
        track("d", "Deal Closed Won", "2026-03-02T09:00:00Z"),
        track("l", "Leads Enriched", "2026-03-02T10:00:00Z"),
        track("b", "Battlecard Viewed", "2026-03-02T11:00:00Z"))]


def test_two_use_cases_follow_their_own_paths_and_templates(database):
    playbook = compile_playbook(parse_playbook(PLAYBOOK, "paths.yaml"))
    ingest_messages(database, messages("acme") + messages("globex"), NOW, playbook.anchor_names)
    with database.write() as conn:
        for account, use_case in (("acme", "lead_enrichment"),
                                  ("globex", "competitive_intelligence")):
            submit_handoff(conn, playbook.loaded.model.handoff, account,
                           {**HANDOFF, "use_case": use_case}, NOW, "test")
    tick(database, playbook, NOW)
    Dispatcher(database, playbook, SANDBOX).run_once(NOW)

    states = stored_states(database, ["acme", "globex"])
    assert (states["acme"]["path"], states["globex"]["path"]) == ("enrichment", "intelligence")
    value = {k: s["milestones"][0] for k, s in states.items()}
    assert value["acme"]["name"] == "First enriched leads"
    assert value["acme"]["completed_at"].startswith("2026-03-02T10:00")  # Leads Enriched
    assert value["globex"]["name"] == "First battlecard"
    assert value["globex"]["completed_at"].startswith("2026-03-02T11:00")  # Battlecard Viewed
    with database.engine.connect() as conn:
        bodies = dict(conn.execute(sa.text(
            "SELECT account_id, body FROM actions WHERE rule = 'welcome'")).all())
    assert bodies == {"acme": "Your first enriched leads, step by step.",
                      "globex": "Your first battlecard, step by step."}


def test_without_a_use_case_the_track_is_followed(database):
    playbook = compile_playbook(parse_playbook(PLAYBOOK, "paths.yaml"))
    ingest_messages(database, messages("initech"), NOW, playbook.anchor_names)
    tick(database, playbook, NOW)
    state = stored_states(database, ["initech"])["initech"]
    assert state["path"] is None
    assert state["milestones"][0]["status"] == "open"  # neither path's event counts


def test_a_path_redefining_an_unknown_milestone_is_refused_by_place():
    bad = PLAYBOOK.replace("- {key: first_value, name: First battlecard",
                           "- {key: first_values, name: First battlecard")
    with pytest.raises(PlaybookError, match=r"paths\[1\]\.milestones\[0\]\.key"):
        parse_playbook(bad, "paths.yaml")


@pytest.mark.parametrize(("typed", "path"), [
    ("Lead enrichment", "enrichment"), ("lead-enrichment", "enrichment"),
    ("  COMPETITIVE   intelligence ", "intelligence"), ("lead enrichments", None),
])
def test_a_use_case_typed_as_words_finds_its_path(typed, path):
    playbook = compile_playbook(parse_playbook(PLAYBOOK, "paths.yaml"))
    track = playbook.tracks[0]
    assert playbook.on_path(track, typed).path == path
