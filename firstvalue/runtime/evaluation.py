"""Loading facts from the store, running the engine, writing the state back.

`tick` evaluates only the accounts that changed since their last evaluation, whose wake-up time
has come, or that were evaluated with another playbook version. Read commands evaluate at the
time they are asked for without writing anything (`evaluate_accounts`).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.actions.outbox import (
    OutboxChanges,
    actions_by_account,
    existing_actions,
    reconcile,
)
from firstvalue.engine import AccountFacts, EventFact, evaluate_account
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.evaluate import AccountState
from firstvalue.runtime.experiments import Assignments, variant_playbook
from firstvalue.runtime.handoff import load_handoffs
from firstvalue.runtime.routing import (
    changed_assigned,
    load_team,
    release_finished,
    route_accounts,
    routing_active,
    routing_candidates,
)
from firstvalue.runtime.stall_history import StallChanges, record_stalls, recorded_stalls
from firstvalue.runtime.workers import InWorkers, WorkerResult, worker_count
from firstvalue.store import events as event_store
from firstvalue.store.database import (
    Database,
    ManyRows,
    execute_many,
    retry_conflicts,
    take_turns,
)
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
    names = playbook.relevant_names
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
               names: frozenset[str]) -> Iterator[AccountFacts]:
    if not accounts:
        return
    ids = [row[0] for row in accounts]
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    # Names are filtered here rather than in SQL: nearly every stored name is relevant, and
    # SQLite checking an IN list on every row costs more than the few rows it would spare.
    sql = ("SELECT account_id, message_id, name, ts, user_id, properties, "
           "COALESCE(attached_at, received_at) FROM events WHERE type = 'track' AND account_id "
           "IN (" + ", ".join([mark] * len(ids)) + ")")
    # The driver's own cursor: this loop reads every event of every account evaluated, and
    # SQLAlchemy's row objects cost more than the rows themselves here. On PostgreSQL the
    # rows come in the binary format (no numbers parsed from text) and all at once, built in
    # C, where iterating the cursor is a call in Python a row: 31% fewer instructions to read
    # a thousand accounts' facts (callgrind; on SQLite either way costs the same).
    driver = conn.connection.driver_connection  # type: ignore[union-attr]
    cursor = driver.cursor() if mark == "?" else driver.cursor(binary=True)
    cursor.execute(sql, ids)
    rows = cursor.fetchall()
    cursor.close()

    events: dict[str, list[EventFact]] = {account_id: [] for account_id in ids}
    actors: set[str] = set()
    for account_id, message_id, name, ts, actor, properties, known in rows:
        if name not in names:
            continue
        events[account_id].append(EventFact(message_id, name, ts, actor, properties, known))
        if actor is not None:
            actors.add(actor)
    del rows

    members = _members(conn, ids)
    contacts = _load_contacts(conn, actors | {m for group in members.values() for m in group})
    handoffs = load_handoffs(conn, ids)
    for account_id, traits in accounts:
        account_events = events[account_id]
        people = {e.actor for e in account_events} | members.get(account_id, set())
        account_contacts = {actor: contacts[actor] for actor in people if actor in contacts}
        yield AccountFacts(account_id, _decode(traits), tuple(account_events), account_contacts,
                           handoffs.get(account_id))


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


_paused = 0
_pause_lock = threading.Lock()
_was_enabled = False
# A pause that leaves this many new objects or more (an evaluation of about a thousand
# accounts and up) hands them to the oldest generation; see `collector_paused`.
HAND_OVER_AT = 100_000
# Once this many objects were handed over since the last full collection, the end of a
# pause runs one instead: cycles among them, or made meanwhile, are still found.
FULL_COLLECTION_AFTER = 5_000_000
_handed_over = 0


# Evaluations of fewer accounts leave the collector on: it costs them little, and a server
# answering many one-account reads at once from several threads would otherwise keep it
# paused for as long as their pauses overlap, collecting nothing meanwhile (found by review).
PAUSE_FROM = 100


def paused_for(accounts: int) -> AbstractContextManager[None]:
    """`collector_paused()` for an evaluation of this many accounts, if it is large enough."""
    return collector_paused() if accounts >= PAUSE_FROM else nullcontext()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while accounts are evaluated.

    An evaluation makes many small objects that live until its end (facts, states, planned
    actions), and the collector scans them over and over as they pile up: on a full tick of
    10,000 accounts that was a third of the time. The engine makes no garbage cycles that
    must go before the end; reference counting frees the rest as usual, and the collector
    runs again when the last evaluation in the process is done.

    A pause that leaves many new objects behind (a read's states: 10,000 accounts, about a
    million objects) hands them to the oldest generation directly (`gc.freeze()`, then
    `gc.unfreeze()`). Else the first allocation after the pause starts a collection of the
    youngest generation, which holds all of them: 0.58 s measured at the end of a read of
    every account, for objects that reference counting frees anyway when the caller drops
    them. Handing over also restarts the collector's counts, so a process that did little
    but such pauses would never collect again: after `FULL_COLLECTION_AFTER` objects handed
    over, the end of a pause collects in full instead. A pause that leaves fewer objects
    leaves the collector's counts as they were, and an evaluation of fewer than `PAUSE_FROM`
    accounts does not pause it at all (`paused_for`). (A program embedding firstvalue that
    froze objects with `gc.freeze()` of its own finds them unfrozen after a large pause.)
    """
    global _paused, _was_enabled, _handed_over
    with _pause_lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _pause_lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                left = gc.get_count()[0]
                if left >= HAND_OVER_AT:
                    _handed_over += left
                    if _handed_over >= FULL_COLLECTION_AFTER:
                        _handed_over = 0
                        gc.collect()
                    else:
                        gc.freeze()
                        gc.unfreeze()
                gc.enable()


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
        ids = None if account_ids is None else sorted(set(account_ids))
        count = len(ids) if ids is not None else conn.execute(
            sa.text("SELECT COUNT(*) FROM accounts")).scalar_one()
        with paused_for(count):
            workers = worker_count(count, database)
            if workers:
                with InWorkers(database, playbook, _parts(conn, ids), now, False,
                               workers) as evaluated:
                    return [result.state for _, results in evaluated for result in results
                            if result.state is not None]
            # Accounts in an experiment are shown as evaluated with their recorded variant.
            variants = Assignments(conn, playbook, ids, now, write=False)
            states = [variants.evaluate(facts, evaluate_safely(facts, playbook, now),
                                        evaluate_safely)
                      for facts in load_facts(conn, playbook, ids)]
            return [state for state in states if state is not None]


