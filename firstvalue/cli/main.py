"""The `firstvalue` command: a thin view of the library (open, call one function, format)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec

from firstvalue.access import ROLES
from firstvalue.clock import parse_instant, system_now, to_micros
from firstvalue.engine.compiled import CompiledPlaybook, compile_playbook
from firstvalue.errors import (
    ConfigError,
    FirstvalueError,
    PlaybookError,
    StoreError,
    UnknownAccount,
)
from firstvalue.playbook.loader import load_playbook, playbook_json_schema
from firstvalue.settings import get_setting
from firstvalue.store.database import Database, missing_sqlite_file, open_database

log = logging.getLogger(__name__)


class Context:
    """What every command shares: the options, and the store and playbook opened on demand."""

    def __init__(self, db_url: str, playbook_path: str | None) -> None:
        self.db_url = db_url
        self.playbook_path = playbook_path
        self._database: Database | None = None
        self._playbook: CompiledPlaybook | None = None

    @property
    def database(self) -> Database:
        if self._database is None:
            self._database = open_database(self.db_url)
        return self._database

    @property
    def stored(self) -> Database:
        """The store, for a command that only reads it: a SQLite file that is not there is
        an error naming it, not a new empty store made on the spot (a mistyped --db, or a
        command run in another directory, would otherwise show nothing and leave a file)."""
        missing = missing_sqlite_file(self.db_url)
        if missing is not None:
            raise StoreError(
                f"there is no store at {missing} (--db or FIRSTVALUE_DB: {self.db_url}). "
                "Import events first (firstvalue import FILE), or name an existing store "
                "with --db (the demo's is sqlite:///firstvalue-demo.db).")
        return self.database

    def close(self) -> None:
        """Close the store's connections when the command is done (in-process callers, such
        as tests and scripts using click's runner, would otherwise leave them open)."""
        if self._database is not None:
            self._database.dispose()
            self._database = None

    @property
    def playbook(self) -> CompiledPlaybook:
        if self._playbook is None:
            self._playbook = compile_playbook(load_playbook(self.playbook_path))
        return self._playbook


def now_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--now", "now_text", metavar="ISO",
        help="Run as if the clock read this time (ISO 8601 with an offset).")(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON instead of tables.")(command)


def resolve_now(now_text: str | None) -> int:
    return to_micros(parse_instant(now_text) if now_text else system_now())


def print_json(data: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())


class Group(click.Group):
    """Turns firstvalue's own errors into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FirstvalueError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = 2
            raise error from None


@click.group(cls=Group)
@click.option("--db", "db_url", envvar="FIRSTVALUE_DB", default=get_setting("db"),
              show_default=True, help="Database URL (sqlite:///FILE or postgresql://...).")
@click.option("--playbook", "playbook_path", envvar="FIRSTVALUE_PLAYBOOK", default=None,
              help="Playbook YAML file (default: the built-in playbook).")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (INFO).")
@click.version_option(package_name="firstvalue")
@click.pass_context
def cli(ctx: click.Context, db_url: str, playbook_path: str | None, verbose: bool) -> None:
    """firstvalue: onboarding milestones, time-to-value and the first 90 days of every account."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(db_url, playbook_path)
    ctx.call_on_close(ctx.obj.close)


@cli.command("tick")
@now_option
@click.pass_obj
def tick_command(obj: Context, now_text: str | None) -> None:
    """Evaluate the accounts that changed or are due, and store their state."""
    from firstvalue.clock import isoformat
    from firstvalue.runtime.evaluation import last_evaluated_at, tick

    now = resolve_now(now_text)
    result = tick(obj.database, obj.playbook, now)
    click.echo(f"Evaluated {result.evaluated} account(s) with playbook {result.playbook_version}.")
    latest = last_evaluated_at(obj.database) if result.evaluated == 0 else None
    if latest is not None and latest > now:
        click.echo(f"Nothing was due: the accounts were last evaluated at {isoformat(latest)}, "
                   "after --now, and a tick does not go back in time. To see an earlier "
                   "moment, pass --now to the read commands (accounts, account, report).")


@cli.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rejects", "rejects_path", type=click.Path(path_type=Path),
              default=Path("firstvalue-rejects.jsonl"), show_default=True,
              help="Where rejected lines go (file, line, reason), when there are any.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("--bulk/--no-bulk", default=None,
              help="Load each file in one transaction with the events indexes built again at "
                   "the end (faster; other writers wait). Default: for a file of 50,000 lines "
                   "or more that is no smaller than the store.")
