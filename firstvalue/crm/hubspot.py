"""The HubSpot connector, through HubSpot's CRM v3 API (developers.hubspot.com, "CRM API |
Companies", "Custom objects", "Associations v4" and "Error handling").

Account fields go to the company whose id property (FIRSTVALUE_HUBSPOT_ID_PROPERTY, by default
`firstvalue_account_id`) holds the account's id: a batch update by that unique property, so
the engine never creates a company. Milestones are records of a custom object
(FIRSTVALUE_HUBSPOT_MILESTONE_OBJECT), upserted in batches by their own unique property
`firstvalue_milestone_id`, so a record is created once and updated after; a new one is then
associated with its company.

HubSpot refuses a whole batch when one input is bad; the batch is then split in halves until
the bad record stands alone, so the others still land and that one alone is dead-lettered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

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
from firstvalue.crm.records import ACCOUNT, MILESTONE

log = logging.getLogger(__name__)

MILESTONE_ID_PROPERTY = "firstvalue_milestone_id"
PREFIX = "firstvalue_"
BATCH_LIMIT = 100  # HubSpot's batch endpoints take at most 100 inputs

Write = Callable[[list[SyncRow]], dict[int, Outcome]]


class HubSpotConnector:
    name = "hubspot"
    _client: httpx.Client  # open while a batch is pushed
    batch_size = BATCH_LIMIT

    def __init__(self, base_url: str, token: str, milestone_object: str,
                 id_property: str = "firstvalue_account_id") -> None:
        self.base_url = base_url.rstrip("/")
        self.milestone_object = milestone_object
        self.id_property = id_property
        self._headers = {"authorization": f"Bearer {token}"}

    def push(self, rows: list[SyncRow]) -> list[Outcome]:
        # One client (its connections kept alive) for the batch, closed with it.
        with http_client() as self._client:
            return self._push(rows)

    def _push(self, rows: list[SyncRow]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        companies = [row for row in rows if row.record_type == ACCOUNT]
        milestones = [row for row in rows if row.record_type == MILESTONE]
        try:
            write_in_halves(companies, self._update_companies, outcomes)
            write_in_halves(milestones, self._upsert_milestones, outcomes)
        except RateLimited as exc:
            for row in rows:
                if row.id not in outcomes:
                    outcomes[row.id] = Outcome(row.id, FAILED, str(exc),
                                               retry_after=exc.retry_after)
        return list(outcomes.values())

    def _update_companies(self, rows: list[SyncRow]) -> dict[int, Outcome]:
        inputs = [{"id": row.account_id, "idProperty": self.id_property,
                   "properties": {self.id_property: row.account_id,
                                  **hubspot_properties(row.fields)}} for row in rows]
        try:
            _, body = self._post("/crm/v3/objects/companies/batch/update", {"inputs": inputs})
        except RemoteError as exc:
            if exc.status != 404:
                raise
            ids = ", ".join(repr(row.account_id) for row in rows)
            raise RemoteError(404, f"{exc} (no company has {self.id_property} = {ids}; set "
                              "that property on the account's company)") from None
        found = {str((r.get("properties") or {}).get(self.id_property)): str(r.get("id"))
                 for r in (body or {}).get("results", [])}
        landed = [row for row in rows if row.account_id in found or not _has_errors(body)]
        outcomes = {row.id: Outcome(row.id, DELIVERED, remote_id=found.get(row.account_id))
                    for row in landed}
        return {**outcomes, **self._refused_in(rows, landed, body, self._update_companies)}

    def _upsert_milestones(self, rows: list[SyncRow]) -> dict[int, Outcome]:
        inputs = [{"id": row.record_id, "idProperty": MILESTONE_ID_PROPERTY,
                   "properties": {MILESTONE_ID_PROPERTY: row.record_id,
                                  **hubspot_properties(row.fields)}} for row in rows]
        path = f"/crm/v3/objects/{self.milestone_object}/batch/upsert"
        _, body = self._post(path, {"inputs": inputs})
        created = {str((r.get("properties") or {}).get(MILESTONE_ID_PROPERTY)): str(r.get("id"))
                   for r in (body or {}).get("results", [])}
        landed = [row for row in rows if row.record_id in created or not _has_errors(body)]
        unassociated = [row for row in landed if row.remote_id is None]
        return {**{row.id: Outcome(row.id, DELIVERED, remote_id=row.remote_id)
                   for row in landed if row.remote_id is not None},
                **self._associate(unassociated, created),
                **self._refused_in(rows, landed, body, self._upsert_milestones)}

    def _refused_in(self, rows: list[SyncRow], landed: list[SyncRow], body: Any,
                    write: Write) -> dict[int, Outcome]:
        """The rows a 207 answer left out (HubSpot's multi-status errors): a lone one is
        dead, with HubSpot's message; several are written again, halves at a time, to tell
        the refused from the others."""
        missing = [row for row in rows if row not in landed]
        if not missing:
            return {}
        if len(missing) == 1:
            errors = (body or {}).get("errors") or [{}]
            message = "; ".join(str(e.get("message") or e.get("category")) for e in errors)
            log.warning("HubSpot refused sync row %s; it is dead-lettered.", missing[0].id)
            return {missing[0].id: Outcome(missing[0].id, DEAD,
                                           f"{missing[0].record_id}: 207 {message[:500]}")}
        outcomes: dict[int, Outcome] = {}
        middle = len(missing) // 2
        write_in_halves(missing[:middle], write, outcomes)
        write_in_halves(missing[middle:], write, outcomes)
        return outcomes

    def _associate(self, rows: list[SyncRow], created: dict[str, str]) -> dict[int, Outcome]:
        """Associate new milestone records with their companies; a row counts as delivered
        (with its HubSpot id) once its association is made, so a failed one is tried again."""
        if not rows:
            return {}
        companies = self._company_ids({row.account_id for row in rows})
        outcomes: dict[int, Outcome] = {}
        pairs = []
        for row in rows:
            company = companies.get(row.account_id)
            record = created.get(row.record_id)
            if record is None:
                outcomes[row.id] = Outcome(row.id, FAILED, (
                    f"HubSpot's answer did not include the record {row.record_id!r}; it is "
                    "written again"))
                continue
            if company is None:
                outcomes[row.id] = Outcome(row.id, FAILED, (
                    f"no HubSpot company has {self.id_property} = {row.account_id!r}; set that "
                    "property on the account's company, then the record is associated with it"))
                continue
            pairs.append((row, record, company))
        if pairs:
            path = f"/crm/v4/associations/{self.milestone_object}/companies/batch/associate/default"
            self._post(path, {"inputs": [{"from": {"id": record}, "to": {"id": company}}
                                         for _, record, company in pairs]})
        for row, record, _ in pairs:
            outcomes[row.id] = Outcome(row.id, DELIVERED, remote_id=record)
        return outcomes

    def _company_ids(self, account_ids: set[str]) -> dict[str, str]:
        """HubSpot's ids of the companies holding these account ids (a 207 answer lists the
        ones not found under `errors`)."""
        _, body = self._post("/crm/v3/objects/companies/batch/read", {
            "idProperty": self.id_property, "properties": [self.id_property],
            "inputs": [{"id": account_id} for account_id in sorted(account_ids)]})
        return {str((r.get("properties") or {}).get(self.id_property)): str(r.get("id"))
                for r in (body or {}).get("results", [])}

    def _post(self, path: str, body: Any) -> tuple[int, Any]:
        return send_json(self._client, "POST", self.base_url + path, body, self._headers)


def _has_errors(body: Any) -> bool:
    return isinstance(body, dict) and bool(body.get("errors"))


def hubspot_properties(fields: dict[str, Any]) -> dict[str, str]:
    """The engine's fields as HubSpot properties; an empty string clears a property."""
    return {PREFIX + name: _hubspot_value(value) for name, value in fields.items()}


def _hubspot_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_in_halves(rows: list[SyncRow], write: Write, outcomes: dict[int, Outcome]) -> None:
    """Write `rows` with `write`, adding each row's outcome to `outcomes`. When the CRM refuses
    a batch, each half of it is written on its own, down to single records, so that one bad
    record keeps no other from landing. A refused single record is dead; an outage fails the
    rows it reached, to be retried. RateLimited goes up to the caller, with what landed before
    it already in `outcomes`."""
    batches = [rows] if rows else []
    while batches:
        batch = batches.pop()
        try:
            outcomes.update(write(batch))
        except RemoteError as exc:
            if not exc.permanent:
                outcomes.update({row.id: Outcome(row.id, FAILED, str(exc)) for row in batch})
            elif len(batch) == 1:
                log.warning("HubSpot refused sync row %s; it is dead-lettered.", batch[0].id)
                outcomes[batch[0].id] = Outcome(batch[0].id, DEAD,
                                                f"{batch[0].record_id}: {exc}")
            else:
                middle = len(batch) // 2
                batches += [batch[middle:], batch[:middle]]
