"""What happened after onboarding, read from the store: churn, expansion, renewal, activity.

The outcome events are found by their meanings (`account_churned`, `expansion_closed`,
`renewal_closed`), so a playbook that maps them to its own tracking plan's names is followed; a
playbook without those meanings gets the default tracking plan's names. Only events dated at or
after the run's start and at or before `now` count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.metrics.runs import RunRecord
from firstvalue.store.database import Database

OUTCOME_MEANINGS = {"account_churned": "Account Churned", "expansion_closed": "Expansion Closed",
                    "renewal_closed": "Renewal Closed"}
ACTIVITY_MEANINGS = ("login", "meaningful_action")
_decode = msgspec.json.decode


def meaning_names(playbook: CompiledPlaybook, meaning: str) -> list[str]:
    names = playbook.loaded.model.meanings.get(meaning)
    if names:
        return list(names)
    default = OUTCOME_MEANINGS.get(meaning)
    return [default] if default else []


def attach_outcomes(database: Database, playbook: CompiledPlaybook,
                    records: list[RunRecord]) -> list[RunRecord]:
    """The records with their churn time, expansion amount and count, and renewals."""
    if not records:
        return records
    kinds = {name: meaning for meaning in OUTCOME_MEANINGS
             for name in meaning_names(playbook, meaning)}
    now = max(record.now for record in records)
    statement = sa.text(
        "SELECT account_id, name, ts, properties FROM events WHERE type = 'track' "
        "AND name IN :names AND ts <= :now AND account_id IS NOT NULL"
    ).bindparams(sa.bindparam("names", expanding=True))
    with database.engine.connect() as conn:
        rows = conn.execute(statement, {"names": sorted(kinds), "now": now}).all()
    by_account: dict[str, list[Any]] = {}
    for row in rows:
        by_account.setdefault(row[0], []).append(row)
    return [_with_outcomes(record, by_account.get(record.account_id, ()), kinds)
            for record in records]


def _with_outcomes(record: RunRecord, rows: Iterable[Any],
                   kinds: dict[str, str]) -> RunRecord:
    churned_at = None
    amount = 0.0
    expansions = renewals = 0
    for _, name, ts, properties in rows:
        if ts < record.started_at or ts > record.now:
            continue
        kind = kinds[name]
        if kind == "account_churned":
            churned_at = ts if churned_at is None else min(churned_at, ts)
        elif kind == "expansion_closed":
            expansions += 1
            amount += _amount(properties)
        else:
            renewals += 1
    return replace(record, churned_at=churned_at, expansion_amount=amount,
                   expansions=expansions, renewals=renewals)


def _amount(properties: str) -> float:
    try:
        value = _decode(properties).get("amount")
    except (msgspec.DecodeError, AttributeError):
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def active_between(database: Database, playbook: CompiledPlaybook,
                   windows: Sequence[tuple[str, int, int]]) -> set[str]:
    """The accounts with a login or a meaningful action in their window [start, end)."""
    names = sorted({name for meaning in ACTIVITY_MEANINGS
                    for name in playbook.loaded.model.meanings.get(meaning, [])})
    if not windows or not names:
        return set()
    payload = msgspec.json.encode([list(w) for w in windows]).decode()
    with database.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # The windows go in as one JSON array; the (account_id, ts) index finds the events.
            sql = ("SELECT DISTINCT e.account_id FROM json_each(:windows) w JOIN events e "
                   "ON e.account_id = json_extract(w.value, '$[0]') "
                   "AND e.ts >= json_extract(w.value, '$[1]') "
                   "AND e.ts < json_extract(w.value, '$[2]') "
                   "WHERE e.type = 'track' AND e.name IN :names")
        else:
            sql = ("SELECT DISTINCT e.account_id "
                   "FROM json_array_elements(CAST(:windows AS json)) w "
                   "JOIN events e ON e.account_id = w->>0 AND e.ts >= CAST(w->>1 AS bigint) "
                   "AND e.ts < CAST(w->>2 AS bigint) "
                   "WHERE e.type = 'track' AND e.name IN :names")
        statement = sa.text(sql).bindparams(sa.bindparam("names", expanding=True))
        return set(conn.execute(statement, {"windows": payload, "names": names}).scalars())
