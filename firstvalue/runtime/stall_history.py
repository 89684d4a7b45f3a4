"""Stall history: the episodes as the engine recorded them, kept as they happened.

The engine works episodes out afresh on every evaluation. Here they are compared with what was
recorded: a new episode is recorded (with when the engine learned of it), a closed one gets its
closing time, and a recorded episode the events no longer support is retracted, never deleted:
a late login dated before the stall shows the stall was wrong. History only grows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.engine.stalls import Episode
from firstvalue.store.database import ManyRows, execute_many
from firstvalue.store.events import select_in

_encode = msgspec.json.encode


def recorded_stalls(conn: sa.Connection,
                    account_ids: Iterable[str]) -> dict[str, dict[tuple[int, str], Any]]:
    found: dict[str, dict[tuple[int, str], Any]] = {}
    for row in select_in(conn, "SELECT account_id, run, identity, status, closed_at "
                               "FROM stalls WHERE account_id IN :ids", account_ids):
        found.setdefault(row.account_id, {})[(row.run, row.identity)] = row
    return found


@dataclass
class StallChanges:
    """Stall history writes gathered over many accounts, applied in one statement each."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
    closes: list[dict[str, Any]] = field(default_factory=list)
    retractions: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: StallChanges) -> None:
        self.inserts += other.inserts
        self.closes += other.closes
        self.retractions += other.retractions

    def apply(self, conn: sa.Connection) -> None:
        execute_many(conn, _INSERT_STALLS, self.inserts)
        execute_many(conn, _CLOSE_STALLS, self.closes)
        execute_many(conn, _RETRACT_STALLS, self.retractions)
        self.inserts, self.closes, self.retractions = [], [], []


_STALL_COLUMNS = ("account_id, run, identity, rule, kind, milestone, diagnosis, opened_at, "
                  "closed_at, status, evidence, recorded_at")
_INSERT_STALLS = ManyRows(
    f"INSERT INTO stalls ({_STALL_COLUMNS}) VALUES (:a, :run, :identity, :rule, :kind, "
    ":milestone, :diagnosis, :opened, :closed, :status, :evidence, :now) "
    "ON CONFLICT (account_id, run, identity) DO NOTHING",
    f"INSERT INTO stalls ({_STALL_COLUMNS}) SELECT a, run, identity, rule, kind, milestone, "
    "diagnosis, opened, closed, status, evidence, now FROM {rows} "
    "ON CONFLICT (account_id, run, identity) DO NOTHING",
    "a text, run integer, identity text, rule text, kind text, milestone text, "
    "diagnosis text, opened bigint, closed bigint, status text, evidence text, now bigint")
_CLOSE_STALLS = ManyRows(
    "UPDATE stalls SET status = :status, closed_at = :closed WHERE account_id = :a "
    "AND run = :run AND identity = :identity",
    "UPDATE stalls AS s SET status = r.status, closed_at = r.closed FROM {rows} "
    "WHERE s.account_id = r.a AND s.run = r.run AND s.identity = r.identity",
    "a text, run integer, identity text, status text, closed bigint")
_RETRACT_STALLS = ManyRows(
    "UPDATE stalls SET status = 'retracted', retracted_at = :now WHERE account_id = :a "
    "AND run = :run AND identity = :identity",
    "UPDATE stalls AS s SET status = 'retracted', retracted_at = r.now FROM {rows} "
    "WHERE s.account_id = r.a AND s.run = r.run AND s.identity = r.identity",
    "a text, run integer, identity text, now bigint")


