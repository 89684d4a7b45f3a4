"""Stall history: the episodes as the engine recorded them, kept as they happened.

The engine works episodes out afresh on every evaluation. Here they are compared with what was
recorded: a new episode is recorded (with when the engine learned of it), a closed one gets its
closing time, and a recorded episode the events no longer support is retracted, never deleted:
a late login dated before the stall shows the stall was wrong. History only grows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.engine.stalls import Episode
from firstvalue.store.events import select_in

_encode = msgspec.json.encode


def recorded_stalls(conn: sa.Connection,
                    account_ids: Iterable[str]) -> dict[str, dict[tuple[int, str], Any]]:
    found: dict[str, dict[tuple[int, str], Any]] = {}
    for row in select_in(conn, "SELECT account_id, run, identity, status, closed_at "
                               "FROM stalls WHERE account_id IN :ids", account_ids):
        found.setdefault(row.account_id, {})[(row.run, row.identity)] = row
    return found


def record_stalls(conn: sa.Connection, account_id: str, run: int | None,
                  episodes: Sequence[Episode], recorded: dict[tuple[int, str], Any],
                  now: int) -> None:
    current = {(run, e.identity): e for e in episodes} if run is not None else {}
    inserts, closes, retractions = [], [], []
    for key, episode in current.items():
        row = recorded.get(key)
        status = "open" if episode.closed_at is None else "closed"
        if row is None:
            inserts.append({"a": account_id, "run": key[0], "identity": episode.identity,
                            "rule": episode.rule, "kind": episode.kind,
                            "milestone": episode.milestone, "diagnosis": episode.diagnosis,
                            "opened": episode.opened_at, "closed": episode.closed_at,
                            "status": status, "evidence": _encode(episode.evidence).decode(),
                            "now": now})
        elif row.status != status or row.closed_at != episode.closed_at:
            closes.append({"a": account_id, "run": key[0], "identity": episode.identity,
                           "status": status, "closed": episode.closed_at})
    for key, row in recorded.items():
        if key not in current and row.status != "retracted":
            retractions.append({"a": account_id, "run": key[0], "identity": key[1], "now": now})
    if inserts:
        conn.execute(sa.text(
            "INSERT INTO stalls (account_id, run, identity, rule, kind, milestone, diagnosis, "
            "opened_at, closed_at, status, evidence, recorded_at) VALUES (:a, :run, :identity, "
            ":rule, :kind, :milestone, :diagnosis, :opened, :closed, :status, :evidence, :now) "
            "ON CONFLICT (account_id, run, identity) DO NOTHING"), inserts)
    if closes:
        conn.execute(sa.text("UPDATE stalls SET status = :status, closed_at = :closed "
                             "WHERE account_id = :a AND run = :run AND identity = :identity"),
                     closes)
    if retractions:
        conn.execute(sa.text(
            "UPDATE stalls SET status = 'retracted', retracted_at = :now WHERE account_id = :a "
            "AND run = :run AND identity = :identity"), retractions)
