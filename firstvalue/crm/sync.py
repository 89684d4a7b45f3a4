"""Keeping the CRM in step with the engine: which records changed, pushing them, their status.

After each tick, `plan_sync` turns the state of every account evaluated since the connector's
last look into CRM records and compares each with the one kept for it: a record whose fields
are what was already planned is left alone, so a sync with nothing changed writes and sends
nothing. `push_due` then hands the rows due to the connector, in batches, and records each
row's outcome: delivered, failed (retried with backoff, or after the CRM's Retry-After), or
dead once its attempts are used up, until `retry_rows` gives it another go.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.crm.connector import DEAD, DELIVERED, FAILED, Connector, Outcome, SyncRow
from firstvalue.crm.records import CrmRecord, records_from_state
from firstvalue.errors import ConfigError
from firstvalue.settings import get_int_setting, get_setting
from firstvalue.store.database import Database
from firstvalue.store.events import select_in

log = logging.getLogger(__name__)

PENDING = "pending"
STATUSES = (PENDING, DELIVERED, FAILED, DEAD)
SECOND = 1_000_000
LEASE = 600 * SECOND
LONGEST_WAIT = 6 * 3600 * SECOND
# Accounts evaluated this long before the connector's last look are looked at again: a tick
# that began before that look may commit after it.
CURSOR_MARGIN = 600 * SECOND
_decode = msgspec.json.decode


def _encode(fields: dict[str, Any]) -> str:
    return msgspec.json.encode(fields, order="sorted").decode()


@dataclass
class SyncResult:
    planned: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)


def configured_connectors() -> list[Connector]:
    """The connectors the settings turn on, in a fixed order."""
    from firstvalue.crm.hubspot import HubSpotConnector
    from firstvalue.crm.salesforce import SalesforceConnector
    from firstvalue.crm.webhook import WebhookConnector

    connectors: list[Connector] = []
    token = get_setting("hubspot_token")
    if token:
        milestone_object = get_setting("hubspot_milestone_object")
        if not milestone_object:
            raise ConfigError("FIRSTVALUE_HUBSPOT_TOKEN is set but "
                              "FIRSTVALUE_HUBSPOT_MILESTONE_OBJECT is not; set it to the "
                              "milestone custom object's objectTypeId, e.g. 2-1234567")
        connectors.append(HubSpotConnector(get_setting("hubspot_url") or "", token,
                                           milestone_object,
                                           get_setting("hubspot_id_property") or ""))
    url, token = get_setting("salesforce_url"), get_setting("salesforce_token")
    if url and token:
        connectors.append(SalesforceConnector(
            url, token, get_setting("salesforce_api_version") or "v60.0",
            get_setting("salesforce_id_field") or "",
            get_setting("salesforce_milestone_object") or ""))
    url, secret = get_setting("crm_webhook_url"), get_setting("crm_webhook_secret")
    if url and secret:
        connectors.append(WebhookConnector(url, secret))
    return connectors


def sync_crm(database: Database, now: int,
             connectors: Sequence[Connector] | None = None) -> SyncResult:
    """Plan, then push, for every connector (the configured ones when None). Without any
    connector this touches nothing, so an install with no CRM pays nothing for it."""
    if connectors is None:
        connectors = configured_connectors()
    result = SyncResult()
    if not connectors:
        return result
    result.planned = plan_sync(database, [c.name for c in connectors], now)
    for connector in connectors:
        result.outcomes[connector.name] = push_due(database, connector, now)
    return result


def plan_sync(database: Database, connector_names: Sequence[str], now: int) -> dict[str, int]:
    """Mark the records whose fields changed as pending; the count per connector.

    The states are read and compared on a read connection; the write lock is taken only to
    write the rows that changed, so ingest does not wait while states are decoded."""
    changed: dict[str, int] = {}
    records_of: dict[str, list[CrmRecord]] = {}
    for name in connector_names:
        with database.engine.connect() as conn:
            cursor = conn.execute(sa.text(
                "SELECT evaluated_at FROM crm_cursors WHERE connector = :c"),
                {"c": name}).scalar()
            since = -1 if cursor is None else cursor - CURSOR_MARGIN
            accounts = conn.execute(sa.text(
                "SELECT id, state, evaluated_at FROM accounts WHERE state IS NOT NULL "
                "AND evaluated_at >= :since"), {"since": since}).all()
            records = []
            for account_id, state, _ in accounts:
                if account_id not in records_of:
                    records_of[account_id] = _records(state)
                records += records_of[account_id]
            inserts, updates = _changes(conn, name, records, now)
        latest = max((row[2] for row in accounts), default=cursor)
        changed[name] = len(inserts) + len(updates)
        if not changed[name] and latest == cursor:
            continue  # nothing new: not even the write lock is taken
        with database.write() as conn:
            _write_changes(conn, inserts, updates)
            if latest is not None:
                _save_cursor(conn, name, latest)
    return changed


def _records(state_text: str) -> list[CrmRecord]:
    state = _decode(state_text)
    if "error" in state or not state.get("run"):
        return []  # no contract, no onboarding to show in the CRM
    return records_from_state(state)


def _changes(conn: sa.Connection, connector: str, records: list[CrmRecord],
             now: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows to insert (records never planned) and to update (records whose fields
    changed since they were last planned)."""
    if not records:
        return [], []
    kept = {(row[0], row[1]): row[2] for row in select_in(
        conn, "SELECT record_type, record_id, desired FROM crm_sync WHERE connector = :c "
        "AND account_id IN :ids", {r.account_id for r in records}, c=connector)}
    inserts, updates = [], []
    for record in records:
        desired = _encode(record.fields)
        previous = kept.get((record.record_type, record.record_id))
        values = {"c": connector, "t": record.record_type, "r": record.record_id,
                  "a": record.account_id, "d": desired, "now": now}
        if previous is None:
            inserts.append(values)
        elif previous != desired:
            updates.append(values)
    return inserts, updates