@json_option
@now_option
@click.pass_obj
def import_command(obj: Context, files: tuple[Path, ...], rejects_path: Path, progress: bool,
                   bulk: bool | None, as_json: bool, now_text: str | None) -> None:
    """Import JSONL (Segment-spec lines) and CSV (one event a row) files."""
    from firstvalue.cli.imports import run_import

    run_import(obj.database, obj.playbook, list(files), resolve_now(now_text), rejects_path,
               progress and not as_json, as_json, bulk)


@cli.command("accounts")
@json_option
@now_option
@click.pass_obj
def accounts_command(obj: Context, as_json: bool, now_text: str | None) -> None:
    """Every account's scorecard at --now."""
    from firstvalue.cli.views import show_accounts
    from firstvalue.runtime.evaluation import evaluate_accounts

    states = evaluate_accounts(obj.stored, obj.playbook, resolve_now(now_text))
    if as_json:
        print_json([state.as_json() for state in states])
    else:
        show_accounts(states, obj.playbook)
        if not states:
            # An existing store with no account (a command run without --db where another
            # one made firstvalue.db, say): name the store this was.
            click.echo(f"No accounts in {obj.db_url}. Import events first (firstvalue import "
                       "FILE), or name another store with --db (the demo's is "
                       "sqlite:///firstvalue-demo.db).", err=True)


@cli.command("account")
@click.argument("account_id")
@json_option
@now_option
@click.pass_obj
def account_command(obj: Context, account_id: str, as_json: bool, now_text: str | None) -> None:
    """One account: milestones against targets, TTV, phases, and its timeline with reasons."""
    from firstvalue.cli.views import show_account
    from firstvalue.runtime.evaluation import evaluate_accounts
    from firstvalue.runtime.timeline import account_view

    now = resolve_now(now_text)
    states = evaluate_accounts(obj.stored, obj.playbook, now, [account_id])
    if not states:
        raise UnknownAccount(account_id)
    view = account_view(obj.database, states[0], now)
    if as_json:
        print_json(view)
    else:
        show_account(states[0], view["timeline"])


@cli.command("report")
@json_option
@click.option("--by", "by", type=click.Choice(["segment", "segment_at_kickoff", "tier", "track",
                                              "use_case", "cohort"]),
              default="segment", show_default=True,
              help="Group time-to-value and its phases by this.")
@click.option("--funnel", "mode", type=click.Choice(["any", "strict"]), default="any",
              show_default=True, help="Funnel mode: milestones in any order, or in strict order.")
@click.option("--csv", "csv_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Also write the report's tables as CSV files into DIR.")
@click.option("--charts", "charts_dir", type=click.Path(path_type=Path), default=None,
              metavar="DIR", help="Also draw the charts (PNG and SVG) into DIR.")
@now_option
@click.pass_obj
def report_command(obj: Context, as_json: bool, by: str, mode: str, csv_dir: Path | None,
                   charts_dir: Path | None, now_text: str | None) -> None:
    """Time-to-value against target, phases, funnel, stalls, retention, expansion, experiments."""
    from firstvalue.cli.views import show_report
    from firstvalue.metrics.report import build_report
    from firstvalue.runtime.evaluation import held_events

    now = resolve_now(now_text)
    report = build_report(obj.stored, obj.playbook, now, by, mode,
                          held_events(obj.database, now))
    written = write_report_files(obj, report, now, csv_dir, charts_dir)
    if as_json:
        print_json(report)
    else:
        show_report(report)
        for path in written:
            click.echo(f"Wrote {path}")


