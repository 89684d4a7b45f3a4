"""Evaluating many accounts in worker processes.

The engine is pure and no account's evaluation needs another's, so a large tick or read is
spread over the machine's cores: each worker process opens its own connection to the store,
reads the facts of a part of the accounts and evaluates them, and the calling process takes
the results back in account id order, exactly the order it would have evaluated them in
itself. Everything that writes stays in the calling process, in the tick's one transaction.

A worker reads what the store has committed. The tick attaches held events and routes owners
in a transaction of its own, committed before the evaluation begins, so the workers see
those; an account another writer changes meanwhile has a new `change_seq`, and since a
worker reports the `change_seq` it saw, the tick evaluates in process any account for which
it differs from its own (see `runtime.evaluation`). Experiment variants are
assigned by the tick alone, in account id order as before: a worker evaluates with the
variants already recorded and says which it used.

Small evaluations stay in the calling process: starting workers costs more than they save.
Workers are started with the `forkserver` method, never by forking the caller, whose
connections, threads and locks a forked child would share.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.util import Finalize
from typing import Any, NamedTuple, NoReturn

from firstvalue.engine.compiled import CompiledPlaybook, compile_playbook
from firstvalue.engine.evaluate import AccountState
from firstvalue.errors import FirstvalueError
from firstvalue.playbook.loader import LoadedPlaybook
from firstvalue.settings import get_int_setting, get_setting
from firstvalue.store import events as event_store
from firstvalue.store.database import GUARD_HINT, Database, open_database

log = logging.getLogger(__name__)


class Basis(NamedTuple):
    """What experiment assignment reads of the state evaluated with the base playbook."""

    run: dict[str, Any] | None
    track: str | None
    tier: int | None


class WorkerResult(NamedTuple):
    """One account as a worker evaluated it."""

    account_id: str
    seq: int  # the account's change_seq as the worker saw it
    state: Any  # for a read the AccountState (None when it failed), for a tick AccountWrites
    variants: tuple[tuple[str, str], ...]  # the recorded variants it was evaluated with
    basis: Basis | None  # with experiments only
    fitting: tuple[str, ...]  # the experiments it fits (for a tick, with experiments only)


def worker_count(accounts: int, database: Database) -> int:
    """How many worker processes evaluate `accounts` accounts beside the caller: 0 for in
    process.

    Workers need a store they can open themselves (a file or a server, not SQLite in
    memory), a caller that may start processes (a daemonic process, such as a worker of a
    `multiprocessing.Pool`, may not) and the `forkserver` start method (not on Windows).
    """
    if accounts < get_int_setting("parallel_accounts") or not _shareable(database.url):
        return 0
    if multiprocessing.current_process().daemon:
        return 0
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return 0
    raw = get_setting("evaluation_workers")
    # The caller evaluates too: one worker fewer than there are CPUs.
    workers = get_int_setting("evaluation_workers") if raw else (os.cpu_count() or 1) - 1
    return max(workers, 0)


def _shareable(url: str) -> bool:
    if not url.startswith("sqlite"):
        return True
    return url not in ("sqlite://", "sqlite:///:memory:") and "mode=memory" not in url


class InWorkers:
    """The accounts evaluated by worker processes and by the caller, part by part.

    Iterating yields each part's ids and results (a list of `WorkerResult`, in the order the
    worker read the accounts: `load_facts`'s order for those ids), in the order of the parts.
    Parts are taken from the front: the workers keep one more each than they are working
    on, and while the next part's worker is not done, the caller evaluates the next part
    not handed out itself, the same way (its own connection, what is committed). So the
    caller's core works too, and its parts come in their turn soon: a tick applies their
    writes as it goes, not all at the end with the workers idle (parts taken from the back
    left a full tick's caller 1.4 s of writes after the worker's last part).

    A worker's results come back through a file, not the executor's pipe: a tick's part is
    about 6 MB, and the pipe takes 64 KiB at a time, each read waiting for the caller's
    thread to hand over Python's lock (up to 5 ms while it evaluates), with the worker
    blocked meanwhile (0.1 to 0.3 s a part measured). The files go in a directory of this
    evaluation's own in the temporary directory (not /dev/shm, which may be small and which
    PostgreSQL uses); a worker that cannot write its file (a full disk) sends its results
    through the pipe after all.
    """

    def __init__(self, database: Database, playbook: CompiledPlaybook,
                 parts: Iterable[Sequence[str]], now: int, for_tick: bool,
                 workers: int) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__, "firstvalue.runtime.evaluation"])
        # Readable by this user only, and each file removed as soon as it is read.
        root = _results_root()
        _remove_abandoned(root)
        self.results_dir = tempfile.mkdtemp(prefix=f"{_RESULTS_PREFIX}{os.getpid()}-", dir=root)
        _LIVE_DIRS.add(self.results_dir)
        # Never written to: each worker waits on its end and exits when this process's end
        # closes, which it does when this process ends, however it ends (see `_start_worker`).
        self.lifeline, self.lifeline_end = context.Pipe(duplex=False)
        try:
            self.pool = ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker,
                initargs=(database.url, playbook.loaded, playbook.relevant_names,
                          self.results_dir, self.lifeline))
        except BaseException:
            self._close_lifeline()
            self._remove_results()
            raise
        self.caller = _Worker(database, playbook)
        self.parts = [list(part) for part in parts]
        self.futures: dict[int, Future[tuple[str | list[WorkerResult], float, float]]] = {}
        self.done: dict[int, list[WorkerResult]] = {}
        self.front = 0  # the next part not handed out (to a worker or the caller)
        # One part running and one waiting per worker: more left the caller idle at the
        # end while a worker worked through its queue (a full tick: 5.6 s, now 5.1).
        self.ahead = 2 * workers
        self.now = now
        self.for_tick = for_tick
        # Handing out the first parts starts the processes, and the first start waits for
        # the forkserver to import what the workers need (0.66 s measured, with the caller
        # idle): a thread waits for that while the caller evaluates the first part itself.
        self.first: int | None = None
        if len(self.parts) > 1:
            self.first, self.front = 0, 1
        self.failure: BaseException | None = None
        self.starting = threading.Thread(target=self._start, name="firstvalue-workers-start",
                                         daemon=True)
        self.starting.start()

    def _start(self) -> None:
        try:
            self._hand_out()
        except BaseException as exc:  # raised in the caller, by `_started`
            self.failure = exc

    def _started(self) -> None:
        self.starting.join()
        if self.failure is not None:
            failure, self.failure = self.failure, None
            _raise_clearly(failure)

    def __iter__(self) -> Iterator[tuple[list[str], list[WorkerResult]]]:
        if self.first is not None:
            self.done[self.first] = self._evaluate_here(self.parts[self.first])
            self.first = None
        self._started()
        for index, ids in enumerate(self.parts):
            while index not in self.done:
                future = self.futures.get(index)
                if future is None:
                    # Not handed out: the caller's to evaluate.
                    self.front = max(self.front, index + 1)
                    self.done[index] = self._evaluate_here(ids)
                elif not future.done() and self.front < len(self.parts):
                    self.front += 1
                    self.done[self.front - 1] = self._evaluate_here(self.parts[self.front - 1])
                else:
                    self.done[index] = self._take(self.futures.pop(index), ids)
            self._hand_out()
            yield ids, self.done.pop(index)

    def __enter__(self) -> InWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.starting.join()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._close_lifeline()
        self._remove_results()

    def _close_lifeline(self) -> None:
        self.lifeline.close()
        self.lifeline_end.close()

    def _remove_results(self) -> None:
        shutil.rmtree(self.results_dir, ignore_errors=True)
        _LIVE_DIRS.discard(self.results_dir)

    def _hand_out(self) -> None:
        while self.front < len(self.parts) and len(self.futures) < self.ahead:
            future = self.pool.submit(_evaluate_part, self.parts[self.front], self.now,
                                      self.for_tick)
            self.futures[self.front] = future
            self.front += 1

    def _evaluate_here(self, ids: list[str]) -> list[WorkerResult]:
        return _evaluated(self.caller, ids, self.now, self.for_tick, portable=False)

    def _take(self, future: Future[tuple[str | list[WorkerResult], float, float]],
              ids: list[str]) -> list[WorkerResult]:
        global _cpu_seconds, _peak_mb
        try:
            sent, cpu, peak_mb = future.result()
        except BrokenProcessPool as exc:
            _raise_clearly(exc)
        _cpu_seconds += cpu
        _peak_mb = max(_peak_mb, peak_mb)
        if not isinstance(sent, str):
            return sent  # through the pipe: the worker could not write its file
        try:
            with open(sent, "rb") as results:
                data = results.read()
        except FileNotFoundError:
            # Removed by someone else (another machine's or container's process sharing
            # this temporary directory took it for abandoned): evaluated here instead.
            log.warning("A worker's results were removed before they were read; the part "
                        "is evaluated again in this process.")
            return self._evaluate_here(ids)
        os.unlink(sent)
        taken: list[WorkerResult] = pickle.loads(data)
        return taken


def _raise_clearly(failure: BaseException) -> NoReturn:
    """Raise `failure`; a worker process that died (`BrokenProcessPool`), most often one
    that stopped while importing an unguarded script again, as an error saying so."""
    if isinstance(failure, BrokenProcessPool):
        raise FirstvalueError(
            "a worker process of this evaluation stopped before it could evaluate (its own "
            f"error is printed above). If firstvalue runs from a script of yours, {GUARD_HINT}."
        ) from failure
    raise failure


_cpu_seconds = 0.0
_peak_mb = 0.0


def worker_cpu_seconds() -> float:
    """The CPU time the worker processes of this process have used so far (their start
    included), for measurements: `time.process_time()` counts the caller's only."""
    return _cpu_seconds


