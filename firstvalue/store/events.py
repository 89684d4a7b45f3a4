"""Writes and lookups of the ingest path: events, accounts, contacts, memberships.

SQLite has one writer at a time (the transaction begins IMMEDIATE), so checking for a stored
id and then inserting cannot race there. PostgreSQL may have several API processes writing at
once: its insert goes through a staging table loaded with COPY and `ON CONFLICT DO NOTHING`, and
whatever another process stored in between comes back as a duplicate.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
import sqlalchemy as sa

from firstvalue.store.database import execute_many

if TYPE_CHECKING:
    from firstvalue.ingest.messages import Accepted
    from firstvalue.ingest.pipeline import Memberships

CHUNK = 900  # below SQLite's historical limit of 999 bound parameters
WRITE_CHUNK = 5_000
EVENT_COLUMNS = ("message_id", "type", "name", "account_id", "group_id", "user_id",
                 "anonymous_id", "ts", "received_at", "flags", "properties")

_encode = msgspec.json.encode
_decode = msgspec.json.decode


@dataclass(frozen=True, slots=True)
class StoredVersion:
    type: str
    name: str | None
    group_id: str | None
    actor: str | None
    payload: str


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def select_in(conn: sa.Connection, sql: str, values: Iterable[Any],
              **params: Any) -> list[sa.Row[Any]]:
    """Run `sql` (with `IN :ids`) over all of `values` in one statement; its rows."""
    ids = list(values)
    if not ids:
        return []
    statement = _whole_list_statement(_list_kind(conn, ids), sql)
    return conn.execute(statement, {"ids": _list_value(conn, ids), **params}).all()


def execute_in(conn: sa.Connection, sql: str, values: Iterable[Any], **params: Any) -> int:
    """Run the write `sql` (with `IN :ids`) over `values`; the number of rows it touched.

    On PostgreSQL the ids go in sorted parts, so that two writers lock rows part by part in
    the same order; SQLite has one writer at a time and takes them all at once.
    """
    ids = sorted(values)
    if not ids:
        return 0
    statement = _whole_list_statement(_list_kind(conn, ids), sql)
    size = len(ids) if conn.dialect.name == "sqlite" else WRITE_CHUNK
    count = 0
    for part in chunks(ids, size):
        count += conn.execute(statement, {"ids": _list_value(conn, list(part)), **params}).rowcount
    return count


@lru_cache(maxsize=256)
def _whole_list_statement(kind: str, sql: str) -> sa.TextClause:
    """`sql` with its `IN :ids` taking the whole list as one parameter.

    Expanding `IN (?, ?, ...)` costs a statement per 900 ids and a compilation of each. SQLite
    reads a JSON array with `json_each` instead. PostgreSQL gets text ids as a JSON array too:
    the driver builds a Python list into an array slowly, and for a long literal array the
    planner picks a scan of the whole table where an array from a subquery gets index lookups.
    """
    if sql.count("IN :ids") != 1 or "NOT IN :ids" in sql:
        raise ValueError(f"expected one `IN :ids` in {sql!r}")
    if kind == "sqlite":
        return sa.text(sql.replace("IN :ids", "IN (SELECT value FROM json_each(:ids))"))
    if kind == "postgresql-text":
        return sa.text(sql.replace(
            "IN :ids", "= ANY(ARRAY(SELECT json_array_elements_text(CAST(:ids AS json))))"))
    return sa.text(sql.replace("IN :ids", "= ANY(:ids)"))


def _list_kind(conn: sa.Connection, ids: list[Any]) -> str:
    if conn.dialect.name == "sqlite":
        return "sqlite"
    return "postgresql-text" if all(type(i) is str for i in ids) else "postgresql"


def _list_value(conn: sa.Connection, ids: list[Any]) -> Any:
    if conn.dialect.name == "sqlite" or all(type(i) is str for i in ids):
        return _encode(ids).decode()
    return ids


def event_row(message: Accepted, account_id: str | None) -> tuple[Any, ...]:
    return (message.message_id, message.type, message.name, account_id, message.group_id,
            message.actor, message.anonymous_id, message.ts, message.received_at,
            message.flags, message.payload)


def stored_versions(conn: sa.Connection, message_ids: Sequence[str]) -> dict[str, StoredVersion]:
    rows = select_in(conn, "SELECT message_id, type, name, group_id, user_id, properties "
                           "FROM events WHERE message_id IN :ids", message_ids)
    return {row[0]: StoredVersion(row[1], row[2], row[3], row[4], row[5]) for row in rows}


class AlreadyStored(Exception):
    """Raised by a `strict` insert_events when one of the ids is stored already."""


def insert_events(conn: sa.Connection, rows: list[tuple[Any, ...]],
                  strict: bool = False) -> set[str]:
    """Insert event rows; the ids that turned out to be stored already (PostgreSQL only).

    `strict` raises AlreadyStored instead, for a caller that did not check the ids first and
    rolls back to a savepoint to do it.
    """
    if not rows:
        return set()
    if conn.dialect.name == "sqlite":
        placeholders = ", ".join("?" * len(EVENT_COLUMNS))
        # The driver's own executemany: through SQLAlchemy, each row's parameters were
        # copied in Python first.
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(
                f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({placeholders})", rows)
        except sqlite3.IntegrityError as exc:
            if strict and "events.message_id" in str(exc):
                raise AlreadyStored from None
            raise
        finally:
            cursor.close()
        return set()
    return _insert_events_postgresql(conn, rows, strict)


def _insert_events_postgresql(conn: sa.Connection, rows: list[tuple[Any, ...]],
                              strict: bool) -> set[str]:
    """COPY the rows straight into `events`; through the staging table if that meets an id that
    another writer stored since our check.

    The direct COPY is the common case (the ids were checked in this transaction) and half the
    server's work of the staging path. It runs in a savepoint: a unique violation rolls back
    just the COPY, and the staging path sorts out which ids were taken.
    """
    columns = ", ".join(EVENT_COLUMNS)
    savepoint = conn.begin_nested()
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY events ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.errors.UniqueViolation:
        savepoint.rollback()
        if strict:
            raise AlreadyStored from None
        return _insert_events_staged(conn, rows)
    finally:
        cursor.close()
    savepoint.commit()
    return set()


def _insert_events_staged(conn: sa.Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    columns = ", ".join(EVENT_COLUMNS)
    # The staging table is the session's own and names nothing of the schema (no LIKE, no
    # shared sequence), so dropping a schema never waits on another session's temp table.
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS events_staging (seq BIGSERIAL, message_id TEXT, "
        "type TEXT, name TEXT, account_id TEXT, group_id TEXT, user_id TEXT, anonymous_id TEXT, "
        "ts BIGINT, received_at BIGINT, flags INTEGER, properties TEXT) ON COMMIT DELETE ROWS")
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY events_staging ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    inserted = conn.exec_driver_sql(
        f"INSERT INTO events ({columns}) SELECT {columns} FROM events_staging "
        "ORDER BY seq ON CONFLICT (message_id) DO NOTHING RETURNING message_id").scalars().all()
    conn.exec_driver_sql("TRUNCATE events_staging")
    if len(inserted) == len(rows):
        return set()
    return {row[0] for row in rows} - set(inserted)


# The events table's costly indexes: a bulk load drops them and builds them again once its rows
# are in (`ingest.pipeline.BulkLoad`). The unique id takes random keys, and the account index
# holds (on SQLite) every column the engine reads; the partial indexes stay, since the load
# reads through them and they cost little (docs/performance.md).
BULK_REBUILT_INDEXES = ("ix_events_message_id", "ix_events_account_facts", "ix_events_account_ts")
TABLE_LOCK_SECONDS = 5.0


class TableInUse(Exception):
    """Raised by `drop_rebuilt_indexes` when PostgreSQL's events table stays in use."""


