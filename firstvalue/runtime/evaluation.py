"""Loading facts from the store, running the engine, writing the state back.

`tick` evaluates only the accounts that changed since their last evaluation, whose wake-up time
has come, or that were evaluated with another playbook version. Read commands evaluate at the
time they are asked for without writing anything (`evaluate_accounts`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.actions.outbox import existing_actions, reconcile
from firstvalue.engine import AccountFacts, EventFact, evaluate_account
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.evaluate import AccountState
from firstvalue.runtime.experiments import Assignments
from firstvalue.runtime.stall_history import record_stalls, recorded_stalls
from firstvalue.store import events as event_store
from firstvalue.store.database import Database
from firstvalue.store.traits import plain_traits

log = logging.getLogger(__name__)

_decode = msgspec.json.decode
_encode = msgspec.json.encode
BATCH = 500


@dataclass(frozen=True)
class TickResult:
    evaluated: int
    attached_held: int
    playbook_version: str


def load_facts(conn: sa.Connection, playbook: CompiledPlaybook,
               account_ids: Iterable[str] | None = None) -> Iterator[AccountFacts]:
    """The facts of the given accounts (all accounts when None), in account id order."""
    names = sorted(playbook.relevant_names)
    if account_ids is None:
        # In parts, like the given ids: the events of every account at once would hold the
        # whole event table in memory (past 1 GB at a million events).
        accounts = conn.execute(sa.text("SELECT id, traits FROM accounts ORDER BY id")).all()
        for start in range(0, len(accounts), BATCH):
            yield from _facts_for(conn, accounts[start:start + BATCH], names)
        return
    ids = sorted(set(account_ids))
    for part in event_store.chunks(ids, BATCH):
        accounts = event_store.select_in(
            conn, "SELECT id, traits FROM accounts WHERE id IN :ids ORDER BY id", part)
        yield from _facts_for(conn, accounts, names)


def _facts_for(conn: sa.Connection, accounts: list[Any],
               names: list[str]) -> Iterator[AccountFacts]:
    if not accounts:
        return
    ids = [row[0] for row in accounts]
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    sql = ("SELECT account_id, message_id, name, ts, user_id, properties, "
           "COALESCE(attached_at, received_at) FROM events WHERE type = 'track' AND name IN ("
           + ", ".join([mark] * len(names)) + ") AND account_id "
           + "IN (" + ", ".join([mark] * len(ids)) + ")")
    # The driver's own cursor: this loop reads every event of every account evaluated, and
    # SQLAlchemy's row objects cost more than the rows themselves here.
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(sql, [*names, *ids])
    rows = cursor

    events: dict[str, list[EventFact]] = {account_id: [] for account_id in ids}
    actors: set[str] = set()
    for account_id, message_id, name, ts, actor, properties, known in rows:
        bucket = events.get(account_id)
        if bucket is not None:
            bucket.append(EventFact(message_id, name, ts, actor, properties, known))
            if actor is not None:
                actors.add(actor)
    cursor.close()

    members = _members(conn, ids)
    contacts = _load_contacts(conn, actors | {m for group in members.values() for m in group})
    for account_id, traits in accounts:
        account_events = events[account_id]
        people = {e.actor for e in account_events} | members.get(account_id, set())
        account_contacts = {actor: contacts[actor] for actor in people if actor in contacts}
        yield AccountFacts(account_id, _decode(traits), tuple(account_events), account_contacts)


def _members(conn: sa.Connection, ids: list[str]) -> dict[str, set[str]]:
    """Each account's contacts by group membership, whether or not they acted yet."""
    rows = event_store.select_in(
        conn, "SELECT account_id, user_id FROM memberships WHERE account_id IN :ids", ids)
    members: dict[str, set[str]] = {}
    for account_id, user_id in rows:
        members.setdefault(account_id, set()).add(user_id)
    return members


def _load_contacts(conn: sa.Connection, actors: set[str]) -> dict[str, dict[str, Any]]:
    rows = event_store.select_in(
        conn, "SELECT user_id, traits FROM contacts WHERE user_id IN :ids", actors)
    return {user_id: plain_traits(_decode(traits)) for user_id, traits in rows}


def evaluate_safely(facts: AccountFacts, playbook: CompiledPlaybook,
                    now: int) -> AccountState | None:
    """Evaluate one account; an account the engine cannot evaluate is logged and skipped, so
    that it never stops the others."""
    try:
        return evaluate_account(facts, playbook, now)
    except Exception:
        log.exception("Account %s could not be evaluated; it is skipped.", facts.account_id)
        return None