def write_report_files(obj: Context, report: dict[str, Any], now: int, csv_dir: Path | None,
                       charts_dir: Path | None) -> list[Path]:
    written: list[Path] = []
    if csv_dir is not None:
        from firstvalue.metrics.export import write_csv

        written += write_csv(report, csv_dir, obj.database, obj.playbook, now)
    if charts_dir is not None:
        from firstvalue.metrics.charts import write_charts

        written += write_charts(report, charts_dir)
    return written


@cli.command("demo")
@click.option("--accounts", "account_count", default=300, show_default=True,
              help="How many sample accounts to simulate.")
@click.option("--seed", default=7, show_default=True, help="Seed of the sample data.")
@click.option("--today", metavar="DATE", default=None,
              help="The last simulated day (default: today, UTC).")
@click.option("--db", "demo_db", default="firstvalue-demo.db", show_default=True,
              help="The demo database: a file path (replaced on each run, and only if it is a "
                   "demo database).")
@click.option("--charts", "charts_dir", type=click.Path(path_type=Path),
              default=Path("firstvalue-demo-charts"), show_default=True, metavar="DIR",
              help="Where the report's charts (PNG and SVG) go.")
@json_option
@click.pass_obj
def demo_command(obj: Context, account_count: int, seed: int, today: str | None, demo_db: str,
                 charts_dir: Path, as_json: bool) -> None:
    """Simulate sample accounts over 120 days on a virtual clock and print the report."""
    from firstvalue.cli.views import show_report
    from firstvalue.metrics.charts import write_charts
    from firstvalue.sim.demo import run_demo

    top = click.get_current_context().find_root()
    if top.get_parameter_source("db_url") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(
            f"the demo writes a store of its own and does not use --db {obj.db_url}; name its "
            "file after the command instead: firstvalue demo --db PATH (a file path, default "
            "firstvalue-demo.db)")
    result = run_demo(Path(demo_db), obj.playbook, account_count, seed, today,
                      quiet=as_json)
    charts = write_charts(result.report, charts_dir)
    if as_json:
        print_json(result.report)
        return
    show_report(result.report)
    from firstvalue.crm.commands import show_demo_sync

    show_demo_sync(result.crm_sync)
    from firstvalue.cli.views import show_routing

    show_routing(result.report.get("routing", {}))
    click.echo(f"\nCharts: {', '.join(str(path) for path in charts)}")
    click.echo(f"\nSimulated {result.accounts} accounts, {result.events} events and "
               f"{result.ticks} ticks in {result.seconds:.1f} s.")
    command = invoked_as()
    click.echo(f"Explore it: {command} --db sqlite:///{demo_db} accounts --now {result.now}")
    click.echo(f"Serve it:   {command} --db sqlite:///{demo_db} users add admin --role admin")
    click.echo(f"            {command} --db sqlite:///{demo_db} serve")
    click.echo("            then open http://127.0.0.1:8000/ and log in as admin")


def invoked_as() -> str:
    """How to run firstvalue again from this shell: `firstvalue` when that name finds this
    program, else the path it was started by (the README's `.venv/bin/firstvalue`, whose
    virtual environment is not activated, so that a bare `firstvalue` is not found)."""
    started = sys.argv[0] if sys.argv else ""
    if os.path.basename(started) != "firstvalue":
        return "firstvalue"  # `python -m firstvalue`, or a program calling the CLI itself
    found = shutil.which("firstvalue")
    if found is not None and os.path.realpath(found) == os.path.realpath(started):
        return "firstvalue"
    return started


@cli.command("serve")
@click.option("--host", default=lambda: get_setting("host"), show_default="127.0.0.1",
              help="Address to bind (loopback unless told otherwise).")
@click.option("--port", default=lambda: get_setting("port"), show_default="8000", type=int,
              help="Port to listen on (FIRSTVALUE_PORT).")
@click.option("--tick-seconds", default=lambda: get_setting("tick_seconds"), show_default="60",
              type=click.FloatRange(min=0), help="Seconds between scheduler ticks, 0 for none "
              "(FIRSTVALUE_TICK_SECONDS).")
