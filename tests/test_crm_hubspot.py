"""The HubSpot sync against a local server that follows HubSpot's documented CRM v3 API."""

from __future__ import annotations

import pytest

from firstvalue.crm.hubspot import HubSpotConnector
from firstvalue.crm.sync import list_rows, retry_rows, sync_crm, sync_status
from tests.conftest import micros
from tests.crm_fakes import MILESTONE_OBJECT, TOKEN, HubSpotServer
from tests.crm_helpers import onboarding_account, send_and_tick, track

KEYS = ("account_configured", "data_connected", "first_workflow", "first_value", "second_user")


@pytest.fixture
def hubspot():
    server = HubSpotServer().start()
    server.add_company(name="Acme Inc", lifecyclestage="customer", hubspot_owner_id="77",
                       firstvalue_account_id="acme")
    yield server
    server.stop()


def connector_for(server) -> HubSpotConnector:
    return HubSpotConnector(server.url, TOKEN, MILESTONE_OBJECT)


def test_each_milestone_record_is_created_once_then_updated_never_duplicated(
        database, playbook, hubspot):
    connector = connector_for(hubspot)
    send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
    sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector])

    records = hubspot.milestones()
    assert sorted(r["firstvalue_milestone_key"] for r in records.values()) == sorted(KEYS)
    configured = next(r for r in records.values()
                      if r["firstvalue_milestone_key"] == "account_configured")
    assert configured["firstvalue_completed_on"] == "2026-03-03"
    assert configured["firstvalue_days_since_kickoff"] == "1"
    company_id = hubspot.objects["companies"].find("firstvalue_account_id", "acme")
    assert {(rid, company_id) for rid in records} == {
        (a[1], a[3]) for a in hubspot.associations}

    # Data arrives on day 3; the re-sync updates the same record.
    send_and_tick(database, playbook, "2026-03-05T12:00:00Z",
                  track("acme", "Data Source Connected", "2026-03-05T09:00:00Z"))
    sync_crm(database, micros("2026-03-05T12:00:00Z"), [connector])
    assert hubspot.milestones().keys() == records.keys()
    data = next(r for r in hubspot.milestones().values()
                if r["firstvalue_milestone_key"] == "data_connected")
    assert data["firstvalue_completed_on"] == "2026-03-05"
    assert data["firstvalue_days_since_kickoff"] == "3"
    assert len(hubspot.associations) == len(KEYS)  # each record associated once


def test_a_sync_with_nothing_changed_sends_nothing(database, playbook, hubspot):
    connector = connector_for(hubspot)
    send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
    sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector])
    sent = len(hubspot.requests)

    # Evaluated again the same day: the same fields, so nothing is planned or sent.
    send_and_tick(database, playbook, "2026-03-04T13:00:00Z",
                  track("acme", "Signed In", "2026-03-04T12:30:00Z"))
    result = sync_crm(database, micros("2026-03-04T13:00:00Z"), [connector])
    assert result.planned == {"hubspot": 0}
    assert len(hubspot.requests) == sent


def test_the_engine_writes_only_its_own_fields_and_never_a_field_the_crm_owns(
        database, playbook, hubspot):
    hubspot.company("acme")["firstvalue_account_id"] = "acme"
    send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
    sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector_for(hubspot)])

    company = hubspot.company("acme")
    assert company["name"] == "Acme Inc"  # not the account's own name, "Acme"
    assert company["lifecyclestage"] == "customer"
    assert company["hubspot_owner_id"] == "77"
    assert company["firstvalue_owner"] == "csm-ana"
    assert company["firstvalue_onboarding_stage"] == "onboarding"
    assert company["firstvalue_current_milestone"] == "data_connected"
    assert company["firstvalue_days_since_kickoff"] == "2"
    assert company["firstvalue_handoff_complete"] == "false"  # no handoff record yet
    written = {name for request in hubspot.requests if request.body
               for item in request.body.get("inputs", []) for name in item.get("properties", {})}
    assert written and all(name.startswith("firstvalue_") for name in written)


