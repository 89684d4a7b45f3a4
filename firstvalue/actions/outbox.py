"""The outbox: actions written in the transaction of the state that caused them.

Every action has a key (account, run, rule, occurrence) and the store refuses a second row with
the same key, so "once" is a property of the data: two workers evaluating the same account at the
same moment insert one row between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.engine.rules import PlannedAction
from firstvalue.store.database import ManyRows, execute_many

_encode = msgspec.json.encode
HOUR = 3_600_000_000
STATUSES = ("pending", "sent", "failed", "dead", "cancelled", "suppressed")
ALERT_KINDS = ("slack", "task", "flag", "email")


def actions_by_account(conn: sa.Connection, alias: str = "") -> str:
    """The actions table, for a query that picks rows by account and by status: on SQLite,
    told to use the account index. Without statistics SQLite prefers the status index there,
    and reads every sent action of every account for each account asked about (measured:
    the demo's ticks spent 10.5 s of 155 on one such query; the dispatcher's daily-cap count
    did the same)."""
    table = f"actions {alias}".rstrip()
    return f"{table} INDEXED BY ix_actions_account" if conn.dialect.name == "sqlite" else table


def existing_actions(conn: sa.Connection,
                     account_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The outbox rows of these accounts, by account and key (what `reconcile` compares)."""
    from firstvalue.store.events import select_in

    found: dict[str, dict[str, Any]] = {}
    # Routing's alerts are not the engine's to reconcile: its plan never holds them.
    for row in select_in(conn, "SELECT account_id, key, status, resolved_at FROM actions "
                               "WHERE account_id IN :ids AND rule NOT LIKE 'routing.%'",
                         account_ids):
        found.setdefault(row.account_id, {})[row.key] = row
    return found


@dataclass
class OutboxChanges:
    """Outbox writes gathered over many accounts, applied in one statement each."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[dict[str, Any]] = field(default_factory=list)
    resolutions: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: OutboxChanges) -> None:
        self.inserts += other.inserts
        self.cancels += other.cancels
        self.resolutions += other.resolutions

    def apply(self, conn: sa.Connection) -> None:
        execute_many(conn, _INSERT_ACTIONS, self.inserts)
        execute_many(conn, _CANCEL_ACTIONS, self.cancels)
        execute_many(conn, _RESOLVE_ACTIONS, self.resolutions)
        self.inserts, self.cancels, self.resolutions = [], [], []


_ACTION_COLUMNS = ("key, account_id, run, rule, kind, recipient, contact, template, status, "
                   "due_at, not_before, next_attempt_at, created_at, reason, facts, "
                   "playbook_version")
_INSERT_ACTIONS = ManyRows(
    f"INSERT INTO actions ({_ACTION_COLUMNS}) VALUES (:key, :account_id, :run, :rule, :kind, "
    ":recipient, :contact, :template, :status, :due_at, :not_before, :next_attempt_at, :now, "
    ":reason, :facts, :version) ON CONFLICT (key) DO NOTHING",
    f"INSERT INTO actions ({_ACTION_COLUMNS}) SELECT key, account_id, run, rule, kind, "
    "recipient, contact, template, status, due_at, not_before, next_attempt_at, now, reason, "
    "facts, version FROM {rows} ON CONFLICT (key) DO NOTHING",
    "key text, account_id text, run integer, rule text, kind text, recipient text, "
    "contact text, template text, status text, due_at bigint, not_before bigint, "
    "next_attempt_at bigint, now bigint, reason text, facts text, version text")
_CANCEL_ACTIONS = ManyRows(
    "UPDATE actions SET status = 'cancelled', reason = :reason, resolved_at = :now, "
    "next_attempt_at = NULL WHERE key = :key AND status IN ('pending', 'failed')",
    "UPDATE actions AS a SET status = 'cancelled', reason = r.reason, resolved_at = r.now, "
    "next_attempt_at = NULL FROM {rows} WHERE a.key = r.key "
    "AND a.status IN ('pending', 'failed')",
    "key text, reason text, now bigint")
_RESOLVE_ACTIONS = ManyRows(
    "UPDATE actions SET resolved_at = :now WHERE key = :key",
    "UPDATE actions AS a SET resolved_at = r.now FROM {rows} WHERE a.key = r.key",
    "key text, now bigint")


def reconcile(changes: OutboxChanges, account_id: str, planned: Sequence[PlannedAction],
              playbook_version: str, late_limit_hours: int, now: int,
              existing: dict[str, Any], track: str | None = None) -> int:
    """Bring the account's outbox rows (`existing`) in line with what the playbook asks for
    at `now`, adding the writes to `changes`.

    New due actions are inserted (pending, or suppressed as `backfill` when the fact that made
    them due arrived past the late limit); pending rows the plan no longer holds are cancelled
    with the reason; sent alerts whose condition has cleared are marked resolved. Returns the
    number of rows to insert.
    """
    wanted = {action.key: action for action in planned}
    inserts = [_new_row(action, account_id, playbook_version, late_limit_hours, now)
               for key, action in wanted.items() if key not in existing]
    changes.inserts += inserts

    for key, row in existing.items():
        action = wanted.get(key)
        if row.status in ("pending", "failed") and (action is None
                                                     or action.status == "cancelled"
                                                     or _stall_over(action)):
            changes.cancels.append({"key": key, "reason": _cancel_reason(action, track),
                                    "now": now})
        elif row.status == "sent" and action is not None and action.cleared \
                and row.resolved_at is None:
            changes.resolutions.append({"key": key, "now": now})
    return len(inserts)


STALL_OVER = "cancelled: the stall was over before this was sent; "


def _cancel_reason(action: PlannedAction | None, track: str | None) -> str:
    if action is None:
        return ("cancelled: the rule no longer applies (its condition now holds, the playbook "
                "changed, or the account moved to another track"
                + (f": it is on the {track} track now" if track else "") + ")")
    return STALL_OVER + action.reason if _stall_over(action) else action.reason


def _stall_over(action: PlannedAction) -> bool:
    """A stall's intervention whose spell ended: not worth sending any more."""
    return action.cleared and action.rule.startswith("stall.")


