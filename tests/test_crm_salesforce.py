"""The Salesforce sync against a local server that follows the Salesforce REST API's upsert by
external id."""

from __future__ import annotations

import pytest

from firstvalue.crm.salesforce import SalesforceConnector
from firstvalue.crm.sync import list_rows, sync_crm, sync_status
from tests.conftest import micros
from tests.crm_fakes import SF_TOKEN, SalesforceServer
from tests.crm_helpers import onboarding_account, send_and_tick, track


@pytest.fixture
def salesforce():
    server = SalesforceServer().start()
    yield server
    server.stop()


def connector_for(server, token: str = SF_TOKEN) -> SalesforceConnector:
    return SalesforceConnector(server.url, token)


def test_milestones_are_upserted_by_external_id_and_linked_to_their_account(
        database, playbook, salesforce):
    account = salesforce.add_account(Name="Acme Inc", Type="Customer",
                                     Firstvalue_Account_Id__c="acme")
    send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
    sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector_for(salesforce)])

    milestones = salesforce.records["Onboarding_Milestone__c"]
    assert len(milestones) == 5
    assert {m["Account__c"] for m in milestones.values()} == {account}
    configured = next(m for m in milestones.values()
                      if m["Firstvalue_Milestone_Key__c"] == "account_configured")
    assert configured["Firstvalue_Completed_On__c"] == "2026-03-03"
    fields = salesforce.records["Account"][account]
    assert fields["Name"] == "Acme Inc" and fields["Type"] == "Customer"  # the CRM's own
    assert fields["Firstvalue_Onboarding_Stage__c"] == "onboarding"
    assert fields["Firstvalue_Days_Since_Kickoff__c"] == 2

    send_and_tick(database, playbook, "2026-03-05T12:00:00Z",
                  track("acme", "Data Source Connected", "2026-03-05T09:00:00Z"))
    sync_crm(database, micros("2026-03-05T12:00:00Z"), [connector_for(salesforce)])
    assert len(salesforce.records["Onboarding_Milestone__c"]) == 5  # updated, not duplicated
    assert sync_status(database)[0]["delivered"] == 6
    assert all(r.method == "PATCH" for r in salesforce.requests)
    assert all("updateOnly=true" in r.path for r in salesforce.calls("/Account/"))


def test_an_account_salesforce_does_not_have_is_never_created_and_is_dead_lettered(
        database, playbook, salesforce):
    send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
    sync_crm(database, micros("2026-03-04T12:00:00Z"), [connector_for(salesforce)])
    assert salesforce.records["Account"] == {}
    rows = {row["record_id"]: row for row in list_rows(database)}
    assert rows["acme"]["status"] == "dead"
    assert "NOT_FOUND" in rows["acme"]["error"]
    assert "Foreign key external ID: acme not found" in rows["acme/first_value"]["error"]


def test_an_expired_token_fails_for_a_retry_without_leaking_the_token(
        database, playbook, salesforce):
    salesforce.add_account(Name="Acme Inc", Firstvalue_Account_Id__c="acme")
    send_and_tick(database, playbook, "2026-03-04T12:00:00Z", *onboarding_account())
    sync_crm(database, micros("2026-03-04T12:00:00Z"),
             [connector_for(salesforce, token="00Dexpired!token")])
    rows = list_rows(database)
    assert {row["status"] for row in rows} == {"failed"}
    assert all("INVALID_SESSION_ID" in row["error"] for row in rows)
    assert not any("00Dexpired" in row["error"] for row in rows)