def drop_rebuilt_indexes(conn: sa.Connection) -> list[str]:
    """Drop `BULK_REBUILT_INDEXES` in the open transaction; the statements that create them as
    they were.

    On PostgreSQL this needs the table to itself. The lock is asked for without waiting in
    line, a few times over `TABLE_LOCK_SECONDS`, then given up (`TableInUse`): waiting in line
    would hold up every reader that comes after, and a tick reading in worker processes beside
    its own open transaction would wait for this one while this one waits for the tick, a
    cycle PostgreSQL cannot see.
    """
    if conn.dialect.name == "postgresql":
        _lock_events(conn)
    names = ", ".join(f"'{name}'" for name in BULK_REBUILT_INDEXES)
    if conn.dialect.name == "sqlite":
        found = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
            f"AND name IN ({names}) ORDER BY name").all()
    else:
        found = conn.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            f"AND tablename = 'events' AND indexname IN ({names}) ORDER BY indexname").all()
    for name, _ in found:
        conn.exec_driver_sql(f"DROP INDEX {name}")
    return [definition for _, definition in found]


def _lock_events(conn: sa.Connection) -> None:
    deadline = time.monotonic() + TABLE_LOCK_SECONDS
    while True:
        attempt = conn.begin_nested()
        try:
            conn.exec_driver_sql("LOCK TABLE events IN ACCESS EXCLUSIVE MODE NOWAIT")
        except sa.exc.OperationalError as exc:
            attempt.rollback()
            if not isinstance(exc.orig, psycopg.errors.LockNotAvailable):
                raise
            if time.monotonic() >= deadline:
                raise TableInUse from None
            time.sleep(0.2)
        else:
            attempt.commit()
            return


