"""The API side of actions: in-app messages for the product, tasks completed, the timeline."""

from __future__ import annotations

import warnings

import pytest

from firstvalue.access import create_api_token
from firstvalue.api.app import create_app
from tests.conftest import micros
from tests.test_sequences import onboarding, simulate
from tests.test_timing_rules import SANDBOX

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NOW = micros("2026-03-13T12:00:00+01:00")  # day 11: the day-10 session task exists


@pytest.fixture
def client(database, playbook):
    workspace = (micros("2026-03-03T10:00:00+01:00"), {
        "type": "track", "messageId": "ws", "userId": "acme-champion",
        "event": "Workspace Created", "timestamp": "2026-03-03T10:00:00+01:00",
        "context": {"groupId": "acme"}})
    simulate(database, playbook, [*onboarding("acme"), workspace], until=NOW, deliver=SANDBOX)
    with TestClient(create_app(database, playbook, clock=lambda: NOW)) as test_client:
        yield test_client


def bearer(database, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_token(database, role, role, NOW)}"}


def test_the_product_fetches_and_acknowledges_its_in_app_messages(client, database):
    viewer = bearer(database, "viewer")
    assert client.post("/api/in-app/acme/acme-champion/ack", headers=viewer,
                       json={"key": "acme/acme-deal/setup_prompts/1"}).status_code == 403
    headers = bearer(database, "csm")
    answer = client.get("/api/in-app/acme/acme-champion", headers=headers).json()
    [message] = answer["messages"]
    assert message["key"] == "acme/acme-deal/setup_prompts/1"
    assert "invite a teammate" in message["body"]

    acked = client.post("/api/in-app/acme/acme-champion/ack", headers=headers,
                        json={"key": message["key"]})
    assert acked.status_code == 200
    assert client.get("/api/in-app/acme/acme-champion", headers=headers).json() == {
        "messages": []}
    again = client.post("/api/in-app/acme/acme-champion/ack", headers=headers,
                        json={"key": message["key"]})
    assert again.status_code == 404


def test_a_csm_completes_a_task_and_a_viewer_cannot(client, database):
    key = "acme/acme-deal/template_recommendation.session/1"
    refused = client.post("/api/tasks/done", headers=bearer(database, "viewer"),
                          json={"key": key})
    assert refused.status_code == 403
    done = client.post("/api/tasks/done", headers=bearer(database, "csm"), json={"key": key})
    assert done.status_code == 200
    actions = client.get("/api/actions", params={"account": "acme"},
                         headers=bearer(database, "viewer")).json()["actions"]
    task = next(a for a in actions if a["key"] == key)
    assert task["done_at"] == "2026-03-13T11:00:00+00:00"
    assert task["changed_by"] == "token:csm"
    assert client.post("/api/tasks/done", headers=bearer(database, "csm"),
                       json={"key": key}).status_code == 404
    assert client.post("/api/tasks/done", headers=bearer(database, "csm"),
                       content=b"nope").status_code == 400


def test_the_account_answers_why_each_action_happened(client, database):
    account = client.get("/api/accounts/acme", headers=bearer(database, "viewer")).json()
    tutorial = next(a for a in account["actions"] if a["rule"] == "integration_tutorial")
    assert "day 3 since kickoff" in tutorial["reason"]
    assert tutorial["playbook_version"].startswith("default@")
    kinds = {entry["type"] for entry in account["timeline"]}
    assert {"event", "action", "escalation"} <= kinds


def test_the_openapi_document_needs_a_token(client, database):
    assert client.get("/openapi.json").status_code == 404
    assert client.get("/api/openapi.json").status_code == 401
    spec = client.get("/api/openapi.json", headers=bearer(database, "viewer")).json()
    assert "/api/accounts/{account_id}" in spec["paths"]