@click.pass_obj
def serve_command(obj: Context, host: str, port: int, tick_seconds: float) -> None:
    """Run ingest (/v1), the JSON API (/api) and the scheduler in one process."""
    from firstvalue.api.server import serve

    serve(obj.database, obj.playbook, host, port, tick_seconds)


@cli.group("playbook")
def playbook_group() -> None:
    """Check a playbook, print it or its JSON Schema."""


@playbook_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def playbook_check(file: Path, as_json: bool) -> None:
    """Validate FILE; print every problem with its place in the file and the fix."""
    try:
        loaded = load_playbook(file)
    except PlaybookError as exc:
        if as_json:
            print_json({"valid": False, "problems": [p.as_dict() for p in exc.problems]})
        else:
            click.echo(str(exc), err=True)
        sys.exit(1)
    if as_json:
        print_json({"valid": True, "version": loaded.version})
    else:
        model = loaded.model
        milestones, tracks = len(model.milestones), len(model.tracks)
        click.echo(f"{file}: valid ({milestones} milestone{'s' * (milestones != 1)}, "
                   f"{tracks} track{'s' * (tracks != 1)}), version {loaded.version}")


@playbook_group.command("schema")
def playbook_schema() -> None:
    """Print the playbook's JSON Schema (for editors)."""
    click.echo(json.dumps(playbook_json_schema(), indent=2))


@playbook_group.command("show")
@click.pass_obj
def playbook_show(obj: Context) -> None:
    """Print the playbook in use (the built-in one unless --playbook names another): the
    starting point for your own, e.g. `firstvalue playbook show > my-playbook.yaml`."""
    click.echo(obj.playbook.loaded.text, nl=False)


@cli.group("keys")
def keys_group() -> None:
    """Ingest write keys."""


@keys_group.command("create")
@click.argument("name")
@click.pass_obj
def keys_create(obj: Context, name: str) -> None:
    """Create a write key; it is shown once and stored hashed."""
    from firstvalue.access import create_write_key

    key = create_write_key(obj.database, name, to_micros(system_now()))
    click.echo(key)


@cli.group("tokens")
def tokens_group() -> None:
    """API bearer tokens."""


@tokens_group.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="viewer",
              show_default=True)
@click.pass_obj
def tokens_create(obj: Context, name: str, role: str) -> None:
    """Create an API token with a role; it is shown once and stored hashed."""
    from firstvalue.access import create_api_token

    click.echo(create_api_token(obj.database, name, role, to_micros(system_now())))


@cli.group("users")
def users_group() -> None:
    """Dashboard logins (admin, csm or viewer)."""


@users_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="viewer",
              show_default=True)
@click.option("--team", "team_handle", default=None, metavar="HANDLE",
              help="The team member this login is (their work queue is the default one).")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (for scripts); "
                   "otherwise it is asked for, twice, without echo.")
@click.pass_obj
def users_add(obj: Context, name: str, role: str, team_handle: str | None,
              password_stdin: bool) -> None:
    """Add a dashboard user, or change an existing one's role, password and team member
    (which logs them out). The password is stored hashed (scrypt)."""
    from firstvalue.web.auth import MIN_PASSWORD, save_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(f"Password (at least {MIN_PASSWORD} characters)",
                                hide_input=True, confirmation_prompt=True)
    try:
        created = save_user(obj.database, name, role, password, team_handle,
                            to_micros(system_now()))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    linked = f", the team member {team_handle}" if team_handle else ""
    click.echo(f"{'Added' if created else 'Changed'} {name} ({role}{linked}).")


@users_group.command("list")
@json_option
@click.pass_obj
def users_list(obj: Context, as_json: bool) -> None:
    """The dashboard users and their roles (never their passwords)."""
    from firstvalue.web.auth import list_users

    users = list_users(obj.stored)
    if as_json:
        print_json({"users": users})
        return
    for user in users:
        team = f", team member {user['team_handle']}" if user["team_handle"] else ""
        click.echo(f"{user['name']} ({user['role']}{team})")
    if not users:
        click.echo("No users yet: add one with `firstvalue users add NAME --role admin`.")


