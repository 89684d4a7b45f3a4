"""Tier routing: pooled CSMs by load relative to capacity, out of office, the unassigned wait
with its team-lead alert, a dedicated manager for tier 1, self-serve tier 3 and its queue."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from firstvalue.actions.dispatch import Dispatcher
from firstvalue.engine.compiled import compile_playbook
from firstvalue.engine.routing import Member, choose_owner, overlap_hours
from firstvalue.errors import ConfigError
from firstvalue.ingest.service import ingest_messages
from firstvalue.playbook.loader import parse_playbook
from firstvalue.runtime.evaluation import tick
from firstvalue.runtime.routing import save_member, set_away, team_json
from tests.channel_fakes import SmtpServer
from tests.conftest import encode, micros

T0 = micros("2026-03-02T10:00:00Z")
HOUR = 3_600_000_000

PLAYBOOK = """name: routing
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
  - key: signed
    on: {anchor: contract_signed}
    actions:
      - {kind: task, to: owner, template: note}
templates:
  note:
    body: "Call {{ account.name }}."
tiers:
  - tier: 1
    where: {arr: {gte: 100000}}
  - tier: 3
    where: {segment: smb}
  - tier: 2
ownership:
  1: {model: dedicated, role: implementation_manager}
  2: {model: pooled, role: csm}
  3: {model: none}
