"""The sales-to-CS handoff record over the API: every missing or invalid field reported by name,
nothing half-stored, completion recorded once, and the state and the CRM field that follow."""

from __future__ import annotations

import warnings

import pytest
import sqlalchemy as sa

from firstvalue.access import create_api_token
from firstvalue.api.app import create_app
from firstvalue.crm.records import handoff_complete
from firstvalue.ingest.service import ingest_messages
from firstvalue.runtime.evaluation import stored_states, tick
from tests.conftest import encode, micros

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NOW = micros("2026-03-02T10:00:00Z")
COMPLETE = {
    "use_case": "lead_enrichment",
    "stakeholders": [{"name": "Kim Lee", "role": "champion", "email": "kim@acme.example"},
                     {"name": "Ravi Rao", "role": "economic buyer"}],
    "success_criteria": ["enriched leads in the CRM within a week"],
    "technical_requirements": {"crm": "salesforce", "sso": "okta"},
    "commitments": ["a sandbox until security review passes"],
}


@pytest.fixture
def client(database, playbook):
    group = {"type": "group", "groupId": "acme", "userId": "kim", "messageId": "g1",
             "timestamp": "2026-03-01T09:00:00Z",
             "traits": {"name": "Acme", "segment": "mid_market", "tier": 2}}
    deal = {"type": "track", "event": "Deal Closed Won", "userId": "kim", "messageId": "d1",
            "timestamp": "2026-03-01T10:00:00Z", "context": {"groupId": "acme"}}
    ingest_messages(database, [encode(group), encode(deal)], NOW, playbook.anchor_names)
    with TestClient(create_app(database, playbook, clock=lambda: NOW)) as test_client:
        yield test_client


def bearer(database, role):
    return {"Authorization": f"Bearer {create_api_token(database, role, role, NOW)}"}