@users_group.command("remove")
@click.argument("name")
@click.pass_obj
def users_remove(obj: Context, name: str) -> None:
    """Remove a dashboard user; their sessions end."""
    from firstvalue.web.auth import remove_user

    if not remove_user(obj.database, name):
        raise click.UsageError(f"no user {name!r}; `firstvalue users list` shows them")
    click.echo(f"Removed {name}.")


@cli.command("dispatch")
@click.option("--loop", "interval", type=float, default=None, metavar="SECONDS",
              help="Keep dispatching every SECONDS on the real clock instead of once.")
@now_option
@click.pass_obj
def dispatch_command(obj: Context, interval: float | None, now_text: str | None) -> None:
    """Deliver the actions that are due: emails, Slack messages, webhooks, tasks."""
    import time

    from firstvalue.actions.dispatch import Dispatcher

    if interval is not None and now_text is not None:
        raise click.UsageError("--loop runs on the real clock; leave out --now (or run "
                               "`dispatch --now` once per moment)")
    dispatcher = Dispatcher(obj.database, obj.playbook)
    while True:
        result = dispatcher.run_once(resolve_now(now_text))
        click.echo(f"Delivered {result.sent}, deferred {result.deferred}, failed "
                   f"{result.failed}, parked {result.dead}.")
        if interval is None:
            return
        time.sleep(interval)


@cli.group("actions", invoke_without_command=True)
@click.option("--account", "account_id", default=None, help="Only this account's actions.")
@click.option("--status", type=click.Choice(["pending", "sent", "failed", "dead", "cancelled",
                                              "suppressed"]), multiple=True,
              help="Only actions with this status (repeatable).")
@json_option
@click.pass_context
def actions_group(ctx: click.Context, account_id: str | None, status: tuple[str, ...],
                  as_json: bool) -> None:
    """The outbox: every action, escalation, cancellation and suppression, with its reason."""
    if ctx.invoked_subcommand is not None:
        return
    from firstvalue.actions.outbox import action_json, list_actions
    from firstvalue.cli.views import show_actions

    obj: Context = ctx.obj
    with obj.stored.engine.connect() as conn:
        rows = list_actions(conn, [account_id] if account_id else None, status or None)
    actions = [action_json(row) for row in rows]
    if as_json:
        print_json(actions)
    else:
        show_actions(actions)


@actions_group.command("retry")
@click.argument("keys", nargs=-1)
@click.option("--endpoint", type=click.Choice(["email", "slack", "webhook"]), default=None,
              help="Re-enable this endpoint and replay its parked actions.")
@now_option
@click.pass_obj
def actions_retry(obj: Context, keys: tuple[str, ...], endpoint: str | None,
                  now_text: str | None) -> None:
    """Put dead or failed actions back in line for delivery (the dead-letter replay)."""
    from firstvalue.actions.outbox import replay, replay_skipped

    if not keys and endpoint is None:
        raise click.UsageError("name the actions' keys, or --endpoint NAME")
    with obj.database.write() as conn:
        skipped = replay_skipped(conn, keys)
        count = replay(conn, keys, endpoint, resolve_now(now_text))
    for key, why in skipped.items():
        click.echo(f"Not retried: {key}: {why}; only dead or failed actions are retried.")
    click.echo(f"{count} action(s) will be delivered again; run `firstvalue dispatch`.")


@cli.group("tasks")
def tasks_group() -> None:
    """Tasks for people: the human side of escalations."""


@tasks_group.command("done")
@click.argument("key")
@now_option
@click.pass_obj
def tasks_done(obj: Context, key: str, now_text: str | None) -> None:
    """Mark the task with this action key as done."""
    from firstvalue.actions.outbox import complete_task

    with obj.database.write() as conn:
        done = complete_task(conn, key, resolve_now(now_text))
    if not done:
        raise FirstvalueError(f"no open task with key {key!r}; list them with "
                              "`firstvalue actions --status sent`")
    click.echo(f"Task {key} is done.")