def evaluate_accounts(database: Database, playbook: CompiledPlaybook, now: int,
                      account_ids: Iterable[str] | None = None) -> list[AccountState]:
    """Evaluate at `now` without writing: what the read commands and the API show."""
    with database.engine.connect() as conn:
        # Accounts in an experiment are shown as evaluated with their recorded variant.
        ids = None if account_ids is None else list(account_ids)
        variants = Assignments(conn, playbook, ids, now, write=False)
        states = [variants.evaluate(facts, evaluate_safely(facts, playbook, now),
                                    evaluate_safely)
                  for facts in load_facts(conn, playbook, ids)]
    return [state for state in states if state is not None]


def tick(database: Database, playbook: CompiledPlaybook, now: int) -> TickResult:
    """Evaluate the changed and due accounts at `now` and store their state."""
    with database.write() as conn:
        attached = sweep_held_events(conn, now)
        record_playbook_version(conn, playbook, now)
        due = conn.execute(sa.text(
            "SELECT id, change_seq FROM accounts WHERE change_seq > evaluated_seq "
            "OR next_wake_at <= :now OR playbook_version IS NULL OR playbook_version <> :version"
        ), {"now": now, "version": playbook.version}).all()
        seqs = dict(due)  # type: ignore[arg-type]
        updates = []
        late_limit = playbook.loaded.model.late_limit_hours
        outbox = existing_actions(conn, seqs)
        history = recorded_stalls(conn, seqs)
        variants = Assignments(conn, playbook, seqs, now, write=True)
        for facts in load_facts(conn, playbook, seqs):
            # Accounts in an experiment: assigned once, then evaluated with their variant.
            state = variants.evaluate(facts, evaluate_safely(facts, playbook, now),
                                      evaluate_safely)
            if state is None:
                # Kept out of the way until its events change, retried hourly meanwhile.
                updates.append({"id": facts.account_id, "state": _encode(
                    {"id": facts.account_id, "error": "the engine could not evaluate this "
                     "account; the log has the details"}).decode(), "wake": now + 3_600_000_000,
                    "seq": seqs[facts.account_id], "at": now, "version": playbook.version})
                continue
            # The actions go into the outbox in the transaction that stores the state which
            # caused them (shared/DESIGN.md "Outbox").
            reconcile(conn, facts.account_id, state.planned, playbook.version, late_limit, now,
                      outbox.get(facts.account_id, {}))
            run = state.run["number"] if state.run else None
            record_stalls(conn, facts.account_id, run, state.episodes,
                          history.get(facts.account_id, {}), now)
            updates.append({"id": facts.account_id, "state": _encode(state.as_json()).decode(),
                            "wake": state.next_wake_at, "seq": seqs[facts.account_id],
                            "at": now, "version": playbook.version})
        if updates:
            conn.execute(sa.text(
                "UPDATE accounts SET state = :state, next_wake_at = :wake, evaluated_seq = :seq, "
                "evaluated_at = :at, playbook_version = :version WHERE id = :id"), updates)
    if updates:
        log.info("Tick evaluated %d account(s).", len(updates))
    return TickResult(len(updates), attached, playbook.version)


def sweep_held_events(conn: sa.Connection, now: int) -> int:
    """Attach held events whose account became known through another writer meanwhile."""
    waiting = conn.execute(sa.text(
        "SELECT DISTINCT e.group_id FROM events e JOIN accounts a ON a.id = e.group_id "
        "WHERE e.account_id IS NULL AND e.type = 'track'")).scalars().all()
    attached = event_store.attach_held_events(conn, waiting, now)
    event_store.mark_changed(conn, attached)
    return len(attached)


_RECORDED: set[tuple[str, str]] = set()


def record_playbook_version(conn: sa.Connection, playbook: CompiledPlaybook, now: int) -> None:
    """Keep the text of every playbook version evaluations used (once per database and
    process is enough: the row, once there, never changes)."""
    seen = (str(conn.engine.url), playbook.version)
    if seen in _RECORDED:
        return
    _RECORDED.add(seen)
    conn.execute(sa.text(
        "INSERT INTO playbook_versions (version, text, first_used_at) VALUES (:v, :t, :at) "
        "ON CONFLICT (version) DO NOTHING"),
        {"v": playbook.version, "t": playbook.loaded.text, "at": now})


def stored_states(database: Database, account_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    with database.engine.connect() as conn:
        rows = event_store.select_in(
            conn, "SELECT id, state FROM accounts WHERE id IN :ids AND state IS NOT NULL",
            account_ids)
    return {row[0]: _decode(row[1]) for row in rows}


def held_events(database: Database, now: int) -> list[dict[str, Any]]:
    """Held events older than the hold period (FIRSTVALUE_HOLD_DAYS), by what they wait for."""
    from firstvalue.clock import isoformat
    from firstvalue.settings import get_int_setting

    cutoff = now - min(get_int_setting("hold_days"), 36_500) * 86_400 * 1_000_000
    with database.engine.connect() as conn:
        rows = event_store.held_events_summary(conn, cutoff)
    return [{"waiting_for": row[0], "events": row[1], "since": isoformat(row[2])}
            for row in rows]
