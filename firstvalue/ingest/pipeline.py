"""Storing validated messages: dedupe, attribution to accounts, held events, traits.

One call of `store_messages` runs inside one transaction, so a batch is stored whole or not at
all. Statuses come back in the order of the messages.
"""

from __future__ import annotations

import bisect
import logging
import operator
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.ingest.messages import Accepted
from firstvalue.store import events as event_store
from firstvalue.store.traits import merge_traits

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
PENDING_ACCOUNT = "pending_account"
REJECTED = "rejected"

_decode_object = msgspec.json.Decoder(dict).decode
LOGGED_CONFLICTS = 10  # conflicts of one batch or load logged by id; the rest are counted
_ACCOUNT = operator.itemgetter(3)  # of an event row (`store.events.EVENT_COLUMNS`)


@dataclass
class Memberships:
    """Each actor's group calls, sorted by time: which account an event of theirs belongs to."""

    by_actor: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)

    def add(self, actor: str, ts: int, message_id: str, account_id: str) -> None:
        bisect.insort(self.by_actor.setdefault(actor, []), (ts, message_id, account_id))

    def account_at(self, actor: str, ts: int) -> str | None:
        """The latest group call at or before `ts`; the user's first one if all come later."""
        calls = self.by_actor.get(actor)
        if not calls:
            return None
        if len(calls) == 1:  # most users belong to one account: no search needed
            return calls[0][2]
        index = bisect.bisect_right(calls, (ts, "\U0010ffff", ""))
        return calls[index - 1][2] if index else calls[0][2]


@dataclass
class BulkLoad:
    """A file import stored in one transaction that has the events table to itself, with the
    table's costly indexes dropped until it ends (see `ingest.files`).

    Without the unique index, ids are checked against a set of every id stored: those stored
    before the load, read when it begins, and each one it stores. An id met again is a
    duplicate at once; whether it is also a conflict is decided in `finish`, once the index is
    back to find the stored event by. Until then the repeats wait in a table of their own in
    the same transaction, not in memory: a file imported twice is all repeats. A failure
    anywhere rolls the transaction back, the dropped indexes and that table with it.
    """

    definitions: list[str]  # the statements that create the dropped indexes again
    seen: set[str]
    repeats: int = 0  # in REPEATS_TABLE
    # Accounts whose events changed: their change_seq goes up once, at the end, rather than
    # once a chunk (on PostgreSQL each update is a new row version of every account).
    changed: set[str] = field(default_factory=set)
    # The group memberships of the users read so far, kept up to date as the load stores
    # group calls: each user's are read from the store once, not once a chunk.
    memberships: Memberships = field(default_factory=Memberships)
    members_read: set[str] = field(default_factory=set)

    @classmethod
    def begin(cls, conn: sa.Connection) -> BulkLoad:
        definitions = event_store.drop_rebuilt_indexes(conn)
        return cls(definitions, event_store.stored_message_ids(conn))

    def memberships_of(self, conn: sa.Connection, actors: set[str]) -> Memberships:
        """The memberships, those of `actors` among them."""
        unread = actors - self.members_read
        if unread:
            self.memberships.by_actor.update(event_store.load_memberships(conn, unread).by_actor)
            self.members_read |= unread
        return self.memberships

    def keep_repeats(self, conn: sa.Connection, repeats: list[Accepted]) -> None:
        if not self.repeats:
            event_store.create_repeats_table(conn)
        event_store.insert_repeats(conn, [(m.message_id, m.type, m.name, m.group_id, m.actor,
                                           m.payload) for m in repeats])
        self.repeats += len(repeats)

    def finish(self, conn: sa.Connection) -> int:
        """Create the dropped indexes again and count the conflicts among the repeated ids;
        returns the conflicts."""
        event_store.create_indexes(conn, self.definitions)
        event_store.mark_changed(conn, self.changed)
        if not self.repeats:
            return 0
        conflicting = [message_id for message_id, repeat, stored
                       in event_store.repeats_and_stored(conn) if _is_conflict(stored, repeat)]
        event_store.drop_repeats_table(conn)
        return _count_conflicts(conn, conflicting)


@dataclass
class IngestResult:
    statuses: list[str]
    conflicts: int = 0
    changed_accounts: set[str] = field(default_factory=set)