def _write_changes(conn: sa.Connection, inserts: list[dict[str, Any]],
                   updates: list[dict[str, Any]]) -> None:
    if inserts:
        # ON CONFLICT: another process may have planned the same new record meanwhile.
        conn.execute(sa.text(
            "INSERT INTO crm_sync (connector, record_type, record_id, account_id, desired, "
            "status, attempts, next_attempt_at, changed_at) VALUES (:c, :t, :r, :a, :d, "
            "'pending', 0, :now, :now) ON CONFLICT (connector, record_type, record_id) "
            "DO NOTHING"), inserts)
    if updates:
        conn.execute(sa.text(
            "UPDATE crm_sync SET desired = :d, status = 'pending', attempts = 0, error = NULL, "
            "next_attempt_at = :now, changed_at = :now WHERE connector = :c "
            "AND record_type = :t AND record_id = :r AND desired <> :d"), updates)


def _save_cursor(conn: sa.Connection, connector: str, evaluated_at: int) -> None:
    conn.execute(sa.text(
        "INSERT INTO crm_cursors (connector, evaluated_at) VALUES (:c, :e) "
        "ON CONFLICT (connector) DO UPDATE SET evaluated_at = :e"),
        {"c": connector, "e": evaluated_at})


def push_due(database: Database, connector: Connector, now: int) -> dict[str, int]:
    """Push every row due at `now`, batch after batch; the outcomes counted by status. A 429
    ends the round: nothing more goes to that CRM before its Retry-After."""
    counts = dict.fromkeys((DELIVERED, FAILED, DEAD), 0)
    while True:
        claimed = _claim(database, connector, now)
        if not claimed:
            return counts
        rows = [SyncRow(r.id, r.record_type, r.record_id, r.account_id, _decode(r.desired),
                        r.remote_id) for r in claimed]
        try:
            outcomes = connector.push(rows)
        except Exception as exc:  # a connector's bug must not leave its rows leased
            log.exception("The %s connector failed unexpectedly.", connector.name)
            outcomes = [Outcome(row.id, FAILED, f"unexpected error: {type(exc).__name__}")
                        for row in rows]
        _record(database, claimed, outcomes, now)
        for outcome in outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if any(o.retry_after is not None for o in outcomes):
            return counts


def _claim(database: Database, connector: Connector, now: int) -> list[Any]:
    with database.engine.connect() as conn:
        # A read first: most rounds find nothing due and need not take the write lock.
        due = conn.execute(sa.text(
            "SELECT 1 FROM crm_sync WHERE connector = :c AND status IN ('pending', 'failed') "
            "AND next_attempt_at <= :now LIMIT 1"), {"c": connector.name, "now": now}).first()
    if due is None:
        return []
    lock = "" if database.is_sqlite else " FOR UPDATE SKIP LOCKED"
    with database.write() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, record_type, record_id, account_id, desired, remote_id, attempts "
            "FROM crm_sync WHERE connector = :c AND status IN ('pending', 'failed') "
            f"AND next_attempt_at <= :now ORDER BY next_attempt_at, id LIMIT :n{lock}"),
            {"c": connector.name, "now": now, "n": connector.batch_size}).all()
        if rows:
            conn.execute(sa.text("UPDATE crm_sync SET next_attempt_at = :lease WHERE id = :id"),
                         [{"id": r.id, "lease": now + LEASE} for r in rows])
    return rows