@pytest.mark.parametrize("multi_status", [False, True], ids=["refused_whole", "207"])
def test_a_batch_with_one_refused_record_writes_the_others_and_dead_letters_it(
        database, playbook, multi_status):
    # The CRM admin's dropdown of milestone keys lacks second_user: HubSpot refuses the whole
    # batch that holds it (a VALIDATION_ERROR), so the batch is split until it stands alone;
    # or, with multi-status errors, writes the others and lists it under `errors` (207).
    server = HubSpotServer(milestone_keys=KEYS[:-1]).start()
    server.multi_status = multi_status
    try:
        server.add_company(name="Acme Inc", firstvalue_account_id="acme")
        send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
        sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector_for(server)])

        landed = sorted(r["firstvalue_milestone_key"] for r in server.milestones().values())
        assert landed == sorted(KEYS[:-1])
        assert sync_status(database) == [{"connector": "hubspot", "pending": 0,
                                          "delivered": 5, "failed": 0, "dead": 1}]
        [dead] = list_rows(database)
        assert dead["record_id"] == "acme/second_user"
        assert dead["status"] == "dead"
        assert "second_user was not one of the allowed options" in dead["error"]

        # Once the admin adds the option, a retry lands it.
        server.objects[MILESTONE_OBJECT].properties["firstvalue_milestone_key"].options = KEYS
        assert retry_rows(database, micros("2026-03-04T13:00:00Z"), "hubspot") == 1
        sync_crm(database, micros("2026-03-04T13:00:00Z"), [connector_for(server)])
        assert len(server.milestones()) == len(KEYS)
        assert sync_status(database)[0]["delivered"] == 6
    finally:
        server.stop()


def test_a_429_is_honoured_until_its_retry_after_has_passed(database, playbook, hubspot):
    connector = connector_for(hubspot)
    send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
    hubspot.rate_limited = 1
    hubspot.retry_after = "7"
    sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector])
    assert len(hubspot.requests) == 1  # nothing more went after the 429
    failed = list_rows(database)
    assert {row["status"] for row in failed} == {"failed"}
    assert {row["next_attempt_at"] for row in failed} == {"2026-03-04T12:00:07+00:00"}
    assert {row["attempts"] for row in failed} == {0}  # a 429 is no fault of the rows

    sync_crm(database, micros("2026-03-04T12:00:03Z"), [connector])
    assert len(hubspot.requests) == 1  # still waiting
    sync_crm(database, micros("2026-03-04T12:00:08Z"), [connector])
    assert len(hubspot.milestones()) == len(KEYS)
    assert sync_status(database)[0]["delivered"] == 6


def test_a_stall_that_clears_is_cleared_in_the_crm(database, playbook, hubspot):
    connector = connector_for(hubspot)
    # No login from day 0 (2 March) on: inactivity is raised at the midnight ending day 4.
    send_and_tick(database, playbook, "2026-03-07T01:00:00Z", *onboarding_account())
    sync_crm(database, micros("2026-03-07T01:00:00Z"), [connector])
    assert hubspot.company("acme")["firstvalue_open_stall"] == "inactivity"

    send_and_tick(database, playbook, "2026-03-07T10:00:00Z",
                  track("acme", "Signed In", "2026-03-07T09:00:00Z"))
    sync_crm(database, micros("2026-03-07T10:00:00Z"), [connector])
    assert "firstvalue_open_stall" not in hubspot.company("acme")
    cleared = [r for r in hubspot.calls("companies/batch/update")
               if r.body["inputs"][0]["properties"].get("firstvalue_open_stall") == ""]
    assert cleared, "the clearing was sent as HubSpot's empty value"


def test_an_account_without_a_company_is_dead_lettered_with_the_fix(database, playbook):
    server = HubSpotServer().start()  # no company holds firstvalue_account_id = acme
    try:
        send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
        sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector_for(server)])
        rows = {row["record_id"]: row for row in list_rows(database)}
        assert rows["acme"]["status"] == "dead"
        assert "Could not get some COMPANY objects" in rows["acme"]["error"]
        assert "no company has firstvalue_account_id = 'acme'" in rows["acme"]["error"]
        assert "set that property" in rows["acme/first_value"]["error"]
        assert not server.objects["companies"].records  # the engine created no company
    finally:
        server.stop()


def test_without_a_connector_the_sync_touches_nothing(database, playbook, monkeypatch):
    for name in ("FIRSTVALUE_HUBSPOT_TOKEN", "FIRSTVALUE_SALESFORCE_URL",
                 "FIRSTVALUE_CRM_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
    result = sync_crm(database, micros("2026-03-04T12:00:00Z"))
    assert (result.planned, result.outcomes) == ({}, {})
    assert sync_status(database) == []