def store_messages(conn: sa.Connection, messages: Sequence[Accepted],
                   anchor_names: frozenset[str], assume_new: bool = False,
                   bulk: BulkLoad | None = None) -> IngestResult:
    """Store `messages` (already validated) in the open transaction `conn`.

    `assume_new` is for bulk imports of history, where the ids are almost never stored yet:
    it skips looking them up first and lets the unique index on the id tell. If one is stored
    after all, everything done under that assumption is rolled back to a savepoint and the
    messages are stored again the careful way, so the outcome is the same either way.
    `bulk` is a load with the indexes dropped: its ids are checked against its set instead.
    """
    if bulk is not None:
        return _store_messages(conn, messages, anchor_names, check_store=False, bulk=bulk)
    if assume_new:
        savepoint = conn.begin_nested()
        try:
            result = _store_messages(conn, messages, anchor_names, check_store=False)
        except event_store.AlreadyStored:
            savepoint.rollback()
        else:
            savepoint.commit()
            return result
    return _store_messages(conn, messages, anchor_names, check_store=True)


def _store_messages(conn: sa.Connection, messages: Sequence[Accepted],
                    anchor_names: frozenset[str], check_store: bool,
                    bulk: BulkLoad | None = None) -> IngestResult:
    statuses = [ACCEPTED] * len(messages)
    fresh_indexes, conflicting = _dedupe(conn, messages, statuses, check_store, bulk)
    changed: set[str] = set()
    groups, identifies, tracks = _split_by_type(messages, fresh_indexes)
    if bulk is None and conn.dialect.name != "sqlite":
        _lock_accounts_first(conn, groups, identifies, tracks)

    known = event_store.known_accounts(conn, _group_ids(groups, tracks))
    created = _create_accounts(conn, groups, tracks, known, anchor_names)
    changed |= _merge_account_traits(conn, groups)
    actors = {m.actor for _, m in tracks if m.group_id is None} | {m.actor for m in groups}
    memberships = (event_store.load_memberships(conn, actors) if bulk is None
                   else bulk.memberships_of(conn, actors))
    for message in groups:
        memberships.add(message.actor, message.ts, message.message_id, message.group_id)

    rows = _attributed_rows(tracks, known | created, memberships, statuses, changed)
    rows += [event_store.event_row(m, m.group_id) for m in groups]
    rows += [event_store.event_row(m, None) for m in identifies]
    if bulk is not None:
        # The load has the table to itself: its rows go in by account, so that an account's
        # events lie together in the table, a few runs of pages rather than a page each
        # (PostgreSQL reads an account's facts from the table; measured: 2.3 s instead of 4.0
        # to read every account's at a million events).
        rows = _by_account(rows)
    elif conn.dialect.name != "sqlite":
        # Two writers inserting overlapping ids take the unique index's locks in one order,
        # so they wait for each other instead of deadlocking.
        rows.sort(key=lambda row: row[0])
    late_duplicates = event_store.insert_events(conn, rows,
                                                strict=not check_store and bulk is None)
    conflicting += _mark_late_duplicates(conn, late_duplicates, messages, fresh_indexes,
                                         statuses)

    event_store.insert_memberships(conn, groups)
    changed |= _merge_contact_traits(conn, identifies)
    received = max(m.received_at for m in messages)
    changed |= event_store.attach_held_events(conn, created, received)
    changed |= event_store.reattribute(conn, {m.actor for m in groups}, memberships, received)
    changed |= {m.group_id for m in groups}
    if bulk is None:
        event_store.mark_changed(conn, changed)
    else:
        bulk.changed |= changed
    conflicts = _count_conflicts(conn, conflicting)
    return IngestResult(statuses=statuses, conflicts=conflicts, changed_accounts=changed)


def _lock_accounts_first(conn: sa.Connection, groups: list[Accepted],
                         identifies: list[Accepted], tracks: list[tuple[int, Accepted]]) -> None:
    """Lock, in one statement and in the tick's order, every stored account the batch may
    change: those its messages name and those its users belong to.

    The batch's later statements lock accounts too (merging traits, moving events, marking
    them changed), each in that order, but one after another they would not be: a batch
    holding an account while it waits for a lower one that a tick holds, which waits for the
    batch's, is a deadlock (measured before this: a third of the batches of a load test
    failed so). The users' locks come first: another batch moving one of them to another
    account between this one's read of the memberships and its lock would make it change an
    account it did not lock. Accounts it could not foresee all the same are locked later,
    and a deadlock then is run again (`store.database.retry_conflicts`).
    """
    actors = {m.actor for m in groups} | {m.actor for m in identifies}
    actors |= {m.actor for _, m in tracks if m.group_id is None}
    event_store.lock_users(conn, actors)  # type: ignore[arg-type]
    touched = _group_ids(groups, tracks) | event_store.accounts_of_actors(conn, actors)
    event_store.lock_accounts(conn, touched)