def _parts(conn: sa.Connection, ids: list[str] | None) -> list[Sequence[str]]:
    """The accounts in the parts `load_facts` reads them in (all accounts when None): for
    the workers only, so asked only when there are some."""
    if ids is None:
        ids = conn.execute(sa.text("SELECT id FROM accounts ORDER BY id")).scalars().all()
        return list(event_store.chunks(ids, BATCH))
    return list(event_store.chunks(sorted(set(ids)), BATCH))


def tick(database: Database, playbook: CompiledPlaybook, now: int) -> TickResult:
    """Evaluate the changed and due accounts at `now` and store their state.

    Two transactions, each run again if PostgreSQL stops it for a deadlock with another
    writer. The first attaches held events whose account now exists and routes accounts to
    owners, having locked every account it may change in one statement; the second
    evaluates the due accounts (those two changed included) and stores what follows,
    locking accounts a batch at a time in id order. So each locks in the one order ingest
    locks in too: with routing in the evaluation's transaction, its accounts, locked one by
    one before the batches, deadlocked with ingest batches again and again under load (a
    review: 53 retries in 45 s, and a tick that failed after five).
    """
    attached, routed = retry_conflicts(lambda: _prepare(database, playbook, now),
                                       "A tick's attaching of held events and routing")
    # Remembered once committed: a transaction rolled back did not store the playbook's text.
    _RECORDED.add(_recorded_key(database, playbook))
    updates = retry_conflicts(lambda: _evaluate(database, playbook, now, routed), "A tick")
    if updates:
        log.info("Tick evaluated %d account(s).", updates)
    return TickResult(updates, attached, playbook.version)


def _prepare(database: Database, playbook: CompiledPlaybook,
             now: int) -> tuple[int, dict[str, int]]:
    """Attach held events, record the playbook's version, route accounts. How many accounts
    got held events, and the assigned accounts whose change routing has seen, with their
    change_seq then (None when nothing is routed: no `ownership`, or no roster)."""
    with database.write() as conn:
        take_turns(conn, TICK_TURNS)
        held = held_for_known_accounts(conn)
        routing = routing_active(conn, playbook)
        candidates = routing_candidates(conn, playbook) if routing else []
        event_store.lock_accounts(conn, {*held, *candidates})
        attached = sweep_held_events(conn, now, held)
        if _recorded_key(database, playbook) not in _RECORDED:
            record_playbook_version(conn, playbook, now)
        route_accounts(conn, playbook, now, candidates)
        routed = changed_assigned(conn) if routing else None
    return attached, routed


