"""Opening the store: engine, pragmas, migrations."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import operator
import random
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from firstvalue.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_SECONDS = 30  # how long a writer waits for SQLite's write lock before it fails
# PostgreSQL's codes for a transaction stopped because of another one: a deadlock, and a
# serialization failure. The work of such a transaction is rolled back whole and may simply
# run again (see `retry_conflicts`).
CONFLICT_CODES = {"40P01": "a deadlock", "40001": "a serialization failure"}
CONFLICT_ATTEMPTS = 5
CONFLICT_BACKOFF_SECONDS = 0.05  # the first wait before trying again; it doubles each time

T = TypeVar("T")


GUARD_HINT = ("guard the script's top level with `if __name__ == \"__main__\":` (worker "
              "processes import it again), or set FIRSTVALUE_EVALUATION_WORKERS=0")


@dataclass
class Database:
    engine: Engine
    url: str

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A transaction that writes. On SQLite it takes the write lock when it begins, so two
        writers queue instead of one failing with "database is locked" when its read turns
        into a write; reads (`engine.connect()`) begin as usual and never wait on a writer."""
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # A worker process of a large evaluation imports the caller's main script again
            # before it starts. A script without the guard would run again in each worker: a
            # second tick or import, and on SQLite a wait of 30 s for the caller's write lock
            # before the worker failed (found by review). Stopped at once instead. (Merely
            # opening the store there, as a module imported by a guarded script may, is fine.)
            raise StoreError("firstvalue was asked to write while a worker process was "
                             f"importing your script's top level again; {GUARD_HINT}.")
        with self.engine.connect().execution_options(firstvalue_write=True) as conn, \
                conn.begin():
            yield conn


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for a firstvalue `--db` value (psycopg 3 for PostgreSQL)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith(("sqlite:///", "postgresql+psycopg://")) or url == "sqlite://":
        return url
    raise StoreError(
        f"--db {url!r} is not a database URL firstvalue knows; use sqlite:///firstvalue.db "
        "or postgresql://USER@HOST:5432/DB"
    )


def take_turns(conn: sa.Connection, name: str) -> None:
    """On PostgreSQL, wait until no other transaction holds the lock `name` of this store
    (its schema), and hold it until this transaction ends: an advisory lock on a hash of the
    name and the schema, so that stores in other schemas of the database do not wait. (On
    SQLite the write lock already makes writers take turns.)"""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended("
                             "'firstvalue-' || :name || ':' || current_schema(), 0))"),
                     {"name": name})


def missing_sqlite_file(url: str) -> str | None:
    """The file a SQLite `--db` URL names, if it is not there (None for PostgreSQL, for a
    store in memory, for a URL with options, and for a file that exists)."""
    if not url.startswith("sqlite:///") or "?" in url:  # a URI with options: not judged here
        return None
    path = sa.engine.make_url(url).database
    if not path or path == ":memory:" or Path(path).exists():
        return None
    return path


def open_database(url: str, migrate: bool = True) -> Database:
    """Open (and by default migrate to the latest schema) the database at `url`."""
    engine = _create_engine(engine_url(url))
    database = Database(engine=engine, url=url)
    if migrate:
        try:
            upgrade(database)
        except sa.exc.DBAPIError as exc:
            problem, fix = str(exc.orig), (
                "check that --db names a firstvalue database or a new file" if database.is_sqlite
                else "check that --db names an existing PostgreSQL database, user and schema "
                     "that this user may create tables in")
            if isinstance(exc.orig, psycopg.errors.InvalidSchemaName):
                problem = problem.splitlines()[0]
                fix = (f"no schema of its search_path ({_search_path(engine)}) exists: create "
                       "it first (CREATE SCHEMA name), or name an existing one in the URL "
                       "(options=-csearch_path%3Dname)")
            engine.dispose()
            raise StoreError(f"cannot open the database {url!r}: {problem}; {fix}") from None
    return database


def _search_path(engine: Engine) -> str:
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW search_path").scalar())
    except sa.exc.DBAPIError:
        return "unknown"


