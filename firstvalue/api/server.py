"""`firstvalue serve`: the app on uvicorn, with a scheduler that ticks on the real clock."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from firstvalue.actions.dispatch import Dispatcher
from firstvalue.api.app import create_app
from firstvalue.clock import system_now, to_micros
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.runtime.evaluation import tick
from firstvalue.store.database import Database

log = logging.getLogger(__name__)


class Scheduler:
    """Ticks, then dispatches, every `interval` seconds in a thread of its own until stopped.

    A tick that fails is logged and the next one runs as usual: the state it would have
    written is recomputed from the events, so nothing is lost by skipping one.
    """

    def __init__(self, database: Database, playbook: CompiledPlaybook, interval: float) -> None:
        self.database = database
        self.playbook = playbook
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="firstvalue-scheduler",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        from firstvalue.crm.sync import configured_connectors, sync_crm

        dispatcher = Dispatcher(self.database, self.playbook)
        connectors = configured_connectors()
        while not self._stop.is_set():
            try:
                tick(self.database, self.playbook, to_micros(system_now()))
                dispatcher.run_once(to_micros(system_now()))
                sync_crm(self.database, to_micros(system_now()), connectors)
            except Exception:
                log.exception("The scheduled tick failed; the next one will run as usual.")
            self._stop.wait(self.interval)


def build_server_app(database: Database, playbook: CompiledPlaybook,
                     tick_seconds: float) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = Scheduler(database, playbook, tick_seconds) if tick_seconds > 0 else None
        # The dashboard's portfolio reads every account's stored state once (about half a
        # second for 10,000): done before the server answers, so no page waits for it.
        from fastapi.concurrency import run_in_threadpool

        await run_in_threadpool(_warm_dashboard, app)
        if scheduler:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler:
                scheduler.stop()

    return create_app(database, playbook, lifespan=lifespan)


def _warm_dashboard(app: FastAPI) -> None:
    try:
        app.state.dashboard.portfolio.refresh()
    except Exception:
        log.exception("Reading the accounts for the dashboard failed; its first page will "
                      "read them instead.")


def serve(database: Database, playbook: CompiledPlaybook, host: str, port: int,
          tick_seconds: float) -> None:
    from firstvalue.access import environment_write_keys, stored_write_key_count
    from firstvalue.crm.sync import configured_connectors

    configured_connectors()  # a half-configured CRM connector stops `serve` here, loudly
    app = build_server_app(database, playbook, tick_seconds)
    if not environment_write_keys() and not stored_write_key_count(database):
        print("Warning: no write key is set, so ingest will refuse every event; set "
              "FIRSTVALUE_WRITE_KEYS or run `firstvalue keys create NAME`.", flush=True)
    from firstvalue.web.auth import list_users

    if not list_users(database):
        print("Warning: no dashboard user yet, so nobody can log in at /; add one with "
              "`firstvalue users add NAME --role admin`.", flush=True)
    log.info("Serving on http://%s:%d with playbook %s.", host, port, playbook.version)
    print(f"firstvalue serving on http://{host}:{port} (playbook {playbook.version}); "
          f"the dashboard is at http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