# Ticks take turns (`take_turns`): two at once (the scheduler and a `firstvalue tick`, or two
# servers) would evaluate the same accounts twice and lock the roster's rows (owners' loads)
# and the accounts in orders that can deadlock; one after the other, the second finds what
# the first left.
TICK_TURNS = "tick"


def _evaluate(database: Database, playbook: CompiledPlaybook, now: int,
              routed: dict[str, int] | None) -> int:
    with database.write() as conn:
        take_turns(conn, TICK_TURNS)
        if routed is not None:
            # An assigned account another writer changed after `_prepare` (a new `owner`
            # trait, say) would be evaluated below without routing having seen its change,
            # and no later tick would see it as changed: routed here, before it is evaluated
            # (found by review). Rare: the window is the moment between the two transactions.
            late = [account for account, seq in changed_assigned(conn).items()
                    if routed.get(account) != seq]
            if late:
                route_accounts(conn, playbook, now, late)
        due = conn.execute(sa.text(
            "SELECT id, change_seq FROM accounts WHERE change_seq > evaluated_seq "
            "OR next_wake_at <= :now OR playbook_version IS NULL OR playbook_version <> :version"
        ), {"now": now, "version": playbook.version}).all()
        seqs = dict(due)  # type: ignore[arg-type]
        return _evaluate_due(database, conn, playbook, seqs, now)


def _evaluate_due(database: Database, conn: sa.Connection, playbook: CompiledPlaybook,
                  seqs: dict[str, int], now: int) -> int:
    """Evaluate the due accounts and apply their writes in the tick's transaction; how many."""
    with paused_for(len(seqs)):
        # Accounts in an experiment: assigned once, then evaluated with their variant.
        variants = Assignments(conn, playbook, seqs, now, write=True)
        # The workers, if any, start before the read below, which they need not wait for.
        with _tick_writes(database, conn, playbook, seqs, variants, now) as planned:
            owners = previous_owners(conn, seqs)
            writes = _TickWrites(now=now)
            for account_id, account_writes in planned:
                writes.add(account_id, account_writes)
                before, after = owners.get(account_id), account_writes.owner
                if before is not None and after is not None and after != before:
                    # A new owner takes over the open tasks (shared/DESIGN.md "Accounts, runs
                    # and anchors"); those already done stay with whoever did them.
                    writes.handovers.append({"a": account_id, "to": after})
                if len(writes.states) >= BATCH:
                    writes.apply(conn)
            writes.apply(conn)
        return writes.evaluated


@dataclass
class AccountWrites:
    """What a tick writes for one account (`plan_writes`)."""

    state: dict[str, Any]  # the parameters of its accounts row's update
    outbox: OutboxChanges = field(default_factory=OutboxChanges)
    stalls: StallChanges = field(default_factory=StallChanges)
    finished: bool = False  # its run ended: its owner's load goes down
    owner: str | None = None


def plan_writes(account_id: str, seq: int, state: AccountState | None,
                existing: dict[str, Any], recorded: dict[tuple[int, str], Any],
                playbook: CompiledPlaybook, now: int) -> AccountWrites:
    """What the tick writes for one account evaluated at `now`: its state, its outbox rows
    (compared with the `existing` ones) and its stall history (with the `recorded` one)."""
    writes = AccountWrites({"id": account_id, "wake": now + 3_600_000_000, "seq": seq,
                            "at": now, "version": playbook.version})
    if state is None:
        # Kept out of the way until its events change, retried hourly meanwhile.
        writes.state["state"] = _encode({"id": account_id, "error": "the engine could not "
                                         "evaluate this account; the log has the details"}
                                        ).decode()
        return writes
    writes.state |= {"state": _encode(state.as_json()).decode(), "wake": state.next_wake_at}
    # The actions go into the outbox in the transaction that stores the state which caused
    # them (shared/DESIGN.md "Outbox").
    reconcile(writes.outbox, account_id, state.planned, playbook.version,
              playbook.loaded.model.late_limit_hours, now, existing, state.track)
    run = state.run["number"] if state.run else None
    record_stalls(writes.stalls, account_id, run, state.episodes, recorded, now)
    writes.finished = state.run is not None and state.run["status"] != "active"
    writes.owner = state.owner
    return writes


Planned = Iterator[tuple[str, AccountWrites]]


