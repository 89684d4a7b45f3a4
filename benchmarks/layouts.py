"""What the events table's indexes cost a bulk insert into SQLite: `python benchmarks/layouts.py`.

The import target (100,000 events/s into SQLite in one process) sits above the floor that
`run.py` measures: the stored rows inserted raw into the table with its indexes. This script
takes the rows of an imported store (by default `run.py`'s `bench-import.db`) and inserts them,
in file order, 100,000 rows a transaction as the import commits, into a fresh SQLite file under
other layouts of the table, and prints the rate and CPU time of each: how much of the floor
each index takes, and what a clustered table or a sorted chunk would give back.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
CHUNK = 100_000
COLUMNS = ("message_id, type, name, account_id, group_id, user_id, anonymous_id, ts, "
           "received_at, attached_at, flags, properties")
FACTS = "account_id, type, name, ts, message_id, user_id, received_at, attached_at, properties"
TABLE = """CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL, type TEXT NOT NULL, name TEXT, account_id TEXT, group_id TEXT,
    user_id TEXT, anonymous_id TEXT, ts BIGINT NOT NULL, received_at BIGINT NOT NULL,
    attached_at BIGINT, flags INTEGER NOT NULL DEFAULT 0,
    properties TEXT NOT NULL DEFAULT '{}')"""
CLUSTERED = TABLE.replace("id INTEGER PRIMARY KEY AUTOINCREMENT", "id INTEGER NOT NULL")[
    :-1] + ", PRIMARY KEY (account_id, ts, id)) WITHOUT ROWID"
UNIQUE_ID = "CREATE UNIQUE INDEX ix_message_id ON events (message_id)"
COVERING = f"CREATE INDEX ix_facts ON events ({FACTS})"
ACCOUNT_TS = "CREATE INDEX ix_account_ts ON events (account_id, ts)"
PARTIAL = ("CREATE INDEX ix_member ON events (user_id) WHERE group_id IS NULL",
           "CREATE INDEX ix_held ON events (group_id) WHERE account_id IS NULL")
INSERT = f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 12)})"
INSERT_WITH_ID = f"INSERT INTO events (id, {COLUMNS}) VALUES ({', '.join('?' * 13)})"

Rows = list[tuple[Any, ...]]


def as_stored(rows: Rows) -> Rows:
    return rows


def by_account_in_chunks(rows: Rows) -> Rows:
    """Each transaction's rows sorted by (account, time): the covering index is then written
    in order within the chunk."""
    ordered: Rows = []
    for start in range(0, len(rows), CHUNK):
        ordered += sorted(rows[start:start + CHUNK], key=lambda row: (row[3] or "", row[7]))
    return ordered


def with_ids(rows: Rows) -> Rows:
    """Rows for the clustered table: an explicit id, and '' for a held event's account."""
    return [(number, *row[:3], row[3] or "", *row[4:]) for number, row in enumerate(rows, 1)]


LAYOUTS: list[tuple[str, list[str], str, Callable[[Rows], Rows]]] = [
    ("as shipped: unique id, covering, 2 partial", [TABLE, UNIQUE_ID, COVERING, *PARTIAL],
     INSERT, as_stored),
    ("as shipped, each chunk sorted by account", [TABLE, UNIQUE_ID, COVERING, *PARTIAL],
     INSERT, by_account_in_chunks),
    ("unique id, (account_id, ts), 2 partial", [TABLE, UNIQUE_ID, ACCOUNT_TS, *PARTIAL],
     INSERT, as_stored),
    ("clustered on (account_id, ts, id), unique id, 2 partial",
     [CLUSTERED, UNIQUE_ID, *PARTIAL], INSERT_WITH_ID, with_ids),
    ("unique id only", [TABLE, UNIQUE_ID], INSERT, as_stored),
    ("covering only", [TABLE, COVERING], INSERT, as_stored),
    ("no index", [TABLE], INSERT, as_stored),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=DATA / "bench-import.db",
                        help="an imported store to take the rows from (run.py makes one)")
    args = parser.parse_args()
    if not args.db.is_file():
        parser.error(f"no store at {args.db}; run benchmarks/run.py --skip-postgres first, "
                     "or name an imported store with --db")
    with sqlite3.connect(args.db) as source:
        rows = source.execute(f"SELECT {COLUMNS} FROM events ORDER BY id").fetchall()
    print(f"{len(rows):,} rows from {args.db}, {CHUNK:,} a transaction")
    load_before = os.getloadavg()
    for name, statements, insert, arrange in LAYOUTS:
        seconds, cpu = insert_rows(args.db.parent / "bench-layout.db", statements, insert,
                                   arrange(rows))
        print(f"{name:58} {len(rows) / seconds:>9,.0f} rows/s  {seconds:6.2f} s  "
              f"(CPU {cpu:.2f} s)", flush=True)
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}"
          .format(*load_before, *os.getloadavg()))


def insert_rows(path: Path, statements: list[str], insert: str,
                rows: Rows) -> tuple[float, float]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    # The settings firstvalue opens SQLite with (store/database.py).
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-262144")
    for statement in statements:
        conn.execute(statement)
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(rows), CHUNK):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, rows[start:start + CHUNK])
        conn.execute("COMMIT")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return seconds, cpu


if __name__ == "__main__":
    main()
