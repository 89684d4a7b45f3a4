"""The sales-to-CS handoff record: what was sold, to whom, and what was promised.

The playbook declares the fields (`handoff.fields`) and which are required. A submission is
checked field by field: an unknown field or a value of the wrong shape refuses the whole
submission, naming each field, and stores nothing. A valid submission is stored even with
required fields missing (the AE may fill it in over several sittings); it is complete once
every required field holds a value, and `completed_at` keeps when that first happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.engine.handoff import HandoffError, check_handoff, missing_fields, parse_person
from firstvalue.errors import UnknownAccount
from firstvalue.playbook.model import HandoffSettings
from firstvalue.store import events as event_store

_encode = msgspec.json.encode
_decode = msgspec.json.decode
__all__ = ["HandoffError", "check_handoff", "handoff_json", "load_handoffs", "missing_fields",
           "submit_handoff"]


def submit_handoff(conn: sa.Connection, settings: HandoffSettings, account_id: str,
                   submitted: Any, now: int, submitted_by: str | None) -> dict[str, Any]:
    """Check and store a submission (merged over the fields stored before: a field sent
    empty clears it); the stored record as `handoff_json` gives it."""
    known = conn.execute(sa.text("SELECT 1 FROM accounts WHERE id = :a"),
                         {"a": account_id}).first()
    if known is None:
        raise UnknownAccount(account_id)
    before = conn.execute(sa.text("SELECT record, completed_at FROM handoffs WHERE "
                                  "account_id = :a"), {"a": account_id}).first()
    # Fields the playbook no longer declares are dropped from what was stored, not held
    # against the new submission.
    declared = {field.key for field in settings.fields}
    kept = {k: v for k, v in (_decode(before.record) if before else {}).items() if k in declared}
    merged = {**kept, **(submitted or {})} if isinstance(submitted, dict) else submitted
    record, missing = check_handoff(settings, merged)
    completed_at = before.completed_at if before and before.completed_at else (
        None if missing else now)
    values = {"a": account_id, "r": _encode(record).decode(), "m": _encode(missing).decode(),
              "c": completed_at, "at": now, "by": submitted_by}
    conn.execute(sa.text(
        "INSERT INTO handoffs (account_id, record, missing, completed_at, submitted_at, "
        "submitted_by) VALUES (:a, :r, :m, :c, :at, :by) ON CONFLICT (account_id) DO UPDATE "
        "SET record = :r, missing = :m, completed_at = :c, submitted_at = :at, "
        "submitted_by = :by"), values)
    event_store.mark_changed(conn, [account_id])
    return {"account_id": account_id, "record": record, "missing": missing,
            "complete": not missing, "completed_at": completed_at, "submitted_at": now}


def load_handoffs(conn: sa.Connection, account_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The stored handoffs of these accounts: record, missing fields, completion time."""
    rows = event_store.select_in(
        conn, "SELECT account_id, record, missing, completed_at, submitted_at FROM handoffs "
              "WHERE account_id IN :ids", account_ids)
    return {r[0]: {"record": _decode(r[1]), "missing": _decode(r[2]), "completed_at": r[3],
                   "submitted_at": r[4]} for r in rows}


def handoff_json(conn: sa.Connection, settings: HandoffSettings,
                 account_id: str) -> dict[str, Any]:
    """The handoff as `GET /api/accounts/{id}/handoff` shows it; an account without one has
    every required field missing. UnknownAccount for an account the store does not hold."""
    from firstvalue.clock import isoformat

    if conn.execute(sa.text("SELECT 1 FROM accounts WHERE id = :a"),
                    {"a": account_id}).first() is None:
        raise UnknownAccount(account_id)
    stored = load_handoffs(conn, [account_id]).get(account_id)
    if stored is None:
        missing = [f.key for f in settings.fields if f.required]
        return {"account_id": account_id, "record": {}, "missing": missing, "complete": False,
                "completed_at": None, "submitted_at": None}
    missing = missing_fields(settings, stored["record"])
    return {"account_id": account_id, "record": stored["record"], "missing": missing,
            "complete": not missing, "completed_at": isoformat(stored["completed_at"]),
            "submitted_at": isoformat(stored["submitted_at"])}


def handoff_rows(settings: HandoffSettings, text: str) -> list[tuple[int, str, dict[str, Any]]]:
    """The rows of a handoff CSV: (line, account id, fields), each cell read by its field's
    kind. Columns: `account_id`, then fields. `text`: the cell; `list`: entries separated by
    `;`; `people`: `Name (role)` or `Name (role) <email>` entries separated by `;`; `object`:
    JSON. A cell that does not read as its kind is passed on as text, for the field rules to
    name. An empty cell leaves the field as stored."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "account_id" not in reader.fieldnames:
        raise HandoffError([("(header)", "the first line must name the columns: account_id, "
                             "then the handoff's fields")])
    kinds = {field.key: field.kind for field in settings.fields}
    rows = []
    for line, row in enumerate(reader, start=2):
        if None in row:
            raise HandoffError([(f"line {line}", "more cells than columns")])
        account = (row.pop("account_id") or "").strip()
        fields = {name: _cell(kinds.get(name, "text"), cell.strip())
                  for name, cell in row.items() if cell and cell.strip()}
        rows.append((line, account, fields))
    return rows


def _cell(kind: str, cell: str) -> Any:
    if kind == "object":
        try:
            return _decode(cell)
        except msgspec.DecodeError:
            return cell
    if kind == "text":
        return cell
    parts = [part.strip() for part in cell.split(";") if part.strip()]
    if kind == "list":
        return parts
    people = [parse_person(part) for part in parts]
    if not all(people):
        return cell
    return people


def import_handoffs(conn: sa.Connection, settings: HandoffSettings, text: str, now: int,
                    source: str) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Submit every row; a row with a problem is reported with its line and not stored, and
    the others go on (each row is a submission of its own)."""
    stored, problems = [], []
    for line, account, fields in handoff_rows(settings, text):
        if not account:
            problems.append((line, "account_id is empty"))
            continue
        savepoint = conn.begin_nested()
        try:
            stored.append(submit_handoff(conn, settings, account, fields, now, source))
        except (HandoffError, UnknownAccount) as exc:
            savepoint.rollback()
            problems.append((line, f"{account}: {exc}"))
        else:
            savepoint.commit()
    return stored, problems
