"""The CLI as scripts use it: --now, --json shapes, exit codes, the demo."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from firstvalue.cli.main import cli
from tests.conftest import HANDOFF

NOW = "2026-03-20T12:00:00+00:00"


@pytest.fixture
def loaded(tmp_path):
    """A SQLite store holding one mid-market account in Berlin, imported from a file."""
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    lines = [
        {"type": "group", "messageId": "g1", "userId": "u1", "groupId": "acme",
         "timestamp": "2026-03-01T08:00:00Z",
         "traits": {"name": "Acme", "segment": "mid_market", "tier": 2, "handoff": HANDOFF,
                    "timezone": "Europe/Berlin"}},
        {"type": "track", "messageId": "t1", "userId": "u1", "event": "Deal Closed Won",
         "timestamp": "2026-03-01T09:00:00Z", "properties": {"deal_id": "d1"}},
        {"type": "track", "messageId": "t2", "userId": "u1", "event": "Kickoff Completed",
         "timestamp": "2026-03-03T09:00:00Z"},
        {"type": "track", "messageId": "t3", "userId": "u1", "event": "Value Delivered",
         "timestamp": "2026-03-15T10:00:00Z"},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = CliRunner().invoke(cli, ["--db", db, "import", str(path), "--no-progress",
                                      "--now", NOW])
    assert result.exit_code == 0, result.output
    return db


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_account_json_holds_the_documented_keys_at_now(loaded):
    code, output = run("--db", loaded, "account", "acme", "--json", "--now", NOW)
    assert code == 0
    account = json.loads(output)
    for key in ("id", "segment", "tier", "track", "timezone", "kickoff_at", "day", "milestones",
                "ttv_days", "phases", "stalls", "actions"):
        assert key in account
    assert (account["id"], account["track"], account["day"]) == ("acme", "mid_market", 17)
    value = next(m for m in account["milestones"] if m["key"] == "first_value")
    assert value == {**value, "status": "done", "completed_at": "2026-03-15T11:00:00+01:00",
                     "local_day": 12, "target_day": 21, "due_on": "2026-03-24",
                     "on_time": True}
    assert account["ttv_days"] == 14
    assert account["kickoff_at"] == "2026-03-03T10:00:00+01:00"
    open_one = next(m for m in account["milestones"] if m["key"] == "data_connected")
    assert (open_one["completed_at"], open_one["overdue_days"]) == (None, 10)


def test_read_commands_compute_day_at_now(loaded):
    _, later = run("--db", loaded, "account", "acme", "--json", "--now", "2026-03-25T12:00:00Z")
    assert json.loads(later)["day"] == 22


def test_accounts_json_is_a_list_of_account_objects(loaded):
    code, output = run("--db", loaded, "accounts", "--json", "--now", NOW)
    assert code == 0
    accounts = json.loads(output)
    assert [a["id"] for a in accounts] == ["acme"]
    assert {"id", "segment", "tier", "track", "day", "milestones", "ttv_days"} <= set(accounts[0])


def test_report_counts_milestones_and_median_ttv_per_segment(loaded):
    code, output = run("--db", loaded, "report", "--json", "--now", NOW)
    assert code == 0
    report = json.loads(output)
    reached = {row["key"]: row["reached"] for row in report["milestones"]}
    assert reached == {"account_configured": 0, "data_connected": 0, "first_workflow": 0,
                       "first_value": 1, "second_user": 0}
    assert report["ttv_by_segment"] == [{"segment": "mid_market", "accounts": 1,
                                         "reached_value": 1, "not_reached_yet": 0,
                                         "median_ttv_days": 14, "ttv_target_days": 30}]


def test_tick_stores_the_state_with_the_playbook_version(loaded):
    code, output = run("--db", loaded, "tick", "--now", NOW)
    assert code == 0 and "Evaluated 1 account(s)" in output
    code, output = run("--db", loaded, "tick", "--now", NOW)
    assert "Evaluated 0 account(s)" in output  # nothing changed, nothing due yet
    assert "Nothing was due" not in output  # not earlier than the last tick: no hint
    code, output = run("--db", loaded, "tick", "--now", "2026-03-21T12:00:00Z")
    assert "Evaluated 1 account(s)" in output  # the local midnight passed
    code, output = run("--db", loaded, "tick", "--now", "2026-03-02T12:00:00Z")
    assert "Evaluated 0 account(s)" in output
    assert "last evaluated at 2026-03-21T12:00:00" in output  # a tick does not go back


def test_an_unknown_account_is_exit_code_2_with_a_hint(loaded):
    code, output = run("--db", loaded, "account", "nope")
    assert code == 2
    assert "unknown account 'nope'" in output and "firstvalue accounts" in output


def test_a_now_without_offset_is_refused_with_the_fix(loaded):
    code, output = run("--db", loaded, "accounts", "--now", "2026-03-20T12:00:00")
    assert code == 2
    assert "has no offset" in output


def test_an_unknown_database_url_is_refused(tmp_path):
    code, output = run("--db", "mysql://x", "accounts")
    assert code == 2 and "sqlite:///" in output


def test_the_demo_prints_the_same_report_for_the_same_seed_and_date(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--accounts", "24", "--today", "2026-12-04", "--json"]
    first = json.loads(run(*args)[1])
    second = json.loads(run(*args)[1])
    assert first == second
    assert first["accounts"] == 24
    assert {row["segment"] for row in first["ttv_by_segment"]} == {"smb", "mid_market",
                                                                   "enterprise"}
    assert (tmp_path / "firstvalue-demo.db").exists()
    # The CRM sync's records reached the demo's own receiver, every one delivered.
    sync = first["crm_sync"]
    with_runs = sync["account_records"]
    assert with_runs > 0 and sync["milestone_records"] == 5 * with_runs
    assert sync["completed_milestones"] > 0
    assert sync["status"] == [{"connector": "webhook", "pending": 0,
                               "delivered": 6 * with_runs, "failed": 0, "dead": 0}]
    # Tier routing ran on the demo's roster: every account has an assignment, SMB ones are
    # self-serve, and nobody holds more than their capacity.
    routing = first["routing"]
    assert sum(routing["assignments"].values()) == 24
    smb = next(row["accounts"] for row in first["ttv_by_segment"] if row["segment"] == "smb")
    assert routing["assignments"]["self_serve"] == smb
    assert all(m["load"] <= m["capacity"] for m in routing["team"] if m["role"] != "team_lead")
    assert any(m["load"] > 0 for m in routing["team"])


def test_the_demo_prints_milestone_records_reaching_its_own_receiver_and_the_sync_status(
        tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    code, output = run("demo", "--accounts", "12", "--today", "2026-12-04")
    assert code == 0, output
    assert "CRM sync, to a Standard Webhooks receiver on 127.0.0.1 started by the demo" in output
    match = re.search(r"(\d+) milestone records \((\d+) completed\) and (\d+) account "
                      r"records, in (\d+) signed deliveries", output)
    assert match, output
    milestones, _, accounts, deliveries = map(int, match.groups())
    assert accounts > 0 and milestones == 5 * accounts and deliveries > 0
    assert f"sync status webhook: 0 pending, {6 * accounts} delivered, 0 failed, 0 dead" in output


def test_the_demo_reports_actions_and_escalations_raised_and_cancelled_by_rule(tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = json.loads(run("demo", "--accounts", "30", "--today", "2026-12-04", "--json")[1])
    rows = {row["rule"]: row for row in report["actions_by_rule"]}
    # Every account signed: one welcome each, but for those whose handoff gate never opened.
    accounts = json.loads(run("--db", "sqlite:///firstvalue-demo.db", "accounts", "--json",
                              "--now", "2026-12-04T12:00:00Z")[1])
    open_gate = [a for a in accounts if not a["handoff"]["gate"] or a["handoff"]["complete"]]
    assert 0 < len(open_gate) < 30
    assert rows["welcome"]["sent"] == len(open_gate)
    assert rows["handoff.ae_reminder"]["sent"] > 0 and rows["handoff.manager"]["sent"] > 0
    assert rows["welcome.no_kickoff_task"]["escalation"] is True
    assert sum(row["cancelled"] for row in rows.values() if row["escalation"]) > 0
    assert sum(row["sent"] for row in rows.values() if row["escalation"]) > 0


def test_actions_retry_replays_a_dead_action_from_the_cli(loaded):
    import sqlalchemy as sa

    from firstvalue.store.database import open_database

    run("--db", loaded, "tick", "--now", NOW)
    database = open_database(loaded)
    with database.write() as conn:
        key = conn.execute(sa.text("SELECT key FROM actions WHERE rule = 'welcome'")).scalar()
        conn.execute(sa.text("UPDATE actions SET status = 'dead' WHERE key = :k"), {"k": key})
    code, output = run("--db", loaded, "actions", "retry", key, "--now", NOW)
    assert code == 0 and "1 action(s)" in output
    code, output = run("--db", loaded, "actions", "--json", "--status", "pending")
    assert key in [a["key"] for a in json.loads(output)]
    database.dispose()


def test_the_demo_shows_each_diagnosed_stall_with_its_intervention_in_the_timeline(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("demo", "--accounts", "60", "--today", "2026-12-04", "--json")
    db = ["--db", "sqlite:///firstvalue-demo.db"]
    code, output = run(*db, "stalls", "--all", "--json", "--now", "2026-12-04T12:00:00Z")
    assert code == 0
    queue = json.loads(output)
    tiers = [s["tier"] if s["tier"] is not None else 99 for s in queue if s["status"] == "open"]
    assert tiers == sorted(tiers)  # riskiest (lowest tier) first
    expected = {"integration_blocker": "stall.sandbox_offer",
                "champion_quiet": "stall.champion_outreach",
                "scope_creep": "stall.one_use_case"}
    def view_of(account: str) -> dict:
        return json.loads(run(*db, "account", account, "--json", "--now",
                              "2026-12-04T12:00:00Z")[1])

    for diagnosis, intervention in expected.items():
        # An account whose customer can hear from us: not held behind the handoff gate.
        candidates = (view_of(s["account_id"]) for s in queue if s["diagnosis"] == diagnosis)
        view = next(v for v in candidates
                    if not v["handoff"]["gate"] or v["handoff"]["complete"])
        account = view["id"]
        entries = [e for e in view["timeline"] if e["what"].startswith(intervention + ":")]
        assert entries, (diagnosis, account)
        assert diagnosis in entries[0]["reason"]


def test_the_demo_database_holds_every_behaviour(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("demo", "--accounts", "60", "--today", "2026-12-04", "--json")
    code, output = run("--db", "sqlite:///firstvalue-demo.db", "accounts", "--json", "--now",
                       "2026-12-04T12:00:00Z")
    assert code == 0
    accounts = json.loads(output)
    assert len(accounts) == 60
    assert any(a["ttv_days"] is not None for a in accounts)
    never = [a for a in accounts
             if next(m for m in a["milestones"] if m["key"] == "data_connected")["status"]
             == "open" and a["day"] is not None and a["day"] > 30]
    assert never, "some sample accounts never connect data"


def test_the_demo_never_replaces_a_database_that_is_not_its_own(loaded, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = loaded.removeprefix("sqlite:///")
    code, output = run("demo", "--accounts", "2", "--db", real)
    assert code == 2 and "is not a demo database" in output
    assert json.loads(run("--db", loaded, "accounts", "--json")[1])[0]["id"] == "acme"
    code, output = run("demo", "--db", "sqlite:///x.db")
    assert code == 2 and "takes a file path, not a URL" in output
    code, output = run("demo", "--today", "2026-13-01")
    assert code == 2 and "is not a date" in output


def test_playbook_show_prints_a_playbook_that_checks_valid(tmp_path):
    code, output = run("playbook", "show")
    assert code == 0 and output.startswith("# The default firstvalue playbook")
    copy = tmp_path / "mine.yaml"
    copy.write_text(output)
    code, checked = run("playbook", "check", str(copy))
    assert code == 0 and "valid" in checked


def test_the_demo_s_url_hint_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = run("demo", "--db", "sqlite:///x.db")
    assert code == 2 and "write --db x.db" in output


def test_the_actions_table_shows_the_keys_tasks_done_needs(loaded):
    assert run("--db", loaded, "tick", "--now", NOW)[0] == 0
    code, output = run("--db", loaded, "actions")
    assert code == 0
    keys = [action["key"] for action in json.loads(run("--db", loaded, "actions", "--json")[1])]
    assert keys and all(key in output.replace("\n", "") or key[:20] in output for key in keys)


def test_an_open_milestone_of_a_finished_run_reads_missed_not_days_overdue(loaded):
    # acme's mid-market run ends on day 90; on day 200 its open milestones were missed.
    code, during = run("--db", loaded, "accounts", "--now", NOW)
    assert code == 0 and "-10d" in during and "missed" not in during
    code, after = run("--db", loaded, "account", "acme", "--now", "2026-09-20T12:00:00Z")
    assert code == 0 and "missed" in after
    assert re.search(r"-\d+d", after) is None


def test_the_global_db_given_to_the_demo_is_refused_not_ignored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = run("--db", f"sqlite:///{tmp_path / 'mine.db'}", "demo", "--accounts", "2")
    assert code == 2 and "firstvalue demo --db PATH" in output
    assert not (tmp_path / "firstvalue-demo.db").exists()


def test_users_add_says_the_team_member_it_linked_and_asks_for_a_long_enough_password(
        loaded):
    result = CliRunner().invoke(cli, ["--db", loaded, "team", "add", "ana", "--email",
                                      "ana@example.com", "--role", "csm", "--capacity", "5",
                                      "--timezone", "UTC"])
    assert result.exit_code == 0, result.output
    added = CliRunner().invoke(cli, ["--db", loaded, "users", "add", "ana", "--role", "csm",
                                     "--team", "ana"], input="a-long-password\na-long-password\n")
    assert added.exit_code == 0, added.output
    assert "Password (at least 10 characters)" in added.output
    assert "Added ana (csm, the team member ana)." in added.output


def test_the_account_page_says_when_the_handoff_gate_holds_the_customers_messages(tmp_path):
    # A mid-market account whose sales handoff is not in: its customer hears nothing yet,
    # and the text page says why (a new user only found it in --json).
    db = f"sqlite:///{tmp_path / 'gate.db'}"
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [
        {"type": "group", "messageId": "g1", "userId": "u1", "groupId": "acme",
         "timestamp": "2026-03-01T08:00:00Z",
         "traits": {"name": "Acme", "segment": "mid_market", "tier": 2}},
        {"type": "track", "messageId": "t1", "userId": "u1", "event": "Deal Closed Won",
         "timestamp": "2026-03-01T09:00:00Z", "properties": {"deal_id": "d1"}},
    ]) + "\n")
    assert run("--db", db, "import", str(path), "--no-progress", "--now", NOW)[0] == 0
    code, output = run("--db", db, "account", "acme", "--now", NOW)
    assert code == 0
    flat = " ".join(output.split())
    assert "Handoff: incomplete (missing use_case," in flat
    assert "holds the customer's messages until it is complete; submit it with:" in flat
    assert "\n  firstvalue handoff submit acme FILE\n" in output
    assert "Time-to-value: not reached yet (target" in flat


def test_the_account_page_shows_a_complete_handoff_and_the_ttv(loaded):
    code, output = run("--db", loaded, "account", "acme", "--now", NOW)
    assert code == 0
    assert "Handoff: complete since 2026-03-01" in output
    assert "Time-to-value: 14 day(s) (target" in output


def test_accounts_of_an_empty_store_say_which_store_it_was(tmp_path):
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    assert CliRunner().invoke(cli, ["--db", db, "tick"]).exit_code == 0  # makes the store
    result = CliRunner().invoke(cli, ["--db", db, "accounts"])
    assert result.exit_code == 0
    assert f"No accounts in {db}." in " ".join(result.output.split())
    assert json.loads(CliRunner().invoke(cli, ["--db", db, "accounts", "--json"]).output) == []


@pytest.mark.parametrize("command", [
    ["accounts"], ["accounts", "--json"], ["account", "acme"], ["report"], ["stalls"],
    ["held"], ["actions"], ["handoff", "show", "acme"], ["team", "list"], ["users", "list"]])
def test_a_read_command_on_a_store_that_is_not_there_says_so_and_makes_none(tmp_path,
                                                                            command):
    # A new user ran `firstvalue accounts` without --db in another directory and got a bare
    # "0 account(s)" from a store made there on the spot (and a mistyped --db does the same).
    path = tmp_path / "typo.db"
    result = CliRunner().invoke(cli, ["--db", f"sqlite:///{path}", *command])
    assert result.exit_code == 2  # a firstvalue error (docs/cli.md "Exit codes")
    flat = " ".join(result.output.split())
    assert f"there is no store at {path} (--db or FIRSTVALUE_DB: sqlite:///{path}). Import " \
           "events first (firstvalue import FILE)" in flat
    assert not path.exists()


def test_importing_a_file_again_says_nothing_changed_instead_of_asking_for_a_tick(
        loaded, tmp_path):
    code, output = run("--db", loaded, "import", str(tmp_path / "events.jsonl"),
                       "--no-progress", "--now", NOW)
    assert code == 0
    assert "4 duplicate" in output
    assert "Nothing new was stored, so no account changed." in output
    assert "firstvalue tick" not in output


def test_a_milestone_done_without_a_day_0_says_so_in_the_timeline(loaded):
    from dataclasses import replace

    from firstvalue.cli.main import resolve_now
    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.playbook.loader import load_playbook
    from firstvalue.runtime.evaluation import evaluate_accounts
    from firstvalue.runtime.timeline import account_view
    from firstvalue.store.database import open_database

    database, now = open_database(loaded), resolve_now(NOW)
    [state] = evaluate_accounts(database, compile_playbook(load_playbook()), now, ["acme"])
    done = [m for m in state.milestones if m.completed_at]
    assert done
    state = replace(state, milestones=tuple(replace(m, local_day=None) for m in done))
    texts = [e["what"] for e in account_view(database, state, now)["timeline"]
             if e["type"] == "milestone"]
    database.dispose()
    assert texts and all("(no day 0 yet, target" in text for text in texts), texts


@pytest.mark.parametrize(("argv0", "on_path", "expected"), [
    (".venv/bin/firstvalue", None, ".venv/bin/firstvalue"),  # the README's command
    ("/usr/bin/firstvalue", "/usr/bin/firstvalue", "firstvalue"),  # found by its name
    ("/opt/fv/bin/firstvalue", "/usr/bin/firstvalue", "/opt/fv/bin/firstvalue"),
    ("/x/firstvalue/__main__.py", None, "firstvalue"),  # python -m firstvalue
])
def test_the_demo_names_the_command_as_it_can_be_run_again(monkeypatch, argv0, on_path,
                                                            expected):
    from firstvalue.cli import main

    monkeypatch.setattr(main.sys, "argv", [argv0, "demo"])
    monkeypatch.setattr(main.shutil, "which", lambda name: on_path)
    assert main.invoked_as() == expected