_DELIVERED_SQL = (
    "UPDATE crm_sync SET pushed = :sent, status = 'delivered', attempts = 0, error = NULL, "
    "next_attempt_at = NULL, delivered_at = :now, remote_id = COALESCE(:remote, remote_id) "
    "WHERE id = :id AND next_attempt_at = :lease")
_DEAD_SQL = (
    "UPDATE crm_sync SET status = 'dead', attempts = attempts + 1, error = :error, "
    "next_attempt_at = NULL WHERE id = :id AND next_attempt_at = :lease")
# A 429 is no fault of the row's: it waits without using up an attempt (:used is 0).
_FAILED_SQL = (
    "UPDATE crm_sync SET status = 'failed', attempts = attempts + :used, error = :error, "
    "next_attempt_at = :next WHERE id = :id AND next_attempt_at = :lease")


def _record(database: Database, claimed: list[Any], outcomes: list[Outcome], now: int) -> None:
    """Record each row's outcome. `AND next_attempt_at = :lease` in each statement: a row
    planned again meanwhile (new fields) stays pending with its new fields, and this outcome,
    about the old ones, is dropped."""
    by_id = {row.id: row for row in claimed}
    limit = get_int_setting("sync_max_attempts")
    batches: dict[str, list[dict[str, Any]]] = {_DELIVERED_SQL: [], _DEAD_SQL: [],
                                                _FAILED_SQL: []}
    for outcome in outcomes:
        row = by_id.get(outcome.row_id)
        if row is None:
            continue
        values = {"id": row.id, "lease": now + LEASE, "now": now, "sent": row.desired,
                  "error": outcome.error, "remote": outcome.remote_id}
        rate_limited = outcome.retry_after is not None
        if outcome.status == DELIVERED:
            batches[_DELIVERED_SQL].append(values)
        elif outcome.status == DEAD or (row.attempts + 1 >= limit and not rate_limited):
            batches[_DEAD_SQL].append(values)
        else:
            values["next"] = now + _wait(row.attempts + 1, outcome.retry_after)
            values["used"] = 0 if rate_limited else 1
            batches[_FAILED_SQL].append(values)
    with database.write() as conn:
        for sql, values in batches.items():
            if values:
                conn.execute(sa.text(sql), values)


def _wait(attempt: int, retry_after: float | None) -> int:
    if retry_after is not None:
        return int(min(retry_after * SECOND, LONGEST_WAIT))
    return min(30 * SECOND * 2 ** (attempt - 1), LONGEST_WAIT)


def sync_status(database: Database, connector_names: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows per connector and status: the configured connectors, and any with rows."""
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT connector, status, COUNT(*) FROM crm_sync GROUP BY connector, status")).all()
    counts: dict[str, dict[str, int]] = {name: dict.fromkeys(STATUSES, 0)
                                         for name in connector_names}
    for connector, status, count in rows:
        counts.setdefault(connector, dict.fromkeys(STATUSES, 0))[status] = count
    return [{"connector": name, **counts[name]} for name in sorted(counts)]


def list_rows(database: Database, statuses: Sequence[str] = (FAILED, DEAD),
              connector: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Sync rows with the given statuses (by default the ones that need a look), newest first."""
    from firstvalue.clock import isoformat

    sql = ("SELECT connector, record_type, record_id, account_id, status, attempts, error, "
           "next_attempt_at, changed_at, delivered_at FROM crm_sync WHERE status IN :ids")
    params: dict[str, Any] = {"n": limit}
    if connector:
        sql += " AND connector = :c"
        params["c"] = connector
    sql += " ORDER BY changed_at DESC, id DESC LIMIT :n"
    with database.engine.connect() as conn:
        rows = select_in(conn, sql, list(statuses), **params)
    return [{"connector": r.connector, "record_type": r.record_type, "record_id": r.record_id,
             "account_id": r.account_id, "status": r.status, "attempts": r.attempts,
             "error": r.error, "next_attempt_at": isoformat(r.next_attempt_at),
             "changed_at": isoformat(r.changed_at), "delivered_at": isoformat(r.delivered_at)}
            for r in rows]


def retry_rows(database: Database, now: int, connector: str | None = None,
               record_ids: Sequence[str] = ()) -> int:
    """Make failed and dead rows due again now, with their attempts reset; how many."""
    sql = ("UPDATE crm_sync SET status = 'pending', attempts = 0, next_attempt_at = :now, "
           "error = NULL WHERE status IN ('failed', 'dead')")
    params: dict[str, Any] = {"now": now}
    if connector:
        sql += " AND connector = :c"
        params["c"] = connector
    with database.write() as conn:
        if not record_ids:
            return conn.execute(sa.text(sql), params).rowcount
        from firstvalue.store.events import execute_in

        return execute_in(conn, sql + " AND record_id IN :ids", record_ids, **params)