@cli.command("stalls")
@click.option("--all", "include_all", is_flag=True,
              help="Closed and retracted stalls too, not only the open ones.")
@json_option
@now_option
@click.pass_obj
def stalls_command(obj: Context, include_all: bool, as_json: bool,
                   now_text: str | None) -> None:
    """The stall queue, riskiest first (tier, days stalled, ARR), with the next step."""
    from firstvalue.cli.views import show_stalls
    from firstvalue.runtime.stall_history import stall_queue_at

    queue = stall_queue_at(obj.stored, obj.playbook, resolve_now(now_text), include_all)
    if as_json:
        print_json(queue)
    else:
        show_stalls(queue)


@cli.command("held")
@json_option
@now_option
@click.pass_obj
def held_command(obj: Context, as_json: bool, now_text: str | None) -> None:
    """Held events still waiting for their account after the hold period."""
    from firstvalue.runtime.evaluation import held_events

    rows = held_events(obj.stored, resolve_now(now_text))
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("No events have waited longer than the hold period.")
    for row in rows:
        click.echo(f"{row['waiting_for']}: {row['events']} event(s) held since {row['since']}")


@cli.group("handoff")
def handoff_group() -> None:
    """The sales-to-CS handoff record of an account."""


@handoff_group.command("submit")
@click.argument("account_id")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@now_option
@click.pass_obj
def handoff_submit(obj: Context, account_id: str, file: Path, now_text: str | None) -> None:
    """Submit a handoff from a JSON file of its fields (merged over what is stored; a field
    given empty clears it). Prints what is still missing."""
    from firstvalue.runtime.handoff import submit_handoff

    try:
        submitted = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FirstvalueError(f"cannot read {str(file)!r} as JSON: {exc}") from None
    with obj.database.write() as conn:
        result = submit_handoff(conn, obj.playbook.loaded.model.handoff, account_id, submitted,
                                resolve_now(now_text), f"cli:{file.name}")
    if result["complete"]:
        click.echo(f"The handoff of {account_id} is complete.")
    else:
        click.echo(f"The handoff of {account_id} is stored; still missing: "
                   f"{', '.join(result['missing'])}.")


@handoff_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@now_option
@click.pass_obj
def handoff_import(obj: Context, file: Path, now_text: str | None) -> None:
    """Submit handoffs from a CSV file: a column `account_id`, then one per field (lists and
    people separated by `;`, people as `Name (role) <email>`, objects as JSON). A bad row is
    reported by its line and fields, and the others are stored."""
    from firstvalue.runtime.handoff import import_handoffs

    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FirstvalueError(f"cannot read {str(file)!r} as UTF-8 text: {exc}") from None
    with obj.database.write() as conn:
        stored, problems = import_handoffs(conn, obj.playbook.loaded.model.handoff, text,
                                           resolve_now(now_text), f"csv:{file.name}")
    complete = sum(1 for r in stored if r["complete"])
    click.echo(f"{len(stored)} handoff(s) stored, {complete} complete; "
               f"{len(problems)} row(s) refused.")
    for line, why in problems:
        click.echo(f"  line {line}: {why}")


@handoff_group.command("show")
@click.argument("account_id")
@json_option
@click.pass_obj
def handoff_show(obj: Context, account_id: str, as_json: bool) -> None:
    """The handoff record of an account, and the required fields it still lacks."""
    from firstvalue.runtime.handoff import handoff_json

    with obj.stored.engine.connect() as conn:
        found = handoff_json(conn, obj.playbook.loaded.model.handoff, account_id)
    if as_json:
        print_json(found)
        return
    state = "complete" if found["complete"] else "missing " + ", ".join(found["missing"])
    click.echo(f"{account_id}: handoff {state}")
    for name, value in found["record"].items():
        click.echo(f"  {name}: {json.dumps(value, ensure_ascii=False)}")


@cli.group("team")
def team_group() -> None:
    """The team roster that tier routing assigns accounts to."""


