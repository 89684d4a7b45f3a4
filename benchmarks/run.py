"""The ingest and evaluation benchmark: `python benchmarks/run.py` (see benchmarks/README.md).

Each measurement runs in a process of its own, so that its peak memory is its own and one
phase's caches do not flatter the next. The data set is generated once into benchmarks/data/
and reused.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.clock import to_micros
from firstvalue.store.database import engine_url, open_database
from firstvalue.store.events import (
    EVENT_COLUMNS,
    create_indexes,
    drop_rebuilt_indexes,
    insert_events,
)

sys.path.insert(0, str(Path(__file__).parent))
from dataset import END, ensure_dataset  # noqa: E402

DATA = Path(__file__).parent / "data"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
RECEIVED_AT = to_micros(END + timedelta(hours=1))
CHANGED_ACCOUNTS = 100
TARGETS = {"sqlite_import": 100_000, "postgresql_import": 80_000, "evaluation_s": 5.0,
           "changed_tick_s": 0.2, "peak_mb": 1024}


def main() -> None:
    args = _parse_args()
    path = ensure_dataset(args.data, args.accounts, args.events)
    lines = sum(1 for _ in path.open("rb"))
    print(f"data set: {path} ({lines:,} messages, {path.stat().st_size / 2**20:.0f} MiB)")

    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {"sqlite": _run_sqlite(path, args.data)}
    if not args.skip_postgres:
        results["postgresql"] = _run_postgresql(path, args.pg)
    load_after = os.getloadavg()
    _print_table(results, lines)
    # Other work on the machine slows every figure; the load average says how much there was.
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}"
          .format(*load_before, *load_after))
    if args.json:
        args.json.write_text(json.dumps({"messages": lines, "load_before": load_before,
                                         "load_after": load_after, **results}, indent=2) + "\n")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="messages in the file, group and identify calls included")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--pg", default=PG_URL, help="PostgreSQL URL (a schema is made in it)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args()


def _run_sqlite(path: Path, data: Path) -> dict[str, Any]:
    imported = data / "bench-import.db"
    floor = data / "bench-floor.db"
    for db in (imported, floor):
        _remove_sqlite(db)
    url = f"sqlite:///{imported}"
    figures = _in_child(measure_import, url, path)
    figures |= _in_child(measure_floor, url, f"sqlite:///{floor}", path)
    _remove_sqlite(floor)
    figures |= _in_child(measure_floor, url, f"sqlite:///{floor}", path, True)
    figures |= _in_child(measure_evaluation, url)
    return figures


def _remove_sqlite(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _run_postgresql(path: Path, pg: str) -> dict[str, Any]:
    admin = sa.create_engine(engine_url(pg))
    schemas = [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    with admin.begin() as conn:
        for schema in schemas:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in pg else "?"
    imported, floor, bulk_floor = (f"{pg}{separator}options=-csearch_path%3D{s}"
                                   for s in schemas)
    try:
        figures = _in_child(measure_import, imported, path)
        figures |= _in_child(measure_floor, imported, floor, path)
        figures |= _in_child(measure_floor, imported, bulk_floor, path, True)
        figures |= _in_child(measure_evaluation, imported)
    finally:
        with admin.begin() as conn:
            for schema in schemas:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
    return figures


def _in_child(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh process; its figures and its peak memory. (Not a
    `multiprocessing.Pool`: its processes are daemonic, and may not start the evaluation's
    worker processes.)"""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_measured, function, *args).result()


