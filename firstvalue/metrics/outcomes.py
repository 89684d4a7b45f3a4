"""What happened after onboarding, read from the store: churn, expansion, renewal, activity.

The outcome events are found by their meanings (`account_churned`, `expansion_closed`,
`renewal_closed`), so a playbook that maps them to its own tracking plan's names is followed; a
playbook without those meanings gets the default tracking plan's names. Only events dated at or
after the run's start and at or before `now` count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.facts import as_number
from firstvalue.store.database import Database

OUTCOME_MEANINGS = {"account_churned": "Account Churned", "expansion_closed": "Expansion Closed",
                    "renewal_closed": "Renewal Closed"}
ACTIVITY_MEANINGS = ("meaningful_action",)  # besides the playbook's `login` meaning
_decode = msgspec.json.decode
MAX_AMOUNT = 1e12  # an expansion amount past this counts as none


def meaning_names(playbook: CompiledPlaybook, meaning: str) -> list[str]:
    names = playbook.loaded.model.meanings.get(meaning)
    if names:
        return list(names)
    default = OUTCOME_MEANINGS.get(meaning)
    return [default] if default else []


def outcome_events(database: Database, playbook: CompiledPlaybook,
                   now: int) -> dict[str, list[tuple[str, int, float]]]:
    """Each account's outcome events up to `now`: (meaning, time, amount)."""
    kinds = {name: meaning for meaning in OUTCOME_MEANINGS
             for name in meaning_names(playbook, meaning)}
    statement = sa.text(
        "SELECT account_id, name, ts, properties FROM events WHERE type = 'track' "
        "AND name IN :names AND ts <= :now AND account_id IS NOT NULL"
    ).bindparams(sa.bindparam("names", expanding=True))
    with database.engine.connect() as conn:
        rows = conn.execute(statement, {"names": sorted(kinds), "now": now}).all()
    found: dict[str, list[tuple[str, int, float]]] = {}
    for account_id, name, ts, properties in rows:
        found.setdefault(account_id, []).append((kinds[name], ts, _amount(properties)))
    return found


def summarize_outcomes(events: Iterable[tuple[str, int, float]], started_at: int,
                       now: int) -> dict[str, Any]:
    """A run's first churn, its expansions (count and amount) and renewals, from the events
    dated from its start to `now`."""
    churned_at = None
    amount = 0.0
    expansions = renewals = 0
    for kind, ts, value in events:
        if ts < started_at or ts > now:
            continue
        if kind == "account_churned":
            churned_at = ts if churned_at is None else min(churned_at, ts)
        elif kind == "expansion_closed":
            expansions += 1
            amount += value
        else:
            renewals += 1
    return {"churned_at": churned_at, "expansion_amount": amount, "expansions": expansions,
            "renewals": renewals}


def _amount(properties: str) -> float:
    try:
        value = _decode(properties).get("amount")
    except (msgspec.DecodeError, AttributeError):
        return 0.0
    amount = as_number(value) or 0.0
    # No deal is worth a trillion; past that an amount is a mistake or mischief, and a few of
    # them would add up past a float's range and turn every total into inf or NaN.
    return amount if abs(amount) <= MAX_AMOUNT else 0.0


def active_between(database: Database, playbook: CompiledPlaybook,
                   windows: Sequence[tuple[str, int, int]]) -> set[str]:
    """The accounts with a login or a meaningful action in their window [start, end)."""
    model = playbook.loaded.model
    names = sorted({name for meaning in (model.login, *ACTIVITY_MEANINGS)
                    for name in model.meanings.get(meaning, [])})
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