def worker_peak_mb() -> float:
    """The largest peak memory (resident set, MB) of one worker process so far."""
    return _peak_mb


_RESULTS_PREFIX = "firstvalue-results-"
# The result directories of this process's evaluations under way.
_LIVE_DIRS: set[str] = set()
# A directory untouched this long (seconds) whose process is gone is abandoned. An
# evaluation under way writes and deletes a file in it every second or so.
ABANDONED_AFTER = 3_600


def _results_root() -> str:
    """Where each evaluation's directory of result files goes: the temporary directory
    (TMPDIR), on disk but read back from the page cache (1.8 ms to write and read 6 MB here,
    against 4.3 ms in /dev/shm)."""
    return tempfile.gettempdir()


def _remove_abandoned(root: str) -> None:
    """Remove result directories that processes of this user left behind when they were
    killed mid-evaluation: untouched for `ABANDONED_AFTER` seconds, and named after a
    process that is gone (or after this process, which is not using it).

    The age matters where processes of other machines or containers share the directory:
    their process ids mean nothing here.
    """
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    old = time.time() - ABANDONED_AFTER
    for entry in entries:
        if not entry.name.startswith(_RESULTS_PREFIX) or entry.path in _LIVE_DIRS:
            continue
        pid = entry.name[len(_RESULTS_PREFIX):].split("-", 1)[0]
        if not (pid.isascii() and pid.isdigit() and len(pid) <= 9):
            continue
        try:
            status = entry.stat(follow_symlinks=False)
            if status.st_uid != os.getuid() or status.st_mtime > old:
                continue
            if int(pid) != os.getpid():
                os.kill(int(pid), 0)
                continue  # alive
        except ProcessLookupError:
            pass
        except OSError:
            continue  # alive under another user, or gone meanwhile
        shutil.rmtree(entry.path, ignore_errors=True)