@contextmanager
def _tick_writes(database: Database, conn: sa.Connection, playbook: CompiledPlaybook,
                 seqs: dict[str, int], variants: Assignments, now: int) -> Iterator[Planned]:
    """The due accounts' writes, in `load_facts` order: planned in worker processes for a
    large tick (see runtime.workers), else here."""
    workers = worker_count(len(seqs), database)
    if not workers:
        yield _writes_here(conn, playbook, seqs, seqs, variants, now)
        return
    with InWorkers(database, playbook, _parts(conn, list(seqs)), now, True,
                   workers) as evaluated:
        yield (settled for ids, results in evaluated
               for settled in _settle(conn, playbook, ids, results, seqs, variants, now))


def _writes_here(conn: sa.Connection, playbook: CompiledPlaybook, account_ids: Iterable[str],
                 seqs: dict[str, int], variants: Assignments, now: int) -> Planned:
    def state_of(facts: AccountFacts) -> AccountState | None:
        return variants.evaluate(facts, evaluate_safely(facts, playbook, now), evaluate_safely)

    return _planned_here(conn, playbook, account_ids, seqs, state_of, now)


def _planned_here(conn: sa.Connection, playbook: CompiledPlaybook, account_ids: Iterable[str],
                  seqs: dict[str, int],
                  state_of: Callable[[AccountFacts], AccountState | None], now: int) -> Planned:
    """The accounts' writes, each evaluated here by `state_of`."""
    outbox = existing_actions(conn, account_ids)
    history = recorded_stalls(conn, account_ids)
    for facts in load_facts(conn, playbook, account_ids):
        yield facts.account_id, plan_writes(
            facts.account_id, seqs[facts.account_id], state_of(facts),
            outbox.get(facts.account_id, {}), history.get(facts.account_id, {}), playbook, now)


def _settle(conn: sa.Connection, playbook: CompiledPlaybook, ids: list[str],
            results: list[WorkerResult], seqs: dict[str, int], variants: Assignments,
            now: int) -> list[tuple[str, AccountWrites]]:
    """A part the workers planned, as this transaction would have planned it itself.

    A worker does not see this transaction's writes: an account whose change_seq it saw
    otherwise is evaluated here, in its place. Variants are assigned here, in the order of the
    part (account id order, as in process); an account that a new (or another) variant gives
    other rules is evaluated here again.
    """
    if {result.account_id for result in results} != set(ids):
        return list(_writes_here(conn, playbook, ids, seqs, variants, now))
    settled: list[tuple[str, AccountWrites]] = []
    again: dict[str, tuple[tuple[str, str], ...]] = {}
    for result in results:
        if result.seq != seqs[result.account_id]:
            # Rare (the account changed during the tick): evaluated alone, here, so that it
            # takes its experiment position in its turn.
            settled += _writes_here(conn, playbook, [result.account_id], seqs, variants, now)
            continue
        if result.basis is not None:
            chosen = variants.effective(variants.choose(result.account_id, result.basis,
                                                        result.fitting))
            if chosen != result.variants:
                again[result.account_id] = chosen
        settled.append((result.account_id, result.state))
    if again:
        redone = dict(_variants_here(conn, playbook, again, seqs, now))
        settled = [(account_id, redone.get(account_id, writes)) for account_id, writes in settled]
    return settled


def _variants_here(conn: sa.Connection, playbook: CompiledPlaybook,
                   chosen: dict[str, tuple[tuple[str, str], ...]], seqs: dict[str, int],
                   now: int) -> Planned:
    """The accounts evaluated here with the variants just `chosen` for them."""
    def state_of(facts: AccountFacts) -> AccountState | None:
        variants = chosen[facts.account_id]
        return evaluate_safely(
            facts, variant_playbook(playbook, variants) if variants else playbook, now)

    return _planned_here(conn, playbook, chosen, seqs, state_of, now)


