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

from firstvalue.errors import FirstvalueError, UnknownAccount
from firstvalue.playbook.model import HandoffField, HandoffSettings
from firstvalue.store import events as event_store

_encode = msgspec.json.encode
_decode = msgspec.json.decode
MAX_TEXT = 2000
MAX_ITEMS = 50


class HandoffError(FirstvalueError):
    """A handoff submission with unknown or malformed fields; `problems` names each one."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems))


def check_handoff(settings: HandoffSettings, submitted: Any) -> tuple[dict[str, Any], list[str]]:
    """The record to store and the required fields it lacks; HandoffError when any field is
    unknown or malformed."""
    if not isinstance(submitted, dict):
        raise HandoffError([("(body)", "send the handoff as a JSON object of its fields")])
    fields = {field.key: field for field in settings.fields}
    problems = [(name, f"not a handoff field; the fields are {', '.join(fields)}")
                for name in submitted if name not in fields]
    record = {}
    for name, value in submitted.items():
        field = fields.get(name)
        if field is None or _empty(value):
            continue
        why = _shape_problem(field, value)
        if why:
            problems.append((name, why))
        else:
            record[name] = value
    if problems:
        raise HandoffError(problems)
    missing = [f.key for f in settings.fields if f.required and f.key not in record]
    return record, missing


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _shape_problem(field: HandoffField, value: Any) -> str | None:
    if field.kind == "text":
        if not isinstance(value, str):
            return f"must be text, not {type(value).__name__}"
        return f"longer than {MAX_TEXT} characters" if len(value) > MAX_TEXT else None
    if field.kind == "object":
        if not isinstance(value, dict):
            return "must be an object, e.g. {\"crm\": \"salesforce\"}"
        return "too large" if len(_encode(value)) > 10 * MAX_TEXT else None
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        return f"must be a list of at most {MAX_ITEMS} entries"
    if field.kind == "list":
        bad = [i for i, item in enumerate(value)
               if not isinstance(item, str) or not item.strip() or len(item) > MAX_TEXT]
        return f"entry {bad[0]} must be non-empty text" if bad else None
    for index, person in enumerate(value):  # people
        if not isinstance(person, dict):
            return f"entry {index} must be an object with name and role"
        for key in ("name", "role"):
            if not isinstance(person.get(key), str) or not person[key].strip():
                return f"entry {index} needs a `{key}` (text)"
        unknown = set(person) - {"name", "role", "email", "title"}
        if unknown:
            return f"entry {index} has unknown keys {sorted(unknown)}; use name, role, email, title"
    return None


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
    merged = {**(_decode(before.record) if before else {}), **(submitted or {})} \
        if isinstance(submitted, dict) else submitted
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
        conn, "SELECT account_id, record, missing, completed_at FROM handoffs "
              "WHERE account_id IN :ids", account_ids)
    return {r[0]: {"record": _decode(r[1]), "missing": _decode(r[2]), "completed_at": r[3]}
            for r in rows}


def handoff_json(conn: sa.Connection, settings: HandoffSettings,
                 account_id: str) -> dict[str, Any]:
    """The handoff as `GET /api/accounts/{id}/handoff` shows it; an account without one has
    every required field missing."""
    from firstvalue.clock import isoformat

    stored = load_handoffs(conn, [account_id]).get(account_id)
    if stored is None:
        missing = [f.key for f in settings.fields if f.required]
        return {"account_id": account_id, "record": {}, "missing": missing, "complete": False,
                "completed_at": None}
    return {"account_id": account_id, "record": stored["record"], "missing": stored["missing"],
            "complete": not stored["missing"], "completed_at": isoformat(stored["completed_at"])}