def _count_conflicts(conn: sa.Connection, conflicting: list[str]) -> int:
    """Count and log the ids redelivered with other content, once their writes are done (a
    first attempt rolled back to its savepoint logs nothing)."""
    for message_id in conflicting[:LOGGED_CONFLICTS]:
        log.warning("Event %s was redelivered with different content; the stored one stands.",
                    message_id)
    if len(conflicting) > LOGGED_CONFLICTS:
        log.warning("%d more events were redelivered with different content; the stored ones "
                    "stand.", len(conflicting) - LOGGED_CONFLICTS)
    if conflicting:
        event_store.add_to_counter(conn, "ingest_conflicts", len(conflicting))
    return len(conflicting)


def _by_account(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows by account, each account's in the order they came, those without an account
    (identify calls, held events) last. (By account and time took three times as long.)"""
    attributed = [row for row in rows if row[3] is not None]
    attributed.sort(key=_ACCOUNT)
    return attributed + [row for row in rows if row[3] is None]


def _split_by_type(messages: Sequence[Accepted], indexes: list[int]) -> tuple[
        list[Accepted], list[Accepted], list[tuple[int, Accepted]]]:
    groups = []
    identifies = []
    tracks = []
    for index in indexes:
        message = messages[index]
        kind = message.type
        if kind == "track":
            tracks.append((index, message))
        elif kind == "group":
            groups.append(message)
        else:
            identifies.append(message)
    return groups, identifies, tracks


def _attributed_rows(tracks: list[tuple[int, Accepted]], accounts: set[str],
                     memberships: Memberships, statuses: list[str],
                     changed: set[str]) -> list[tuple[Any, ...]]:
    """The event rows of the track calls, each with its account: the one its `groupId` names
    if that is known (else none: it is held), or the user's membership at the event's time.

    This runs once for every event of a bulk import, so `event_row` is written out here.
    """
    rows = []
    account_at = memberships.account_at
    for index, m in tracks:
        group_id = m.group_id
        if group_id is not None:
            account_id = group_id if group_id in accounts else None
        else:
            account_id = account_at(m.actor, m.ts)  # type: ignore[arg-type]
        if account_id is None:
            statuses[index] = PENDING_ACCOUNT
        else:
            changed.add(account_id)
        rows.append((m.message_id, m.type, m.name, account_id, group_id, m.actor,
                     m.anonymous_id, m.ts, m.received_at, m.flags, m.payload))
    return rows


def _dedupe(conn: sa.Connection, messages: Sequence[Accepted], statuses: list[str],
            check_store: bool = True,
            bulk: BulkLoad | None = None) -> tuple[list[int], list[str]]:
    """Mark duplicates (within the batch and, if `check_store`, against the store, or against
    the ids a `bulk` load has seen); the indexes left are new, and the ids in conflict."""
    if bulk is not None:
        return _new_to_load(conn, messages, statuses, bulk), []
    candidates, repeats = _split_repeats(messages, statuses, set())
    stored = event_store.stored_versions(
        conn, [messages[i].message_id for i in candidates]) if check_store else {}
    fresh = []
    conflicting = []
    for index in candidates:
        message = messages[index]
        version = stored.get(message.message_id)
        if version is None:
            fresh.append(index)
            continue
        statuses[index] = DUPLICATE
        if _is_conflict(version, message):
            conflicting.append(message.message_id)
    # A repeat is compared with the event that stands: the stored one, else the batch's first.
    first_seen = {messages[i].message_id: messages[i] for i in candidates} if repeats else {}
    conflicting += [message.message_id for message in repeats
                    if _is_conflict(stored.get(message.message_id)
                                    or first_seen[message.message_id], message)]
    return fresh, conflicting


def _split_repeats(messages: Sequence[Accepted], statuses: list[str],
                   seen: set[str]) -> tuple[list[int], list[Accepted]]:
    """The indexes of the messages whose id is not in `seen` (which takes it), and the others,
    marked duplicates."""
    fresh = []
    repeats = []
    for index, message in enumerate(messages):
        if message.message_id in seen:
            statuses[index] = DUPLICATE
            repeats.append(message)
        else:
            seen.add(message.message_id)
            fresh.append(index)
    return fresh, repeats


def _new_to_load(conn: sa.Connection, messages: Sequence[Accepted], statuses: list[str],
                 bulk: BulkLoad) -> list[int]:
    """The indexes of the messages new to the load; the others are duplicates, and kept to be
    compared with the stored event at the end (`BulkLoad.finish`)."""
    fresh, repeats = _split_repeats(messages, statuses, bulk.seen)
    if repeats:
        bulk.keep_repeats(conn, repeats)
    return fresh


def _is_conflict(stored: Accepted | event_store.StoredVersion,
                 incoming: Accepted | event_store.StoredVersion) -> bool:
    """A redelivery that carries a different event under the same id.

    Times are not compared: clients change `sentAt` on every retry, so the corrected time of a
    faithful redelivery moves by the network delay.
    """
    same = (stored.type == incoming.type and stored.name == incoming.name
            and stored.group_id == incoming.group_id and stored.actor == incoming.actor
            and (stored.payload == incoming.payload
                 or _same_object(stored.payload, incoming.payload)))
    return not same


def _same_object(first: str, second: str) -> bool:
    """The same JSON object whatever the order of its keys: compared as canonical text, since
    Python's `==` holds `true` equal to `1`."""
    try:
        return _canonical(_decode_object(first)) == _canonical(_decode_object(second))
    except (msgspec.DecodeError, RecursionError):
        return False  # text that cannot be read as a whole differs if its text differs


def _canonical(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def _group_ids(groups: Iterable[Accepted], tracks: Iterable[tuple[int, Accepted]]) -> set[str]:
    ids = {m.group_id for m in groups}
    ids |= {m.group_id for _, m in tracks if m.group_id is not None}
    return ids  # type: ignore[return-value]


def _create_accounts(conn: sa.Connection, groups: list[Accepted],
                     tracks: list[tuple[int, Accepted]], known: set[str],
                     anchor_names: frozenset[str]) -> set[str]:
    """Accounts come from group calls, and from anchor events (contract signed, kickoff)."""
    new: dict[str, int] = {}
    for message in groups:
        new.setdefault(message.group_id, message.received_at)  # type: ignore[arg-type]
    for _, message in tracks:
        if message.group_id is not None and message.name in anchor_names:
            new.setdefault(message.group_id, message.received_at)
    for account_id in known:
        new.pop(account_id, None)
    event_store.insert_accounts(conn, new)
    return set(new)


def _merge_account_traits(conn: sa.Connection, groups: list[Accepted]) -> set[str]:
    if not groups:
        return set()
    stored = event_store.load_traits(conn, "accounts", "id", {m.group_id for m in groups})
    changed = set()
    for message in groups:
        traits = stored.setdefault(message.group_id, {})  # type: ignore[arg-type]
        if merge_traits(traits, _decode_object(message.payload), message.ts, message.message_id,
                        message.received_at):
            changed.add(message.group_id)
    event_store.save_traits(conn, "accounts", "id", {k: stored[k] for k in changed})
    return changed  # type: ignore[return-value]


def _merge_contact_traits(conn: sa.Connection, identifies: list[Accepted]) -> set[str]:
    """Merge contact traits; the accounts the contacts belong to change with them."""
    if not identifies:
        return set()
    actors = {m.actor for m in identifies}
    event_store.ensure_contacts(conn, actors, max(m.received_at for m in identifies))
    stored = event_store.load_traits(conn, "contacts", "user_id", actors)
    changed_actors = set()
    for message in identifies:
        traits = stored.setdefault(message.actor, {})  # type: ignore[arg-type]
        if merge_traits(traits, _decode_object(message.payload), message.ts, message.message_id,
                        message.received_at):
            changed_actors.add(message.actor)
    updated_at = max(m.received_at for m in identifies)
    event_store.upsert_contacts(conn, {k: stored[k] for k in changed_actors}, updated_at)
    return event_store.accounts_of_actors(conn, changed_actors)


def _mark_late_duplicates(conn: sa.Connection, late: set[str], messages: Sequence[Accepted],
                          fresh: list[int], statuses: list[str]) -> list[str]:
    """Ids another writer stored between our check and our insert are duplicates too, and
    conflicts when that writer's event differs; returns the ids in conflict."""
    if not late:
        return []
    stored = event_store.stored_versions(conn, sorted(late))
    conflicting = []
    for index in fresh:
        message = messages[index]
        if message.message_id in late:
            statuses[index] = DUPLICATE
            version = stored.get(message.message_id)
            if version is not None and _is_conflict(version, message):
                conflicting.append(message.message_id)
    return conflicting


def group_statuses(statuses: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for status in statuses:
        counts[status] += 1
    return dict(counts)