@dataclass
class _TickWrites:
    """What a tick writes, gathered and applied a batch of accounts at a time: a statement
    per kind of write and batch, not per account (round trips are most of a small tick's
    time on PostgreSQL)."""

    outbox: OutboxChanges = field(default_factory=OutboxChanges)
    stalls: StallChanges = field(default_factory=StallChanges)
    states: list[dict[str, Any]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # runs ended: owners' load goes down
    handovers: list[dict[str, Any]] = field(default_factory=list)  # owner changed
    evaluated: int = 0
    now: int = 0

    def add(self, account_id: str, writes: AccountWrites) -> None:
        self.outbox.extend(writes.outbox)
        self.stalls.extend(writes.stalls)
        if writes.finished:
            self.finished.append(account_id)
        self.states.append(writes.state)

    def apply(self, conn: sa.Connection) -> None:
        # The accounts' rows locked first, in the one order (see `lock_accounts`): the writes
        # below take their row locks in whatever order the server joins them.
        event_store.lock_accounts(conn, [state["id"] for state in self.states])
        self.outbox.apply(conn)
        self.stalls.apply(conn)
        if self.finished:
            release_finished(conn, self.finished, self.now)
            self.finished = []
        if self.handovers:
            hand_over_tasks(conn, self.handovers)
            self.handovers = []
        execute_many(conn, _STORE_STATES, self.states)
        self.evaluated += len(self.states)
        self.states = []


_STORE_STATES = ManyRows(
    "UPDATE accounts SET state = :state, next_wake_at = :wake, evaluated_seq = :seq, "
    "evaluated_at = :at, playbook_version = :version WHERE id = :id",
    "UPDATE accounts AS a SET state = r.state, next_wake_at = r.wake, evaluated_seq = r.seq, "
    "evaluated_at = r.at, playbook_version = r.version FROM {rows} WHERE a.id = r.id",
    "id text, state text, wake bigint, seq bigint, at bigint, version text")


class _Owner(msgspec.Struct):
    owner: str | None = None


_decode_owner = msgspec.json.Decoder(_Owner).decode


def previous_owners(conn: sa.Connection, account_ids: Iterable[str]) -> dict[str, str]:
    """The owner each account's stored state names (only that field is decoded), for the
    accounts with open tasks for their owner: only those have anything to hand over, and a
    full tick need not read every stored state for it."""
    rows = event_store.select_in(conn, (
        "SELECT a.id, a.state FROM accounts a WHERE a.id IN :ids AND a.state IS NOT NULL "
        f"AND EXISTS (SELECT 1 FROM {actions_by_account(conn, 't')} WHERE t.account_id = a.id "
        "AND t.kind = 'task' AND t.recipient = 'owner' AND t.status = 'sent' "
        "AND t.done_at IS NULL)"), account_ids)
    owners = {}
    for account_id, state in rows:
        try:
            owner = _decode_owner(state).owner
        except msgspec.DecodeError:
            continue
        if owner is not None:
            owners[account_id] = owner
    return owners


def hand_over_tasks(conn: sa.Connection, handovers: list[dict[str, Any]]) -> None:
    """Open tasks addressed to the owner go to the new one: their address (the roster's email
    for a member's handle, else the owner itself when it is an address)."""
    team = {m.handle: m.email for m in load_team(conn)}
    rows = [{"a": h["a"], "to": team.get(h["to"]) or (h["to"] if "@" in h["to"] else None)}
            for h in handovers]
    execute_many(conn, (
        "UPDATE actions SET assignee = :to WHERE account_id = :a AND kind = 'task' "
        "AND recipient = 'owner' AND status = 'sent' AND done_at IS NULL"), rows)


def held_for_known_accounts(conn: sa.Connection) -> list[str]:
    """The accounts that held events wait for and that exist by now (another writer made
    them meanwhile)."""
    return list(conn.execute(sa.text(
        "SELECT DISTINCT e.group_id FROM events e JOIN accounts a ON a.id = e.group_id "
        "WHERE e.account_id IS NULL AND e.group_id IS NOT NULL AND e.type = 'track'"
    )).scalars())


def sweep_held_events(conn: sa.Connection, now: int, waiting: list[str]) -> int:
    """Attach the held events of these accounts (`held_for_known_accounts`)."""
    attached = event_store.attach_held_events(conn, waiting, now)
    event_store.mark_changed(conn, attached)
    return len(attached)


_RECORDED: set[tuple[str, str]] = set()


def _recorded_key(database: Database, playbook: CompiledPlaybook) -> tuple[str, str]:
    return database.url, playbook.version


def record_playbook_version(conn: sa.Connection, playbook: CompiledPlaybook, now: int) -> None:
    """Keep the text of every playbook version evaluations used. (`tick` asks once per
    database and process: the row, once there, never changes.)"""
    conn.execute(sa.text(
        "INSERT INTO playbook_versions (version, text, first_used_at) VALUES (:v, :t, :at) "
        "ON CONFLICT (version) DO NOTHING"),
        {"v": playbook.version, "t": playbook.loaded.text, "at": now})


def last_evaluated_at(database: Database) -> int | None:
    """When the latest tick evaluated an account (None: never)."""
    with database.engine.connect() as conn:
        return conn.execute(sa.text("SELECT MAX(evaluated_at) FROM accounts")).scalar()


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