def record_stalls(changes: StallChanges, account_id: str, run: int | None,
                  episodes: Sequence[Episode], recorded: dict[tuple[int, str], Any],
                  now: int) -> None:
    """Compare the episodes with the recorded ones, adding the writes to `changes`."""
    current = {(run, e.identity): e for e in episodes} if run is not None else {}
    for key, episode in current.items():
        row = recorded.get(key)
        status = "open" if episode.closed_at is None else "closed"
        if row is None:
            changes.inserts.append({
                "a": account_id, "run": key[0], "identity": episode.identity,
                "rule": episode.rule, "kind": episode.kind, "milestone": episode.milestone,
                "diagnosis": episode.diagnosis, "opened": episode.opened_at,
                "closed": episode.closed_at, "status": status,
                "evidence": _encode(episode.evidence).decode(), "now": now})
        elif row.status != status or row.closed_at != episode.closed_at:
            changes.closes.append({"a": account_id, "run": key[0],
                                   "identity": episode.identity, "status": status,
                                   "closed": episode.closed_at})
    for key, row in recorded.items():
        if key not in current and row.status != "retracted":
            changes.retractions.append({"a": account_id, "run": key[0], "identity": key[1],
                                        "now": now})


NEXT_STEPS = {
    "integration_blocker": "Unblock the data connection: offer sandbox mode and a concierge "
                           "integration session with their IT.",
    "champion_quiet": "Reach the champion directly and multi-thread: contact the account's "
                      "other stakeholders, with the AE if there is one.",
    "scope_creep": "Narrow the scope: agree on one use case and take it to a first result.",
    "unknown": "Read the account's timeline and call the champion to find what is in the way.",
}


def stall_queue(states: Sequence[Any], retracted: Sequence[dict[str, Any]], now: int,
                include_closed: bool = False) -> list[dict[str, Any]]:
    """Stalls riskiest first (lower tier, longer stalled, larger ARR), from the states
    evaluated at `now`, with the recorded retracted ones when asked for."""
    queue = []
    for state in states:
        for stall in state.stalls:
            if stall["status"] != "open" and not include_closed:
                continue
            queue.append(_queue_entry(stall, state, now))
    queue += retracted
    queue.sort(key=lambda s: (s["tier"] if s["tier"] is not None else 99, -s["days_stalled"],
                              -(s["arr"] or 0), s["account_id"], s["opened_at"]))
    return queue


def _queue_entry(stall: dict[str, Any], state: Any, now: int) -> dict[str, Any]:
    from datetime import datetime

    from firstvalue.clock import to_micros

    opened = to_micros(datetime.fromisoformat(stall["opened_at"]))
    end = to_micros(datetime.fromisoformat(stall["closed_at"])) if stall["closed_at"] else now
    return {**stall, "name": state.name, "tier": state.tier, "owner": state.owner,
            "arr": state.arr,
            "days_stalled": max(0, (end - opened) // 86_400_000_000),
            "next_step": NEXT_STEPS.get(stall["diagnosis"], NEXT_STEPS["unknown"])}


def retracted_stalls(conn: sa.Connection) -> list[dict[str, Any]]:
    from firstvalue.clock import isoformat

    rows = conn.execute(sa.text("SELECT * FROM stalls WHERE status = 'retracted'")).all()
    return [{"account_id": r.account_id, "rule": r.rule, "kind": r.kind,
             "milestone": r.milestone, "diagnosis": r.diagnosis,
             "opened_at": isoformat(r.opened_at), "closed_at": isoformat(r.closed_at),
             "status": "retracted", "retracted_at": isoformat(r.retracted_at),
             "evidence": msgspec.json.decode(r.evidence), "name": None, "tier": None,
             "owner": None, "arr": None, "days_stalled": 0,
             "next_step": "None: the events showed this stall was wrong."} for r in rows]


def stall_queue_at(database: Any, playbook: Any, now: int,
                   include_all: bool = False) -> list[dict[str, Any]]:
    """The stall queue as `firstvalue stalls` and `GET /api/stalls` show it, at `now`."""
    from firstvalue.runtime.evaluation import evaluate_accounts

    states = evaluate_accounts(database, playbook, now)
    retracted: list[dict[str, Any]] = []
    if include_all:
        with database.engine.connect() as conn:
            retracted = retracted_stalls(conn)
    return stall_queue(states, retracted, now, include_closed=include_all)
