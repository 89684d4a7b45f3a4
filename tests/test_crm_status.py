"""Sync status and retry, from the CLI and the API, with HubSpot configured by its settings."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from firstvalue.access import create_api_token
from firstvalue.cli.main import cli
from firstvalue.store.database import open_database
from tests.crm_fakes import MILESTONE_OBJECT, TOKEN, HubSpotServer
from tests.crm_helpers import AppServer, onboarding_account

NOW = "2026-03-04T12:00:00+00:00"


@pytest.fixture
def hubspot(monkeypatch):
    server = HubSpotServer().start()  # no company for acme yet
    monkeypatch.setenv("FIRSTVALUE_HUBSPOT_TOKEN", TOKEN)
    monkeypatch.setenv("FIRSTVALUE_HUBSPOT_URL", server.url)
    monkeypatch.setenv("FIRSTVALUE_HUBSPOT_MILESTONE_OBJECT", MILESTONE_OBJECT)
    yield server
    server.stop()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in onboarding_account()) + "\n")
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    assert run("--db", url, "import", str(path), "--no-progress", "--now", NOW)[0] == 0
    assert run("--db", url, "tick", "--now", NOW)[0] == 0
    return url


def test_sync_status_shows_each_connectors_rows_and_a_dead_row_can_be_retried(db, hubspot):
    code, output = run("--db", db, "sync", "run", "--now", NOW)
    assert code == 0, output
    assert "hubspot: 6 record(s) changed; 0 delivered, 5 failed, 1 dead." in output

    code, output = run("--db", db, "sync", "status", "--json")
    status = json.loads(output)
    assert status["connectors"] == [{"connector": "hubspot", "pending": 0, "delivered": 0,
                                     "failed": 5, "dead": 1}]
    dead = [row for row in status["rows"] if row["status"] == "dead"]
    assert [row["record_id"] for row in dead] == ["acme"]
    assert TOKEN not in output

    hubspot.add_company(name="Acme Inc", firstvalue_account_id="acme")
    code, output = run("--db", db, "sync", "retry", "--connector", "hubspot", "--now", NOW)
    assert "6 row(s) will be pushed again" in output
    run("--db", db, "sync", "run", "--now", NOW)
    code, output = run("--db", db, "sync", "status")
    assert "hubspot: 0 pending, 6 delivered, 0 failed, 0 dead" in output


def test_a_half_configured_hubspot_says_what_is_missing(db, monkeypatch):
    monkeypatch.setenv("FIRSTVALUE_HUBSPOT_TOKEN", "pat-secret-value")
    code, output = run("--db", db, "sync", "status")
    assert code == 2
    assert "FIRSTVALUE_HUBSPOT_MILESTONE_OBJECT" in output
    assert "pat-secret-value" not in output


def test_the_api_shows_sync_status_and_retries_with_a_csm_token(db, hubspot, playbook):
    run("--db", db, "sync", "run", "--now", NOW)
    database = open_database(db)
    viewer = create_api_token(database, "v", "viewer", 0)
    csm = create_api_token(database, "c", "csm", 0)
    server = AppServer(database, playbook).start()
    try:
        import httpx

        with httpx.Client(base_url=server.url, trust_env=False) as http:
            assert http.get("/api/sync").status_code == 401
            body = http.get("/api/sync", headers={"Authorization": f"Bearer {viewer}"}).json()
            assert body["connectors"][0]["dead"] == 1
            forbidden = http.post("/api/sync/retry", json={},
                                  headers={"Authorization": f"Bearer {viewer}"})
            assert forbidden.status_code == 403
            retried = http.post("/api/sync/retry", json={"records": ["acme"]},
                                headers={"Authorization": f"Bearer {csm}"})
            assert retried.json() == {"retried": 1}
    finally:
        server.stop()
        database.dispose()
