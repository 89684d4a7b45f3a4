"""The report benchmark: `python benchmarks/report.py` (see benchmarks/README.md).

Imports the benchmark data set into a SQLite store and ticks it once (neither is timed; the
store is kept in benchmarks/data/ and reused), then times the full onboarding report on it:
in-process (`build_report`, held events and outbox counts included, and the JSON
encoding), and end to end, as `firstvalue report --json` in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import msgspec

from firstvalue.clock import isoformat, to_micros
from firstvalue.store.database import open_database

sys.path.insert(0, str(Path(__file__).parent))
from dataset import END, ensure_dataset  # noqa: E402

DATA = Path(__file__).parent / "data"
NOW = to_micros(END + timedelta(hours=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--fresh", action="store_true", help="import and tick again")
    args = parser.parse_args()

    path = ensure_dataset(args.data, args.accounts, args.events)
    store = args.data / f"bench-report-{args.accounts}a-{args.events}e.db"
    if args.fresh or not store.exists():
        prepare_store(path, store)
    url = f"sqlite:///{store}"
    load_before = os.getloadavg()
    in_process = _in_process(url)
    end_to_end = _end_to_end(url)
    load_after = os.getloadavg()
    print(f"report on {args.accounts:,} accounts ({path.name}):")
    print("  build_report + JSON, in process: {:.2f} s (CPU {:.2f} s)".format(*in_process))
    print("  firstvalue report --json, fresh process: {:.2f} s (CPU {:.2f} s); target <= 5 s"
          .format(*end_to_end))
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}"
          .format(*load_before, *load_after))


def prepare_store(path: Path, store: Path,
                  before_tick: Callable[[str], None] | None = None) -> None:
    """Import the data set at `path` into a fresh SQLite store and tick it once.

    `before_tick`, given the store's URL, runs between the two (portfolio.py adds a team roster
    there, so that the tick routes every account to an owner).
    """
    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.ingest.files import ImportSummary, import_file
    from firstvalue.playbook.loader import load_playbook
    from firstvalue.runtime.evaluation import tick

    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    playbook = compile_playbook(load_playbook())
    database = open_database(f"sqlite:///{store}")
    started = time.perf_counter()
    import_file(database, path, NOW, playbook.anchor_names, ImportSummary())
    if before_tick is not None:
        before_tick(f"sqlite:///{store}")
    tick(database, playbook, NOW)
    database.dispose()
    print(f"prepared {store} (import and tick) in {time.perf_counter() - started:.1f} s")


def _in_process(url: str) -> tuple[float, float]:
    from firstvalue.engine.compiled import compile_playbook
    from firstvalue.metrics.report import build_report
    from firstvalue.playbook.loader import load_playbook
    from firstvalue.runtime.evaluation import held_events

    playbook = compile_playbook(load_playbook())
    database = open_database(url)
    started, cpu = time.perf_counter(), time.process_time()
    report = build_report(database, playbook, NOW, held=held_events(database, NOW))
    msgspec.json.encode(report)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    database.dispose()
    return seconds, cpu


def _end_to_end(url: str) -> tuple[float, float]:
    command = [sys.executable, "-m", "firstvalue", "--db", url, "report", "--json",
               "--now", isoformat(NOW) or ""]
    started = time.perf_counter()
    before = os.times()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                          - before.children_system)
    return time.perf_counter() - started, cpu


if __name__ == "__main__":
    main()