@team_group.command("add")
@click.argument("handle")
@click.option("--email", default=None, help="Where their tasks and alerts go (needed for a "
              "new member).")
@click.option("--role", type=click.Choice(["csm", "implementation_manager", "team_lead"]),
              default=None, help="Default for a new member: csm.")
@click.option("--capacity", type=int, default=None,
              help="Accounts they can onboard at once. Default for a new member: 0.")
@click.option("--timezone", default=None, help="IANA zone they work in. Default for a new "
              "member: UTC.")
@click.option("--name", default=None)
@now_option
@click.pass_obj
def team_add(obj: Context, handle: str, email: str | None, role: str | None,
             capacity: int | None, timezone: str | None, name: str | None,
             now_text: str | None) -> None:
    """Add a member to the roster, or change one: options left out keep their values (and
    an away period stays as it is)."""
    from firstvalue.runtime.routing import load_team, save_member

    with obj.database.write() as conn:
        known = {m.handle: m for m in load_team(conn)}.get(handle)
        if known is None and email is None:
            raise FirstvalueError(f"{handle!r} is not on the roster yet; give --email to add "
                                  "them")
        role = role or (known.role if known else "csm")
        capacity = capacity if capacity is not None else (known.capacity if known else 0)
        timezone = timezone or (known.timezone if known else "UTC")
        save_member(conn, handle, email or known.email, role, capacity,  # type: ignore[union-attr]
                    timezone, name, resolve_now(now_text))
    click.echo(f"{handle} is on the roster ({role}, capacity {capacity}, {timezone}).")


@team_group.command("away")
@click.argument("handle")
@click.option("--from", "from_text", metavar="ISO", help="Away from (default: now).")
@click.option("--until", "until_text", metavar="ISO", help="Back at (default: until `back`).")
@click.option("--cover", default=None, help="Who takes their new tasks and alerts meanwhile.")
@now_option
@click.pass_obj
def team_away(obj: Context, handle: str, from_text: str | None, until_text: str | None,
              cover: str | None, now_text: str | None) -> None:
    """Mark a member out of office: they take no new accounts, and their new tasks and alerts
    go to the cover (or the team queue) until they are back."""
    from firstvalue.runtime.routing import set_away

    start = to_micros(parse_instant(from_text, "--from")) if from_text else resolve_now(now_text)
    end = to_micros(parse_instant(until_text, "--until")) if until_text else None
    with obj.database.write() as conn:
        set_away(conn, handle, start, end, cover)
    when = "is away" if start <= resolve_now(now_text) else \
        f"will be away from {parse_instant(from_text or '', '--from').isoformat()}"
    click.echo(f"{handle} {when}" + (f", covered by {cover}" if cover else
                                     ", their new tasks and alerts going to the team queue")
               + (f", until {parse_instant(until_text, '--until').isoformat()}"
                  if until_text else "") + ".")


@team_group.command("back")
@click.argument("handle")
@now_option
@click.pass_obj
def team_back(obj: Context, handle: str, now_text: str | None) -> None:
    """Mark a member back in office."""
    from firstvalue.runtime.routing import set_away

    with obj.database.write() as conn:
        set_away(conn, handle, None, None, None)
    click.echo(f"{handle} is back.")


@team_group.command("list")
@json_option
@now_option
@click.pass_obj
def team_list(obj: Context, as_json: bool, now_text: str | None) -> None:
    """The roster with each member's load, capacity and whether they are away."""
    from firstvalue.runtime.routing import team_json

    with obj.stored.engine.connect() as conn:
        members = team_json(conn, resolve_now(now_text))
    if as_json:
        print_json(members)
        return
    if not members:
        click.echo("The roster is empty; add members with `firstvalue team add`.")
    for m in members:
        away = f", away (cover: {m['cover'] or 'team queue'})" if m["away"] else ""
        click.echo(f"{m['handle']}: {m['role']}, {m['load']}/{m['capacity']} accounts, "
                   f"{m['timezone']}{away}")

from firstvalue.crm.commands import sync_group  # noqa: E402 (it builds on the group above)

cli.add_command(sync_group)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