@dataclass
class _Worker:
    database: Database
    playbook: CompiledPlaybook
    results_dir: str = ""


_worker: _Worker | None = None


def _start_worker(url: str, loaded: LoadedPlaybook, relevant_names: frozenset[str],
                  results_dir: str, lifeline: Connection) -> None:
    global _worker
    threading.Thread(target=_exit_with_caller, args=(lifeline,), daemon=True,
                     name="firstvalue-lifeline").start()
    # The worker lives for one evaluation: the collector would only rescan what it keeps
    # until the end (see runtime.evaluation.collector_paused).
    gc.disable()
    compiled = compile_playbook(loaded)
    # The facts are read with the caller's names, so that both read the same events.
    playbook = CompiledPlaybook(**{**compiled.__dict__, "relevant_names": relevant_names})
    database = open_database(url, migrate=False)
    # Closed at the worker's exit, so that PostgreSQL sees the connection end cleanly.
    Finalize(database, database.dispose, exitpriority=10)
    _worker = _Worker(database, playbook, results_dir)


def _exit_with_caller(lifeline: Connection) -> None:
    """Wait for the calling process to end, then end this worker at once.

    A caller that exits normally shuts its workers down first. One that is killed (SIGKILL,
    or SIGTERM, which Python does not catch) cannot, and its workers would otherwise wait
    for parts forever (found in review: a killed `firstvalue tick` left its worker and the
    forkserver running, about 200 MB). Nothing is ever sent on the lifeline: reading it
    returns only when the caller's end closes, at its exit, whatever the cause. A part this
    worker was evaluating is lost with the caller, whose transaction is rolled back anyway;
    its results directory is removed by a later evaluation (`_remove_abandoned`).
    """
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()
    os._exit(1)