def create_indexes(conn: sa.Connection, definitions: Iterable[str]) -> None:
    for definition in definitions:
        conn.exec_driver_sql(definition)


# A bulk load's repeated ids, kept until its end to be compared with the stored events: a
# table of the load's own transaction, created and dropped in it (never committed).
REPEATS_TABLE = "bulk_load_repeats"


def create_repeats_table(conn: sa.Connection) -> None:
    conn.exec_driver_sql(
        f"CREATE TABLE {REPEATS_TABLE} (message_id TEXT NOT NULL, type TEXT NOT NULL, "
        "name TEXT, group_id TEXT, user_id TEXT, properties TEXT NOT NULL)")


def insert_repeats(conn: sa.Connection, rows: list[tuple[str | None, ...]]) -> None:
    """Rows of message_id, type, name, group_id, user_id and properties."""
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    conn.exec_driver_sql(
        f"INSERT INTO {REPEATS_TABLE} (message_id, type, name, group_id, user_id, properties) "
        f"VALUES ({', '.join([mark] * 6)})", rows)


def repeats_and_stored(conn: sa.Connection) -> Iterator[tuple[str, StoredVersion,
                                                              StoredVersion]]:
    """Each repeat's id, the repeat and the stored event of that id; read a part at a time."""
    result = conn.exec_driver_sql(
        "SELECT r.message_id, r.type, r.name, r.group_id, r.user_id, r.properties, e.type, "
        f"e.name, e.group_id, e.user_id, e.properties FROM {REPEATS_TABLE} r "
        "JOIN events e ON e.message_id = r.message_id",
        execution_options={"stream_results": True, "max_row_buffer": 5_000})
    for row in result:
        yield row[0], StoredVersion(*row[1:6]), StoredVersion(*row[6:])


def drop_repeats_table(conn: sa.Connection) -> None:
    conn.exec_driver_sql(f"DROP TABLE {REPEATS_TABLE}")


def stored_message_ids(conn: sa.Connection) -> set[str]:
    return set(conn.exec_driver_sql("SELECT message_id FROM events").scalars())


