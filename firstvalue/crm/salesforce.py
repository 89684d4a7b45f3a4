"""The Salesforce connector, through its REST API (developer.salesforce.com, REST API
Developer Guide, "Insert or Update (Upsert) a Record Using an External ID").

Each record is one `PATCH /services/data/vXX.X/sobjects/OBJECT/EXTERNAL_ID_FIELD/VALUE`:
milestones are upserted into a custom object (by default `Onboarding_Milestone__c`) by their
external id `Firstvalue_Milestone_Id__c`, with their Account looked up by the account's
external id; account fields update the Account whose external id field (by default
`Firstvalue_Account_Id__c`) holds the account id, with `updateOnly=true`, so the engine never
creates an Account.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from firstvalue.crm.connector import (
    DEAD,
    DELIVERED,
    FAILED,
    Outcome,
    RateLimited,
    RemoteError,
    SyncRow,
    http_client,
    send_json,
)
from firstvalue.crm.records import ACCOUNT

MILESTONE_ID_FIELD = "Firstvalue_Milestone_Id__c"
ACCOUNT_LOOKUP = "Account__r"


class SalesforceConnector:
    name = "salesforce"
    _client: httpx.Client  # open while a batch is pushed
    batch_size = 50

    def __init__(self, instance_url: str, token: str, api_version: str = "v60.0",
                 id_field: str = "Firstvalue_Account_Id__c",
                 milestone_object: str = "Onboarding_Milestone__c") -> None:
        self.base = f"{instance_url.rstrip('/')}/services/data/{api_version}/sobjects"
        self.id_field = id_field
        self.milestone_object = milestone_object
        self._headers = {"authorization": f"Bearer {token}"}

    def push(self, rows: list[SyncRow]) -> list[Outcome]:
        # One client (its connections kept alive) for the batch, closed with it.
        with http_client() as self._client:
            return self._push(rows)

    def _push(self, rows: list[SyncRow]) -> list[Outcome]:
        outcomes = []
        for index, row in enumerate(rows):
            try:
                outcomes.append(self._upsert(row))
            except RateLimited as exc:
                outcomes += [Outcome(r.id, FAILED, str(exc), retry_after=exc.retry_after)
                             for r in rows[index:]]
                break
            except RemoteError as exc:
                # REQUEST_LIMIT_EXCEEDED is Salesforce's own "come back later" (a 403).
                later = not exc.permanent or "REQUEST_LIMIT_EXCEEDED" in str(exc)
                outcomes.append(Outcome(row.id, FAILED if later else DEAD,
                                        f"{row.record_id}: {exc}"))
        return outcomes

    def _upsert(self, row: SyncRow) -> Outcome:
        if row.record_type == ACCOUNT:
            url = f"{self.base}/Account/{self.id_field}/{quote(row.account_id, safe='')}"
            body = salesforce_fields(row.fields)
            url += "?updateOnly=true"
        else:
            url = (f"{self.base}/{self.milestone_object}/{MILESTONE_ID_FIELD}/"
                   f"{quote(row.record_id, safe='')}")
            fields = {k: v for k, v in row.fields.items() if k != "account_id"}
            body = {**salesforce_fields(fields),
                    ACCOUNT_LOOKUP: {self.id_field: row.account_id}}
        _, answer = send_json(self._client, "PATCH", url, body, self._headers)
        remote = answer.get("id") if isinstance(answer, dict) else None
        return Outcome(row.id, DELIVERED, remote_id=remote or row.remote_id)


def salesforce_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The engine's fields under their Salesforce API names; null clears a field."""
    return {salesforce_name(name): value for name, value in fields.items()}


def salesforce_name(field: str) -> str:
    return "Firstvalue_" + "_".join(part.capitalize() for part in field.split("_")) + "__c"