def _measured(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    from firstvalue.runtime.workers import worker_peak_mb

    figures = function(*args)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures[f"{function.__name__.removeprefix('measure_')}_peak_mb"] = round(peak_mb)
    figures[f"{function.__name__.removeprefix('measure_')}_worker_peak_mb"] = round(
        worker_peak_mb())
    return figures


def measure_import(url: str, path: Path) -> dict[str, Any]:
    """`import_file` into a fresh, migrated store: parse, validate, dedupe, attribute, insert."""
    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.ingest.files import ImportSummary, import_file
    from firstvalue.playbook.loader import load_playbook

    playbook = compile_playbook(load_playbook())
    database = open_database(url)
    summary = ImportSummary()
    started, cpu = time.perf_counter(), time.process_time()
    import_file(database, path, RECEIVED_AT, playbook.anchor_names, summary)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    with database.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT COUNT(*) FROM events").scalar()
        held = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM events WHERE account_id IS NULL AND type = 'track'").scalar()
    database.dispose()
    return {"import_s": round(seconds, 2), "import_cpu_s": round(cpu, 2),
            "import_per_s": round(summary.lines / seconds),
            "statuses": dict(summary.statuses), "stored": stored, "held": held}


def measure_floor(source: str, target: str, path: Path, bulk: bool = False) -> dict[str, Any]:
    """The imported rows, in file order, inserted raw into the same (migrated) table in one
    transaction by `insert_events` (`executemany` on SQLite, `COPY` on PostgreSQL); with
    `bulk`, as a bulk load stores them: the same indexes dropped first and created again."""
    rows = _stored_rows(source, path)
    database = open_database(target)
    started = time.perf_counter()
    with database.write() as conn:
        definitions = drop_rebuilt_indexes(conn) if bulk else []
        insert_events(conn, rows)
        create_indexes(conn, definitions)
    seconds = time.perf_counter() - started
    database.dispose()
    name = "floor_bulk" if bulk else "floor"
    return {f"{name}_s": round(seconds, 2), f"{name}_per_s": round(len(rows) / seconds)}


class _Identified(msgspec.Struct):
    messageId: str


def _stored_rows(url: str, path: Path) -> list[tuple[Any, ...]]:
    """The rows the import stored, in the order of the file's lines."""
    decode = msgspec.json.Decoder(_Identified).decode
    with path.open("rb") as lines:
        position = {decode(line).messageId: number for number, line in enumerate(lines)}
    database = open_database(url)
    with database.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events").all()
    database.dispose()
    return sorted((tuple(row) for row in rows), key=lambda row: position[row[0]])


def measure_evaluation(url: str) -> dict[str, Any]:
    """A tick over the freshly imported store, the read path, then a tick after 100 changes."""
    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.ingest.service import ingest_messages
    from firstvalue.playbook.loader import load_playbook
    from firstvalue.runtime.evaluation import evaluate_accounts, tick

    playbook = compile_playbook(load_playbook())
    database = open_database(url)
    started, cpu = time.perf_counter(), _cpu_used()
    full = tick(database, playbook, RECEIVED_AT)
    full_s, full_cpu = time.perf_counter() - started, _cpu_used(cpu)

    started, cpu = time.perf_counter(), _cpu_used()
    read_accounts = len(evaluate_accounts(database, playbook, RECEIVED_AT))
    read_s, read_cpu = time.perf_counter() - started, _cpu_used(cpu)
    # The states are not kept: held here, Python's collector would walk them all (0.5 s) in
    # the next tick, which in a running server has nothing of the kind to walk.

    later = RECEIVED_AT + 60_000_000
    with database.engine.connect() as conn:
        ids = conn.exec_driver_sql(
            f"SELECT id FROM accounts ORDER BY id LIMIT {CHANGED_ACCOUNTS}").scalars().all()
    messages = [msgspec.json.encode({
        "type": "track", "event": "Workflow Run", "userId": f"{account}-u1",
        "messageId": f"bm-changed-{account}", "context": {"groupId": account},
        "timestamp": "2026-06-01T00:30:00.000Z", "properties": {}}) for account in ids]
    ingest_messages(database, messages, later, playbook.anchor_names)
    started, cpu = time.perf_counter(), _cpu_used()
    changed = tick(database, playbook, later)
    changed_s, changed_cpu = time.perf_counter() - started, _cpu_used(cpu)
    database.dispose()
    return {"tick_s": round(full_s, 2), "tick_cpu_s": full_cpu, "tick_accounts": full.evaluated,
            "read_s": round(read_s, 2), "read_cpu_s": read_cpu, "read_accounts": read_accounts,
            "changed_tick_s": round(changed_s, 3), "changed_tick_cpu_s": changed_cpu,
            "changed_tick_accounts": changed.evaluated}


def _cpu_used(since: tuple[float, float] | None = None) -> Any:
    """CPU time of this process and of the evaluation's worker processes; with `since`,
    what they used after it, rounded."""
    from firstvalue.runtime.workers import worker_cpu_seconds

    now = (time.process_time(), worker_cpu_seconds())
    if since is None:
        return now
    return [round(now[0] - since[0], 3), round(now[1] - since[1], 3)]


def _cpu_text(cpu: list[float]) -> str:
    return f"{cpu[0]:.2f} + {cpu[1]:.2f}"


def _print_table(results: dict[str, dict[str, Any]], lines: int) -> None:
    names = list(results)
    rows: list[tuple[str, list[str], str]] = [
        ("import_file, events/s", [f"{r['import_per_s']:,}" for r in results.values()],
         "SQLite >= 100,000; PostgreSQL >= 80,000"),
        ("import_file, seconds (CPU of this process)",
         [f"{r['import_s']:.2f} ({r['import_cpu_s']:.2f})" for r in results.values()], ""),
        ("floor (raw insert), events/s", [f"{r['floor_per_s']:,}" for r in results.values()],
         "SQLite executemany; PostgreSQL COPY"),
        ("import / floor", [f"{r['import_per_s'] / r['floor_per_s']:.2f}"
                            for r in results.values()], ""),
        ("floor in bulk (indexes built after), events/s",
         [f"{r['floor_bulk_per_s']:,}" for r in results.values()],
         "the same, indexes dropped first"),
        ("import / floor in bulk", [f"{r['import_per_s'] / r['floor_bulk_per_s']:.2f}"
                                    for r in results.values()], ""),
        ("full tick, seconds (accounts)",
         [f"{r['tick_s']:.2f} ({r['tick_accounts']:,})" for r in results.values()], "<= 5 s"),
        ("  CPU seconds: caller + workers", [_cpu_text(r["tick_cpu_s"])
                                              for r in results.values()], ""),
        ("evaluate_accounts, seconds (accounts)",
         [f"{r['read_s']:.2f} ({r['read_accounts']:,})" for r in results.values()], "<= 5 s"),
        ("  CPU seconds: caller + workers", [_cpu_text(r["read_cpu_s"])
                                              for r in results.values()], ""),
        (f"tick after {CHANGED_ACCOUNTS} changed, seconds (accounts)",
         [f"{r['changed_tick_s']:.3f} ({r['changed_tick_accounts']})"
          for r in results.values()], "<= 0.2 s"),
        ("  CPU seconds: caller + workers", [_cpu_text(r["changed_tick_cpu_s"])
                                              for r in results.values()], ""),
        ("peak RSS of the import process, MB",
         [str(r["import_peak_mb"]) for r in results.values()], "< 1024"),
        ("peak RSS of the evaluation process, MB",
         [str(r["evaluation_peak_mb"]) for r in results.values()], "< 1024"),
        ("  and of one of its workers, MB",
         [str(r["evaluation_worker_peak_mb"]) for r in results.values()], "< 1024"),
        ("stored rows (held track events)",
         [f"{r['stored']:,} ({r['held']:,})" for r in results.values()], f"{lines:,} lines"),
    ]
    width = max(len(label) for label, _, _ in rows)
    columns = [max(len(name), *(len(values[i]) for _, values, _ in rows))
               for i, name in enumerate(names)]
    header = f"{'figure':<{width}}  " + "  ".join(
        f"{name:>{columns[i]}}" for i, name in enumerate(names)) + "  target"
    print(header)
    print("-" * len(header))
    for label, values, target in rows:
        cells = "  ".join(f"{value:>{columns[i]}}" for i, value in enumerate(values))
        print(f"{label:<{width}}  {cells}  {target}")
    for name, figures in results.items():
        print(f"{name} statuses: {figures['statuses']}")


if __name__ == "__main__":
    main()