def events_upper_bound(conn: sa.Connection) -> int:
    """At least the number of stored events, read in one index step (a count reads them all)."""
    return int(conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM events").scalar() or 0)


def known_accounts(conn: sa.Connection, account_ids: Iterable[str]) -> set[str]:
    rows = select_in(conn, "SELECT id FROM accounts WHERE id IN :ids", account_ids)
    return {row[0] for row in rows}


def insert_accounts(conn: sa.Connection, created: dict[str, int]) -> None:
    if not created:
        return
    execute_many(conn, "INSERT INTO accounts (id, created_at) VALUES (:id, :at) "
                       "ON CONFLICT (id) DO NOTHING",
                 [{"id": key, "at": at} for key, at in created.items()])


def load_traits(conn: sa.Connection, table: str, key: str,
                ids: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    """The stored traits of these rows, locked until the transaction ends on PostgreSQL.

    The lock makes a second writer merging into the same account or contact wait and then read
    what the first one wrote, instead of both merging into the same old traits and the last
    to commit losing the other's. (SQLite has one writer at a time already.)
    """
    # In the order of Python's sort (by code point, as the "C" collation sorts), as a tick
    # and `mark_changed` lock accounts, whatever the database's own collation.
    lock = "" if conn.dialect.name == "sqlite" else f' ORDER BY {key} COLLATE "C" FOR UPDATE'
    rows = select_in(conn, f"SELECT {key}, traits FROM {table} WHERE {key} IN :ids{lock}",
                     sorted(ids))
    return {row[0]: _decode(row[1]) for row in rows}


def save_traits(conn: sa.Connection, table: str, key: str,
                traits: dict[str, dict[str, list[Any]]]) -> None:
    if traits:
        execute_many(conn, f"UPDATE {table} SET traits = :traits WHERE {key} = :id",
                     [{"id": k, "traits": _encode(v).decode()} for k, v in traits.items()])


def ensure_contacts(conn: sa.Connection, actors: Iterable[str], now: int) -> None:
    """Create empty contact rows, so that merging traits can lock an existing row."""
    ids = sorted(actors)
    if ids:
        execute_many(conn, "INSERT INTO contacts (user_id, traits, updated_at) "
                           "VALUES (:id, '{}', :at) ON CONFLICT (user_id) DO NOTHING",
                     [{"id": actor, "at": now} for actor in ids])


def upsert_contacts(conn: sa.Connection, traits: dict[str, dict[str, list[Any]]],
                    updated_at: int) -> None:
    if traits:
        execute_many(conn, (
            "INSERT INTO contacts (user_id, traits, updated_at) VALUES (:id, :traits, :at) "
            "ON CONFLICT (user_id) DO UPDATE SET traits = excluded.traits, "
            "updated_at = excluded.updated_at"),
            [{"id": k, "traits": _encode(v).decode(), "at": updated_at}
             for k, v in traits.items()])


def load_memberships(conn: sa.Connection, actors: Iterable[str]) -> Memberships:
    from firstvalue.ingest.pipeline import Memberships

    memberships = Memberships()
    rows = select_in(conn, "SELECT user_id, ts, message_id, account_id FROM memberships "
                           "WHERE user_id IN :ids", actors)
    for actor, ts, message_id, account_id in rows:
        memberships.add(actor, ts, message_id, account_id)
    return memberships


def insert_memberships(conn: sa.Connection, groups: Sequence[Accepted]) -> None:
    if groups:
        execute_many(conn, (
            "INSERT INTO memberships (message_id, user_id, account_id, ts) "
            "VALUES (:mid, :actor, :account, :ts) ON CONFLICT (message_id) DO NOTHING"),
            [{"mid": m.message_id, "actor": m.actor, "account": m.group_id, "ts": m.ts}
             for m in groups])


def accounts_of_actors(conn: sa.Connection, actors: Iterable[str]) -> set[str]:
    rows = select_in(conn, "SELECT DISTINCT account_id FROM memberships WHERE user_id IN :ids",
                     actors)
    return {row[0] for row in rows}


def attach_held_events(conn: sa.Connection, account_ids: Iterable[str], now: int) -> set[str]:
    """Held events that named one of these (now known) accounts belong to it from now on."""
    ids = sorted(account_ids)
    if not ids:
        return set()
    rows = select_in(conn, "SELECT DISTINCT group_id FROM events WHERE account_id IS NULL "
                           "AND group_id IN :ids AND type = 'track'", ids)
    attached = {row[0] for row in rows}
    execute_in(conn, "UPDATE events SET account_id = group_id, attached_at = :now "
                     "WHERE account_id IS NULL AND group_id IN :ids AND type = 'track'", attached,
               now=now)
    return attached


def reattribute(conn: sa.Connection, actors: Iterable[str], memberships: Memberships,
                now: int) -> set[str]:
    """Recompute the account of the actors' membership-attributed events after group calls.

    A group call can arrive after the events it explains, or be dated before events already
    attributed elsewhere; attribution follows the calls' own times, not their arrival.
    """
    rows = select_in(conn, "SELECT id, user_id, ts, account_id FROM events "
                           "WHERE group_id IS NULL AND type = 'track' AND user_id IN :ids",
                     actors)
    moves = []
    changed: set[str] = set()
    for event_id, actor, ts, account_id in rows:
        target = memberships.account_at(actor, ts)
        if target != account_id:
            moves.append({"id": event_id, "account": target, "now": now})
            changed |= {a for a in (account_id, target) if a is not None}
    if moves:
        # An event reaches its account's engine when it is attached, not when it arrived.
        execute_many(conn, "UPDATE events SET account_id = :account, attached_at = :now "
                           "WHERE id = :id", moves)
    return changed


def lock_accounts(conn: sa.Connection, account_ids: Iterable[str]) -> None:
    """On PostgreSQL, lock these accounts' rows until the transaction ends, in one statement
    and in the order every writer locks accounts in: Python's sort, by code point, as the
    "C" collation sorts (a tick locks each batch so, `runtime.evaluation`). Two writers that
    lock in one order wait for each other rather than deadlock. (SQLite has one writer.)"""
    if conn.dialect.name != "sqlite":
        select_in(conn, 'SELECT id FROM accounts WHERE id IN :ids ORDER BY id COLLATE "C" '
                        "FOR UPDATE", sorted(account_ids))


def lock_users(conn: sa.Connection, user_ids: Iterable[str]) -> None:
    """On PostgreSQL, take a lock for each of these users until the transaction ends (an
    advisory lock on a hash of the schema and the id), all in one statement, in the order of
    the hashes. Every ingest batch takes its users' before it reads their group memberships,
    so no other batch can change those memberships (and so the accounts the batch will
    change) between its read and its commit. (SQLite has one writer.)"""
    ids = sorted(set(user_ids))
    if conn.dialect.name == "sqlite" or not ids:
        return
    conn.execute(sa.text(
        "SELECT count(pg_advisory_xact_lock(s.k)) FROM (SELECT DISTINCT hashtextextended("
        "'firstvalue-user:' || current_schema() || ':' || u, 0) AS k "
        "FROM json_array_elements_text(CAST(:ids AS json)) AS u ORDER BY k) AS s"),
        {"ids": _encode(ids).decode()})


def mark_changed(conn: sa.Connection, account_ids: Iterable[str]) -> None:
    ids = sorted(account_ids)
    # An UPDATE locks its rows in the order it finds them, not in the ids' order.
    lock_accounts(conn, ids)
    execute_in(conn, "UPDATE accounts SET change_seq = change_seq + 1 WHERE id IN :ids", ids)


def add_to_counter(conn: sa.Connection, name: str, amount: int) -> None:
    conn.execute(sa.text("INSERT INTO counters (name, value) VALUES (:name, :amount) "
                         "ON CONFLICT (name) DO UPDATE SET value = counters.value + :amount"),
                 {"name": name, "amount": amount})


def read_counter(conn: sa.Connection, name: str) -> int:
    value = conn.execute(sa.text("SELECT value FROM counters WHERE name = :name"),
                         {"name": name}).scalar()
    return int(value or 0)


def held_events_summary(conn: sa.Connection, older_than: int) -> list[sa.Row[Any]]:
    """Held events by the account or user they wait for, oldest first."""
    return conn.execute(sa.text(
        "SELECT COALESCE(group_id, user_id) AS waiting_for, COUNT(*) AS events, "
        "MIN(received_at) AS since FROM events WHERE account_id IS NULL AND type = 'track' "
        "AND received_at <= :before GROUP BY COALESCE(group_id, user_id) ORDER BY since"),
        {"before": older_than}).all()