def _create_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)

    engine = sa.create_engine(url, connect_args={"check_same_thread": False,
                                                 "timeout": SQLITE_BUSY_SECONDS})

    @sa.event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # WAL lets readers (the API) go on while the single writer commits; NORMAL sync is
        # durable across application crashes in WAL mode, which is what the outbox needs.
        # The driver's own transaction handling is switched off so that SQLAlchemy's BEGIN
        # is the only one (see the SQLAlchemy docs on pysqlite's transactions).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA cache_size=-262144")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        # Writers (Database.write) take the write lock at the start; readers do not, so that
        # in WAL mode they go on while the single writer works.
        immediate = conn.get_execution_options().get("firstvalue_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config(connection: sa.Connection) -> Config:
    # Alembic is imported when a store is migrated, not by every process that opens one
    # (worker processes, read commands): its import took 0.19 s of their start.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(database: Database) -> None:
    """Migrate to the latest schema. A store already there is only read, so opening the
    database never waits for another process's write lock."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with database.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
        heads = ScriptDirectory.from_config(alembic_config(connection)).get_heads()
    if set(current) == set(heads):
        return
    with database.write() as connection:
        from alembic import command

        # Processes starting at once on an older store would each migrate it, and all but one
        # then stopped with a raw Alembic error: they take turns, and each reads the version
        # after its turn comes (Alembic reads it inside `upgrade`), so the later ones find
        # nothing left to do.
        take_turns(connection, "migrate")
        command.upgrade(alembic_config(connection), "head")


@dataclass(frozen=True)
class ManyRows:
    """A write of many rows, in the form that is fastest on each store.

    `sql` writes one row from its `:name` parameters; SQLite runs it for each row through the
    driver's `executemany`, a loop in C with no round trips. On PostgreSQL every row of an
    `executemany` is a statement of its own for the server, and a loop in Python in the
    driver: the writes of a full tick of 10,000 accounts (172,000 rows) took 5.6 s that way.
    There the rows go into a temporary table with a binary `COPY` and `recordset` writes them
    all in one statement, `{rows}` standing for that table as `r`, with `columns`
    (`name type, ...`, the types among `COPY_TYPES`). Rows are copied in their order. A role
    that may not create temporary tables writes by `executemany` instead.
    (Measured on the 107,000 outbox rows of a full tick: `executemany` 3.3 s; one statement
    reading them as JSON with `json_to_recordset` 2.5 s, of which the server's parsing
    1.1 s; copied, 0.2 s plus 1.75 s for the insert.)
    """

    sql: str
    recordset: str
    columns: str

    @cached_property
    def staging(self) -> tuple[str, tuple[str, ...], list[str]]:
        """Its temporary table (one for each set of columns), the columns' names and their
        binary `COPY` types."""
        pairs = [column.split() for column in self.columns.split(",")]
        return (f"pg_temp.firstvalue_rows_{zlib.crc32(self.columns.encode()):08x}",
                tuple(name for name, _ in pairs), [COPY_TYPES[kind] for _, kind in pairs])


COPY_TYPES = {"text": "text", "integer": "int4", "bigint": "int8"}
# By store URL: False once its role was found unable to create temporary tables (a hardened
# database may revoke TEMPORARY from PUBLIC); its many-row writes then go by `executemany`.
_TEMPORARY: dict[str, bool] = {}


def _write_staged(conn: sa.Connection, write: ManyRows, rows: list[dict[str, Any]]) -> bool:
    """The rows copied into a temporary table and written by one statement; False, having
    written nothing, when the role may no longer create temporary tables.

    The table is made once a transaction for each set of columns (dropped at its commit) and
    emptied before each use: made and dropped for each write, its locks stayed until the
    commit, about nine a write, and a tick of hundreds of thousands of accounts would run out
    of PostgreSQL's lock table.
    """
    stage, names, types = write.staging
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} "
                             f"({write.columns}) ON COMMIT DROP")
    except sa.exc.ProgrammingError as exc:
        if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise
        savepoint.rollback()
        _TEMPORARY[str(conn.engine.url)] = False
        log.warning("The store's database role may not create temporary tables: a tick "
                    "writes row by row, more slowly (grant TEMPORARY to speed it up).")
        return False
    savepoint.commit()
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"TRUNCATE {stage}")
        # itemgetter of one name gives the value itself, not a row of one.
        pick = operator.itemgetter(*names) if len(names) > 1 else (
            lambda row: (row[names[0]],))
        with cursor.copy(f"COPY {stage} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(pick(row))
        cursor.execute(write.recordset.replace("{rows}", f"{stage} AS r"))
    finally:
        cursor.close()
    return True


def execute_many(conn: sa.Connection, sql: str | ManyRows, rows: list[dict[str, Any]]) -> None:
    """One statement (`:name` parameters) for many rows, through the driver's own
    `executemany`: SQLAlchemy's per-row parameter processing cost more than the writes
    themselves on a full tick. A `ManyRows` is one statement for all of them on PostgreSQL."""
    if not rows:
        return
    if isinstance(sql, ManyRows):
        if conn.dialect.name == "postgresql" and _TEMPORARY.get(str(conn.engine.url), True) \
                and _write_staged(conn, sql, rows):
            return
        sql = sql.sql
    compiled = sa.text(sql).compile(dialect=conn.dialect)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if compiled.positional:
            order = compiled.positiontup or []
            # itemgetter builds each row's tuple in C: a generator per row cost a second of
            # a full tick's 136,000 outbox rows.
            if len(order) > 1:
                pick = operator.itemgetter(*order)
                values = [pick(row) for row in rows]
            else:
                values = [tuple(row[name] for name in order) for row in rows]
            cursor.executemany(compiled.string, values)
        else:
            cursor.executemany(compiled.string, rows)
    finally:
        cursor.close()


def store_busy(exc: Exception) -> bool:
    """Whether `exc` says the store is busy rather than broken: SQLite's write lock held by
    another process past the wait (`SQLITE_BUSY_SECONDS`), or no free connection in the pool
    for as long (every one waiting for that lock, or in use)."""
    if isinstance(exc, sa.exc.TimeoutError):
        return True
    if isinstance(exc, sqlite3.OperationalError):  # from the driver's own cursor (execute_many)
        return "database is locked" in str(exc)
    return isinstance(exc, sa.exc.OperationalError) and "database is locked" in str(exc.orig)


def conflict_code(exc: BaseException) -> str | None:
    """PostgreSQL's code if `exc` says the transaction was stopped for another one's sake
    (`CONFLICT_CODES`), whether raised through SQLAlchemy or by the driver's own cursor."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    code = getattr(orig, "sqlstate", None) if isinstance(orig, psycopg.Error) else None
    return code if code in CONFLICT_CODES else None


def retry_conflicts(work: Callable[[], T], what: str) -> T:
    """Run `work`, one whole write transaction, again when PostgreSQL stopped it for a
    deadlock or a serialization failure with another writer, up to `CONFLICT_ATTEMPTS` times
    in all, after a short random wait that doubles each time.

    A tick and an ingest batch lock account rows in several statements each, so under load
    each may wait for the other's (a review found 1 to 2 of 5 ticks failing so). PostgreSQL
    then rolls one transaction back whole, and running it again is what its documentation
    advises. `work` must do nothing outside its transaction that a second run would repeat.
    """
    attempt = 1
    while True:
        try:
            return work()
        except Exception as exc:
            code = conflict_code(exc)
            if code is None or attempt == CONFLICT_ATTEMPTS:
                raise
        attempt += 1
        log.warning("%s was stopped by %s with another writer (SQLSTATE %s) and rolled back; "
                    "running it again (attempt %d of %d).", what, CONFLICT_CODES[code], code,
                    attempt, CONFLICT_ATTEMPTS)
        time.sleep(random.uniform(0.5, 1.0) * CONFLICT_BACKOFF_SECONDS * 2 ** (attempt - 2))


def holds_nul(value: Any, raw: bytes | str | None = None) -> bool:
    """Whether a decoded JSON document holds a NUL character in any key or string.

    PostgreSQL text cannot store one, so documents that hold one are refused on every store.
    JSON carries a NUL only as the escape `\\u0000`: given the `raw` text the document was
    decoded from, a document whose text has no such escape is passed without a walk. The walk
    is what tells a real NUL from the same six characters typed as text (`"C:\\\\u0000"`, a
    backslash and `u0000`).
    """
    if raw is not None and (b"\\u0000" if isinstance(raw, bytes) else "\\u0000") not in raw:
        return False
    # A loop, not recursion: the document may be nested deeper than Python's stack allows.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