def test_missing_fields_are_listed_by_name_and_the_record_is_kept(client, database):
    answer = client.put("/api/accounts/acme/handoff", json={"use_case": "lead_enrichment"},
                        headers=bearer(database, "csm"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["complete"] is False
    assert answer.json()["missing"] == ["stakeholders", "success_criteria",
                                        "technical_requirements", "commitments"]
    shown = client.get("/api/accounts/acme/handoff", headers=bearer(database, "viewer")).json()
    assert shown["record"] == {"use_case": "lead_enrichment"} and shown["completed_at"] is None


def test_invalid_fields_are_each_named_and_nothing_is_stored(client, database):
    answer = client.put("/api/accounts/acme/handoff", headers=bearer(database, "csm"), json={
        **COMPLETE, "stakeholders": [{"name": "Kim"}], "success_criteria": "fast",
        "colour": "red"})
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    for named in ("stakeholders: entry 0 needs a `role`", "success_criteria: must be a list",
                  "colour: not a handoff field"):
        assert named in message
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM handoffs")).scalar() == 0


def test_a_complete_handoff_is_recorded_once_and_reaches_the_state_and_the_crm_field(
        client, database, playbook):
    csm = bearer(database, "csm")
    client.put("/api/accounts/acme/handoff", json={"use_case": "lead_enrichment"}, headers=csm)
    tick(database, playbook, NOW)
    state = stored_states(database, ["acme"])["acme"]
    assert state["handoff"]["complete"] is False and handoff_complete(state) is False

    answer = client.put("/api/accounts/acme/handoff", json=COMPLETE, headers=csm).json()
    assert answer["complete"] is True and answer["missing"] == []
    assert answer["completed_at"] == "2026-03-02T10:00:00+00:00"
    tick(database, playbook, NOW)  # the submission marked the account changed
    state = stored_states(database, ["acme"])["acme"]
    assert state["handoff"] == {"complete": True, "completed_at": "2026-03-02T10:00:00+00:00",
                                "missing": [], "gate": state["handoff"]["gate"]}
    assert handoff_complete(state) is True

    # A later change keeps the first completion time; emptying a required field reopens it.
    reopened = client.put("/api/accounts/acme/handoff", json={"commitments": []},
                          headers=csm).json()
    assert reopened["complete"] is False and reopened["missing"] == ["commitments"]
    assert reopened["completed_at"] == "2026-03-02T10:00:00+00:00"


def test_only_csm_and_admin_submit_and_an_unknown_account_is_a_404(client, database):
    assert client.put("/api/accounts/acme/handoff", json=COMPLETE,
                      headers=bearer(database, "viewer")).status_code == 403
    answer = client.put("/api/accounts/nobody/handoff", json=COMPLETE,
                        headers=bearer(database, "admin"))
    assert answer.status_code == 404
    assert client.put("/api/accounts/acme/handoff", content=b"{not json",
                      headers=bearer(database, "csm")).status_code == 400
    assert client.put("/api/accounts/acme/handoff", json=["a list"],
                      headers=bearer(database, "csm")).status_code == 400


def test_templates_read_the_handoff_record(client, database, playbook):
    from firstvalue.actions.dispatch import _load_context, _variables

    client.put("/api/accounts/acme/handoff", json=COMPLETE, headers=bearer(database, "csm"))
    context = _load_context(database, "acme", NOW)
    variables = _variables({"recipient": "champion", "contact": None, "run": 1, "facts": None},
                           context, True)
    assert variables["handoff"]["technical_requirements"]["crm"] == "salesforce"


def test_handoffs_import_from_csv_row_by_row(client, database, tmp_path):
    from click.testing import CliRunner

    from firstvalue.cli.main import cli

    rows = tmp_path / "handoffs.csv"
    rows.write_text(
        "account_id,use_case,stakeholders,success_criteria,technical_requirements,commitments\n"
        'acme,lead_enrichment,Kim Lee (champion) <kim@acme.example>; Ravi (economic buyer),'
        'leads in the CRM; a weekly report,"{""crm"": ""salesforce""}",a sandbox\n'
        "nobody,lead_enrichment,,,,\n"
        "acme,,Kim without a role,,,\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--db", database.url, "handoff", "import", str(rows),
                                      "--now", "2026-03-02T10:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "1 handoff(s) stored, 1 complete; 2 row(s) refused." in result.output
    assert "line 3: nobody" in result.output
    assert "line 4: acme: stakeholders: must be a list" in result.output
    shown = client.get("/api/accounts/acme/handoff", headers=bearer(database, "viewer")).json()
    assert shown["complete"] is True
    assert shown["record"]["stakeholders"] == [
        {"name": "Kim Lee", "role": "champion", "email": "kim@acme.example"},
        {"name": "Ravi", "role": "economic buyer"}]
    assert shown["record"]["success_criteria"] == ["leads in the CRM", "a weekly report"]
    assert shown["record"]["technical_requirements"] == {"crm": "salesforce"}


def test_a_handoff_field_declared_twice_is_refused_by_place():
    from firstvalue.errors import PlaybookError
    from firstvalue.playbook.loader import parse_playbook, read_default_text

    text = read_default_text().replace(
        "handoff:\n  gate:", "handoff:\n  fields:\n    - {key: use_case}\n"
        "    - {key: use_case}\n  gate:")
    with pytest.raises(PlaybookError, match="handoff.fields"):
        parse_playbook(text, "twice.yaml")


def test_the_text_backslash_u0000_is_kept_as_typed_and_only_a_real_nul_is_refused(
        client, database):
    csm = bearer(database, "csm")
    typed = client.put("/api/accounts/acme/handoff", headers=csm,
                       content=rb'{"use_case": "C:\\u0000dir"}')
    assert typed.status_code == 200, typed.text
    shown = client.get("/api/accounts/acme/handoff", headers=csm).json()
    assert shown["record"] == {"use_case": "C:\\u0000dir"}

    nul = client.put("/api/accounts/acme/handoff", headers=csm,
                     content=rb'{"use_case": "lead", "commitments": ["x\u0000y"]}')
    assert nul.status_code == 400 and "NUL" in nul.json()["error"]["message"]
    assert client.get("/api/accounts/acme/handoff", headers=csm).json()["record"] == {
        "use_case": "C:\\u0000dir"}