def _evaluate_part(ids: list[str], now: int,
                   for_tick: bool) -> tuple[str | list[WorkerResult], float, float]:
    """The file holding the part's results (pickled; the results themselves when the file
    could not be written), the CPU time this worker used since its last part and its peak
    memory in MB."""
    global _reported_cpu
    assert _worker is not None, "the worker was not started"
    results = _evaluated(_worker, ids, now, for_tick, portable=True)
    sent: str | list[WorkerResult] = results
    data = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
    name = ""
    try:
        with tempfile.NamedTemporaryFile(dir=_worker.results_dir, suffix=".pickle",
                                         delete=False) as out:
            name = out.name
            out.write(data)
        sent = name
    except OSError:
        if name:
            with contextlib.suppress(OSError):
                os.unlink(name)
    cpu, _reported_cpu = time.process_time() - _reported_cpu, time.process_time()
    return sent, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_reported_cpu = 0.0


def _evaluated(worker: _Worker, ids: list[str], now: int, for_tick: bool,
               portable: bool) -> list[WorkerResult]:
    from firstvalue.actions.outbox import existing_actions
    from firstvalue.runtime.evaluation import evaluate_safely, load_facts, plan_writes
    from firstvalue.runtime.experiments import Assignments
    from firstvalue.runtime.stall_history import recorded_stalls

    playbook = worker.playbook
    results = []
    with worker.database.engine.connect() as conn:
        # The change_seq before the facts: facts read after it are at least that new.
        seqs = dict(event_store.select_in(
            conn, "SELECT id, change_seq FROM accounts WHERE id IN :ids", ids))
        variants = Assignments(conn, playbook, ids, now, write=False)
        # The tick writes none of the engine's outbox rows or stalls before evaluating, so
        # what is committed is what it would read itself.
        outbox = existing_actions(conn, ids) if for_tick else {}
        history = recorded_stalls(conn, ids) if for_tick else {}
        for facts in load_facts(conn, playbook, ids):
            base = evaluate_safely(facts, playbook, now)
            state, chosen = variants.applied(facts, base, evaluate_safely)
            basis, fitting = None, ()
            if base is not None and variants.experiments:
                basis = Basis(base.run, base.track, base.tier)
                fitting = variants.fitting(facts.traits, base) if for_tick else ()
            account_id, seq = facts.account_id, seqs[facts.account_id]
            if for_tick:
                kept = plan_writes(account_id, seq, state, outbox.get(account_id, {}),
                                   history.get(account_id, {}), playbook, now)
            else:
                kept = _portable(state) if portable else state
            results.append(WorkerResult(account_id, seq, kept, chosen, basis, fitting))
    return results


def _portable(state: AccountState | None) -> AccountState | None:
    """The state in a form that crosses to the caller: its planned actions' reasons and
    facts are worked out here (they are functions until needed, and functions do not
    pickle)."""
    if state is None:
        return None
    planned = tuple(replace(action, reason_source=action.reason, facts_source=action.facts)
                    for action in state.planned)
    return replace(state, planned=planned)