def _new_row(action: PlannedAction, account_id: str, version: str, late_limit_hours: int,
             now: int) -> dict[str, Any]:
    status = "pending"
    reason = action.reason
    if action.status == "cancelled":
        status = "cancelled"
    elif action.late_news(late_limit_hours):
        # Late news does not act on the past (shared/DESIGN.md "Time", rule 10).
        status = "suppressed"
        hours = (action.known_at - action.due_at) / HOUR
        reason = (f"backfill: the fact that made it due arrived {hours:.0f} hours after it was "
                  f"due, past the late limit of {late_limit_hours} hours; {reason}")
    elif _stall_over(action):
        status, reason = "cancelled", STALL_OVER + reason
    return {"key": action.key, "account_id": account_id, "run": action.run,
            "rule": action.rule, "kind": action.kind, "recipient": action.to,
            "contact": action.actor, "template": action.template, "status": status,
            "due_at": action.due_at,
            # Lateness counts from when the engine could first have acted: not before the
            # fact that made the action due had arrived.
            "not_before": max(action.due_at, action.known_at),
            "next_attempt_at": action.due_at if status == "pending" else None,
            "now": now, "reason": reason, "facts": _encode(action.facts).decode(),
            "version": version}


def list_actions(conn: sa.Connection, account_ids: Iterable[str] | None = None,
                 statuses: Iterable[str] | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM actions WHERE 1 = 1"
    params: dict[str, Any] = {}
    statement_binds = []
    if account_ids is not None:
        sql += " AND account_id IN :accounts"
        params["accounts"] = list(account_ids)
        statement_binds.append(sa.bindparam("accounts", expanding=True))
    if statuses is not None:
        sql += " AND status IN :statuses"
        params["statuses"] = list(statuses)
        statement_binds.append(sa.bindparam("statuses", expanding=True))
    statement = sa.text(sql + " ORDER BY due_at, key").bindparams(*statement_binds)
    return [dict(row._mapping) for row in conn.execute(statement, params)]


def action_json(row: dict[str, Any]) -> dict[str, Any]:
    """An outbox row as `firstvalue actions --json` and the API show it."""
    from firstvalue.clock import isoformat

    data = {
        "key": row["key"], "account_id": row["account_id"], "run": row["run"],
        "rule": row["rule"], "kind": row["kind"], "status": row["status"],
        "recipient": row["recipient"], "due_at": isoformat(row["due_at"]),
        "sent_at": isoformat(row["sent_at"]), "late": bool(row["late"]),
        "reason": row["reason"], "error": row["error"],
        "resolved_at": isoformat(row["resolved_at"]),
        # When delivery is tried next: a pending row waiting for the send window, the daily
        # cap, a channel not set up or a retry says when it goes.
        "next_attempt_at": isoformat(row["next_attempt_at"])
        if row["status"] in ("pending", "failed") else None,
        "attempts": row["attempts"], "playbook_version": row["playbook_version"],
        "facts": msgspec.json.decode(row["facts"]) if row["facts"] else {},
    }
    if row["kind"] in ("task", "in_app"):
        data["done_at"] = isoformat(row["done_at"])  # task completed, in-app acknowledged
    data["assignee"] = row.get("assignee")  # internal actions: the address it went to
    data["changed_by"] = row.get("changed_by")  # who last sent, cancelled, closed or snoozed it
    return data


def complete_task(conn: sa.Connection, key: str, now: int, by: str | None = None) -> bool:
    """Mark a task done, by whom where known; False when there is no open task with that key."""
    return conn.execute(sa.text(
        "UPDATE actions SET done_at = :now, changed_by = COALESCE(:by, changed_by) "
        "WHERE key = :key AND kind = 'task' AND status = 'sent' AND done_at IS NULL"),
        {"key": key, "now": now, "by": by}).rowcount == 1


def replay_skipped(conn: sa.Connection, keys: Sequence[str]) -> dict[str, str]:
    """The keys `replay` would not touch, each with why (unknown, or its status)."""
    if not keys:
        return {}
    statement = sa.text("SELECT key, status FROM actions WHERE key IN :keys").bindparams(
        sa.bindparam("keys", expanding=True))
    found = dict(conn.execute(statement, {"keys": list(keys)}).all())
    return {key: ("no such action" if key not in found else f"it is {found[key]}")
            for key in keys if found.get(key) not in ("dead", "failed")}


def replay(conn: sa.Connection, keys: Sequence[str], endpoint: str | None, now: int) -> int:
    """Put dead (or failed) actions back in line; re-enable an endpoint and replay its rows."""
    count = 0
    if endpoint is not None:
        conn.execute(sa.text("UPDATE endpoints SET disabled_at = NULL WHERE name = :n"),
                     {"n": endpoint})
        count += conn.execute(sa.text(
            "UPDATE actions SET status = 'pending', next_attempt_at = :now, attempts = 0 "
            "WHERE status = 'dead' AND (kind = :n OR (kind = 'slack' AND :n = 'email'))"),
            {"n": endpoint, "now": now}).rowcount
    if keys:
        statement = sa.text(
            "UPDATE actions SET status = 'pending', next_attempt_at = :now, attempts = 0 "
            "WHERE status IN ('dead', 'failed') AND key IN :keys").bindparams(
            sa.bindparam("keys", expanding=True))
        count += conn.execute(statement, {"keys": list(keys), "now": now}).rowcount
    return count