"""

CAPACITIES = {"ana": 60, "ben": 50, "cho": 50, "dev": 40, "eli": 40}


@pytest.fixture
def routing_playbook():
    return compile_playbook(parse_playbook(PLAYBOOK, "routing.yaml"))


def signed(account: str, when: str, **traits) -> list[bytes]:
    group = {"type": "group", "groupId": account, "userId": f"{account}-u",
             "messageId": f"g-{account}", "timestamp": when,
             "traits": {"name": account, "segment": "mid_market", **traits}}
    deal = {"type": "track", "event": "Deal Closed Won", "userId": f"{account}-u",
            "messageId": f"d-{account}", "timestamp": when, "context": {"groupId": account}}
    return [encode(group), encode(deal)]


def add_accounts(database, playbook, names, now, **traits):
    messages = [m for name in names for m in signed(name, "2026-03-02T09:00:00Z", **traits)]
    ingest_messages(database, messages, now, playbook.anchor_names)
    tick(database, playbook, now)


def roster(database, capacities=CAPACITIES):
    with database.write() as conn:
        for handle, capacity in capacities.items():
            save_member(conn, handle, f"{handle}@team.example", "csm", capacity,
                        "Europe/Berlin", None, T0)
        save_member(conn, "iris", "iris@team.example", "implementation_manager", 3,
                    "America/New_York", None, T0)
        save_member(conn, "lead", "lead@team.example", "team_lead", 0, "Europe/Berlin",
                    None, T0)


def loads(database):
    with database.engine.connect() as conn:
        return {m["handle"]: m["load"] for m in team_json(conn, T0) if m["role"] == "csm"}


def assignment(database, account):
    with database.engine.connect() as conn:
        return conn.execute(sa.text("SELECT status, owner, model, reason FROM assignments "
                                    "WHERE account_id = :a"), {"a": account}).one()


def test_pooled_accounts_spread_in_proportion_to_capacity_and_never_over_it(
        database, routing_playbook):
    roster(database)
    add_accounts(database, routing_playbook, [f"acct-{i:03d}" for i in range(200)], T0)

    got = loads(database)
    assert sum(got.values()) == 200
    total = sum(CAPACITIES.values())  # 240
    for handle, capacity in CAPACITIES.items():
        share = 200 * capacity / total  # 50, 41.7, 41.7, 33.3, 33.3
        assert got[handle] <= capacity
        assert abs(got[handle] - share) <= 1, (handle, got[handle], share)

    # Ana goes out of office: the next accounts go to the other four only.
    with database.write() as conn:
        set_away(conn, "ana", T0, None, None)
    add_accounts(database, routing_playbook, [f"more-{i:02d}" for i in range(20)], T0 + HOUR)
    after = loads(database)
    assert after["ana"] == got["ana"] and sum(after.values()) == 220
    # The four have 180 places (50 + 50 + 40 + 40) and hold 170: 10 of the next 15 fill them,
    # the other 5 wait unassigned, each with one alert to the team lead.
    add_accounts(database, routing_playbook, [f"last-{i:02d}" for i in range(15)],
                 T0 + 2 * HOUR)
    full = loads(database)
    assert all(full[h] <= c for h, c in CAPACITIES.items())
    assert sum(full.values()) - full["ana"] == 50 + 50 + 40 + 40
    with database.engine.connect() as conn:
        waiting = conn.execute(sa.text(
            "SELECT COUNT(*) FROM assignments WHERE status = 'waiting'")).scalar()
        alerts = conn.execute(sa.text(
            "SELECT COUNT(*) FROM actions WHERE rule = 'routing.unassigned'")).scalar()
    assert waiting == 235 - sum(full.values()) > 0 and alerts == waiting


def test_an_away_csm_takes_no_new_accounts_and_full_capacity_means_waiting(
        database, routing_playbook):
    roster(database, {"ana": 3, "ben": 3})
    with database.write() as conn:
        set_away(conn, "ana", T0 - HOUR, None, "ben")
    add_accounts(database, routing_playbook, ["a1", "a2", "a3"], T0)
    assert loads(database) == {"ana": 0, "ben": 3}

    add_accounts(database, routing_playbook, ["a4"], T0 + HOUR)
    status, owner, _, reason = assignment(database, "a4")
    assert (status, owner) == ("waiting", None)
    assert "ana away" in reason and "ben full (3/3)" in reason
    with database.engine.connect() as conn:
        alerts = conn.execute(sa.text(
            "SELECT recipient, status FROM actions WHERE rule = 'routing.unassigned'")).all()
    assert [tuple(a) for a in alerts] == [("team_lead", "pending")]

    # Back in office: the waiting account is routed on the next tick, and alerted only once.
    with database.write() as conn:
        set_away(conn, "ana", None, None, None)
    tick(database, routing_playbook, T0 + 2 * HOUR)
    assert assignment(database, "a4")[:2] == ("assigned", "ana")
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM actions WHERE rule = "
                                    "'routing.unassigned'")).scalar() == 1


def test_the_team_lead_alert_arrives_by_email_with_the_reason(
        sqlite_database, routing_playbook, monkeypatch):
    server = SmtpServer().start()
    monkeypatch.setenv("FIRSTVALUE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FIRSTVALUE_SMTP_PORT", str(server.port))
    try:
        roster(sqlite_database, {"ana": 0})
        add_accounts(sqlite_database, routing_playbook, ["w1"], T0)
        Dispatcher(sqlite_database, routing_playbook).run_once(T0)
    finally:
        server.stop()
    alerts = [m for m in server.messages if m["To"] == "lead@team.example"]
    assert len(alerts) == 1
    assert "w1" in alerts[0].get_payload() and "ana full (0/0)" in alerts[0].get_payload()
    with sqlite_database.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, assignee FROM actions WHERE rule = "
                                   "'routing.unassigned'")).one()
    assert tuple(row) == ("sent", "lead@team.example")


def test_tier_one_gets_a_dedicated_manager_and_tier_three_no_owner(
        database, routing_playbook, monkeypatch):
    monkeypatch.setenv("FIRSTVALUE_TEAM_QUEUE", "queue@team.example")
    roster(database)
    add_accounts(database, routing_playbook, ["big"], T0, arr=250_000)
    add_accounts(database, routing_playbook, ["small"], T0, segment="smb")

    assert assignment(database, "big")[:3] == ("assigned", "iris", "dedicated")
    assert assignment(database, "small")[:3] == ("self_serve", None, "none")

    Dispatcher(database, routing_playbook).run_once(T0)
    with database.engine.connect() as conn:
        tasks = dict(conn.execute(sa.text(
            "SELECT account_id, assignee FROM actions WHERE kind = 'task'")).all())
    assert tasks == {"big": "iris@team.example", "small": "queue@team.example"}


def test_an_away_owner_s_new_tasks_go_to_the_cover_or_the_team_queue(
        database, routing_playbook, monkeypatch):
    monkeypatch.setenv("FIRSTVALUE_TEAM_QUEUE", "queue@team.example")
    roster(database, {"ana": 5, "ben": 0})  # ben takes no accounts of his own, but covers

    add_accounts(database, routing_playbook, ["c1"], T0)  # ana's
    with database.write() as conn:
        set_away(conn, "ana", T0, T0 + 48 * HOUR, "ben")
    Dispatcher(database, routing_playbook).run_once(T0 + HOUR)  # c1's task: to ben

    with database.write() as conn:
        set_away(conn, "ana", None, None, None)
    add_accounts(database, routing_playbook, ["c2"], T0 + 2 * HOUR)  # ana's again
    with database.write() as conn:
        set_away(conn, "ana", T0 + 2 * HOUR, T0 + 48 * HOUR, None)
    Dispatcher(database, routing_playbook).run_once(T0 + 3 * HOUR)  # no cover: the queue

    with database.engine.connect() as conn:
        tasks = dict(conn.execute(sa.text(
            "SELECT account_id, assignee FROM actions WHERE kind = 'task'")).all())
    assert tasks == {"c1": "ben@team.example", "c2": "queue@team.example"}
    assert assignment(database, "c2")[:2] == ("assigned", "ana")


def test_an_owner_set_by_the_crm_is_kept_and_counts_towards_the_load(
        database, routing_playbook):
    roster(database, {"ana": 2, "ben": 2})
    add_accounts(database, routing_playbook, ["crm1"], T0, owner="ben")
    assert assignment(database, "crm1")[:3] == ("assigned", "ben", "explicit")
    add_accounts(database, routing_playbook, ["n1", "n2"], T0 + HOUR)
    # n1: ana 0/2 against ben 1/2, so ana. n2: both at 1/2, same zone; in turn, ben was
    # never routed to (his account came from the CRM) and ana just was, so ben.
    assert loads(database) == {"ana": 1, "ben": 2}
    assert assignment(database, "n2")[:2] == ("assigned", "ben")


def test_ties_go_to_the_overlapping_timezone_then_in_turn():
    now = micros("2026-03-02T12:00:00Z")
    tokyo = Member("tk", "tk@x.example", "csm", 10, "Asia/Tokyo")
    berlin = Member("be", "be@x.example", "csm", 10, "Europe/Berlin")
    assert choose_owner([tokyo, berlin], "csm", "Europe/Paris", now).owner == berlin
    assert choose_owner([tokyo, berlin], "csm", "Asia/Seoul", now).owner == tokyo
    earlier = Member("b2", "b2@x.example", "csm", 10, "Europe/Berlin", last_assigned_at=5)
    later = Member("b1", "b1@x.example", "csm", 10, "Europe/Berlin", last_assigned_at=9)
    assert choose_owner([later, earlier], "csm", "Europe/Berlin", now).owner == earlier
    assert overlap_hours("Europe/Berlin", "Asia/Tokyo", now) == 0  # 08-16 UTC vs 00-08 UTC
    assert overlap_hours("Europe/Berlin", "Europe/London", now) == 7


def test_bad_roster_input_is_refused_with_the_fix(database):
    with database.write() as conn, pytest.raises(ConfigError, match="IANA zone"):
        save_member(conn, "x", "x@team.example", "csm", 3, "Mars/Olympus", None, T0)
    with database.write() as conn, pytest.raises(ConfigError, match="role 'boss'"):
        save_member(conn, "x", "x@team.example", "boss", 3, "UTC", None, T0)
    with database.write() as conn, pytest.raises(ConfigError, match="out of range"):
        save_member(conn, "x", "x@team.example", "csm", -1, "UTC", None, T0)
    with database.write() as conn, pytest.raises(ConfigError, match="no team member"):
        set_away(conn, "ghost", T0, None, None)


def test_a_playbook_with_a_bad_ownership_model_names_the_place():
    from firstvalue.errors import PlaybookError

    bad = PLAYBOOK.replace("2: {model: pooled, role: csm}", "2: {model: pooled}")
    with pytest.raises(PlaybookError, match="ownership"):
        parse_playbook(bad, "routing.yaml")


def test_the_roster_over_the_api_admin_changes_viewer_reads(sqlite_database, routing_playbook):
    import warnings

    from firstvalue.access import create_api_token
    from firstvalue.api.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    def bearer(role):
        return {"Authorization": f"Bearer {create_api_token(sqlite_database, role, role, T0)}"}

    with TestClient(create_app(sqlite_database, routing_playbook, clock=lambda: T0)) as client:
        member = {"email": "ana@team.example", "role": "csm", "capacity": 2,
                  "timezone": "Europe/Berlin"}
        assert client.put("/api/team/ana", json=member,
                          headers=bearer("viewer")).status_code == 403
        assert client.put("/api/team/ana", json=member, headers=bearer("csm")).status_code == 403
        answer = client.put("/api/team/ana", json=member, headers=bearer("admin"))
        assert answer.status_code == 200
        assert answer.json()["team"][0] == {
            "handle": "ana", "email": "ana@team.example", "role": "csm", "capacity": 2,
            "load": 0, "timezone": "Europe/Berlin", "away": False, "away_from": None,
            "away_until": None, "cover": None}

        bad = client.put("/api/team/ben", json={**member, "timezone": "Nowhere/City"},
                         headers=bearer("admin"))
        assert bad.status_code == 400 and "Nowhere/City" in bad.json()["error"]["message"]
        unknown = client.put("/api/team/ben", json={**member, "colour": "red"},
                             headers=bearer("admin"))
        assert unknown.status_code == 400 and "colour" in unknown.json()["error"]["message"]
        assert [m["handle"] for m in client.get(
            "/api/team", headers=bearer("viewer")).json()["team"]] == ["ana"]

        add_accounts(sqlite_database, routing_playbook, ["z1"], T0)
        rows = client.get("/api/assignments", headers=bearer("viewer")).json()["assignments"]
        assert [(r["account_id"], r["status"], r["owner"]) for r in rows] == [
            ("z1", "assigned", "ana")]


def test_without_a_roster_nothing_is_routed_and_nobody_is_alerted(database):
    from firstvalue.playbook.loader import load_playbook

    default = compile_playbook(load_playbook())
    assert default.loaded.model.ownership  # the built-in playbook declares the models
    add_accounts(database, default, ["r1"], T0)
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM assignments")).scalar() == 0
        assert conn.execute(sa.text("SELECT COUNT(*) FROM actions WHERE rule LIKE "
                                    "'routing.%'")).scalar() == 0


def test_an_owner_set_by_the_crm_while_waiting_stands(database, routing_playbook):
    roster(database, {"amy": 0})
    add_accounts(database, routing_playbook, ["w1"], T0)
    assert assignment(database, "w1")[0] == "waiting"
    later = encode({"type": "group", "groupId": "w1", "userId": "w1-u", "messageId": "g2-w1",
                    "timestamp": "2026-03-02T11:00:00Z",
                    "traits": {"owner": "crm.owner@example.com"}})
    ingest_messages(database, [later], T0 + 2 * HOUR, routing_playbook.anchor_names)
    with database.write() as conn:
        save_member(conn, "amy", "amy@team.example", "csm", 5, "Europe/Berlin", None, T0)
    tick(database, routing_playbook, T0 + 3 * HOUR)
    assert assignment(database, "w1")[:3] == ("assigned", "crm.owner@example.com", "explicit")


def test_when_the_crm_changes_an_owner_the_load_follows(database, routing_playbook):
    roster(database, {"amy": 5, "carol": 5})
    add_accounts(database, routing_playbook, ["k4"], T0, owner="carol@team.example")
    assert loads(database) == {"amy": 0, "carol": 1}
    changed = encode({"type": "group", "groupId": "k4", "userId": "k4-u", "messageId": "g2-k4",
                      "timestamp": "2026-03-02T11:00:00Z", "traits": {"owner": "amy"}})
    ingest_messages(database, [changed], T0 + 2 * HOUR, routing_playbook.anchor_names)
    tick(database, routing_playbook, T0 + 2 * HOUR)
    assert loads(database) == {"amy": 1, "carol": 0}
    assert assignment(database, "k4")[:2] == ("assigned", "amy")


def test_an_owner_changed_between_routing_and_evaluation_is_still_routed(
        database, routing_playbook, monkeypatch):
    # A tick routes, commits, then evaluates: the CRM's new owner arrives in between. The
    # evaluation marks the account evaluated, so routing must see the change then, or never.
    from firstvalue.runtime import evaluation

    roster(database, {"amy": 5, "carol": 5})
    add_accounts(database, routing_playbook, ["k5"], T0, owner="carol@team.example")
    real_prepare = evaluation._prepare

    def prepare_then_the_crm_writes(*args):
        prepared = real_prepare(*args)
        changed = encode({"type": "group", "groupId": "k5", "userId": "k5-u",
                          "messageId": "g2-k5", "timestamp": "2026-03-02T11:00:00Z",
                          "traits": {"owner": "amy"}})
        ingest_messages(database, [changed], T0 + 2 * HOUR, routing_playbook.anchor_names)
        return prepared

    monkeypatch.setattr(evaluation, "_prepare", prepare_then_the_crm_writes)
    tick(database, routing_playbook, T0 + 2 * HOUR)
    monkeypatch.undo()
    assert assignment(database, "k5")[:2] == ("assigned", "amy")
    assert loads(database) == {"amy": 1, "carol": 0}
    tick(database, routing_playbook, T0 + 3 * HOUR)
    assert loads(database) == {"amy": 1, "carol": 0}


def test_waiting_accounts_are_routed_again_only_when_there_is_room_or_they_changed(
        database, routing_playbook, monkeypatch):
    from firstvalue.runtime import evaluation, routing

    roster(database, {"amy": 1})
    add_accounts(database, routing_playbook, ["w1", "w2"], T0)
    assert [assignment(database, a)[0] for a in ("w1", "w2")] == ["assigned", "waiting"]
    seen: list[list[str]] = []

    def recording(conn, playbook):
        seen.append(routing.routing_candidates(conn, playbook))
        return seen[-1]

    monkeypatch.setattr(evaluation, "routing_candidates", recording)
    tick(database, routing_playbook, T0 + HOUR)
    assert seen[-1] == []  # amy is full: w2 stays as it was, its row not written again
    smb = encode({"type": "group", "groupId": "w2", "userId": "w2-u", "messageId": "g2-w2",
                  "timestamp": "2026-03-02T11:00:00Z", "traits": {"segment": "smb"}})
    ingest_messages(database, [smb], T0 + 2 * HOUR, routing_playbook.anchor_names)
    tick(database, routing_playbook, T0 + 2 * HOUR)
    assert seen[-1] == ["w2"]  # changed: routed again, now self-serve
    assert assignment(database, "w2")[0] == "self_serve"
    with database.write() as conn:
        save_member(conn, "bob", "bob@team.example", "csm", 2, "Europe/Berlin", None, T0)
    ingest_messages(database, [m for m in signed("w3", "2026-03-02T12:00:00Z")],
                    T0 + 3 * HOUR, routing_playbook.anchor_names)
    tick(database, routing_playbook, T0 + 3 * HOUR)
    assert assignment(database, "w3")[:2] == ("assigned", "bob")


def test_working_days_that_cross_midnight_utc_overlap():
    now = micros("2026-11-02T01:00:00Z")
    # Tokyo works 00:00-08:00 UTC, Honolulu 19:00-03:00 UTC: 00:00 to 03:00 together.
    assert overlap_hours("Asia/Tokyo", "Pacific/Honolulu", now) == 3
    assert overlap_hours("Pacific/Honolulu", "Asia/Tokyo", now) == 3
    # Sydney (AEDT, +11) 22:00-06:00 UTC, Los Angeles (PST) 17:00-01:00 UTC: 22:00 to 01:00.
    assert overlap_hours("Australia/Sydney", "America/Los_Angeles", now) == 3


def test_a_tier_outside_one_to_three_is_no_tier():
    from firstvalue.engine.compiled import tier_trait

    assert [tier_trait(v) for v in (0, 1, "2", 3, 4, -1, "x", True, 1e400)] == [
        None, 1, 2, 3, None, None, None, None, None]


def test_a_new_owner_takes_over_the_open_tasks(database, routing_playbook):
    roster(database, {"ana": 5, "ben": 5})
    add_accounts(database, routing_playbook, ["t1"], T0, owner="ana")
    Dispatcher(database, routing_playbook).run_once(T0)
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT assignee FROM actions WHERE kind = 'task'")).scalar() \
            == "ana@team.example"
    changed = encode({"type": "group", "groupId": "t1", "userId": "t1-u", "messageId": "g2-t1",
                      "timestamp": "2026-03-02T11:00:00Z", "traits": {"owner": "ben"}})
    ingest_messages(database, [changed], T0 + 2 * HOUR, routing_playbook.anchor_names)
    tick(database, routing_playbook, T0 + 2 * HOUR)
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT assignee FROM actions WHERE kind = 'task'")).scalar() \
            == "ben@team.example"


def test_an_away_period_needs_its_start(database):
    roster(database, {"ana": 2})
    with database.write() as conn, pytest.raises(ConfigError, match="needs its start"):
        set_away(conn, "ana", None, T0, None)
    with database.write() as conn, pytest.raises(ConfigError, match="needs its start"):
        set_away(conn, "ana", None, None, "lead")
