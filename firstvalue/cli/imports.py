"""`firstvalue import`: files into the store, with a progress bar and a reject file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.errors import ImportFileError
from firstvalue.ingest.files import ImportSummary, file_format, import_file
from firstvalue.store.database import Database


def run_import(database: Database, playbook: CompiledPlaybook, files: list[Path], now: int,
               rejects_path: Path, progress: bool, as_json: bool,
               bulk: bool | None = None) -> None:
    # Refuse an unknown format or a missing file before anything is stored.
    for path in files:
        file_format(path)
        if not path.is_file():
            raise ImportFileError(f"no such file: {str(path)!r}")
    summary = ImportSummary()
    started = time.perf_counter()
    try:
        _import_files(database, playbook, files, now, progress, summary, bulk)
    except ImportFileError:
        # What was stored before the file that stopped the command is reported all the same.
        if summary.lines:
            click.echo("Before the error: "
                       f"{_summary_line(summary, time.perf_counter() - started)}", err=True)
        raise
    finally:
        _write_rejects(summary, rejects_path)
    seconds = time.perf_counter() - started
    if as_json:
        data = summary.as_json()
        data["rejects_file"] = str(rejects_path) if summary.rejects else None
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(_summary_line(summary, seconds))
    if summary.in_bulk:
        click.echo(f"Loaded in bulk (one transaction, indexes built again): "
                   f"{', '.join(summary.in_bulk)}.")
    if summary.rejects:
        click.echo(f"{len(summary.rejects)} rejected line(s), with line number and reason, "
                   f"are in {rejects_path}.")
    if summary.statuses.get("accepted"):
        click.echo("Run `firstvalue tick` to evaluate the accounts that changed.")
    else:
        click.echo("Nothing new was stored, so no account changed.")


def _summary_line(summary: ImportSummary, seconds: float) -> str:
    counts = ", ".join(f"{count} {status}" for status, count in sorted(summary.statuses.items()))
    return f"Imported {summary.lines} line(s) in {seconds:.1f} s: {counts or 'nothing'}."


def _write_rejects(summary: ImportSummary, rejects_path: Path) -> None:
    if summary.rejects:
        with rejects_path.open("w", encoding="utf-8") as out:
            for reject in summary.rejects:
                out.write(json.dumps(reject) + "\n")


def _import_files(database: Database, playbook: CompiledPlaybook, files: list[Path], now: int,
                  progress: bool, summary: ImportSummary, bulk: bool | None) -> None:
    if progress:
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            for path in files:
                task = bar.add_task(path.name, total=path.stat().st_size if path.exists() else 0)
                import_file(database, path, now, playbook.anchor_names, summary,
                            on_progress=lambda n, task=task: bar.advance(task, n), bulk=bulk)
                bar.update(task, completed=bar.tasks[task].total)
    else:
        for path in files:
            import_file(database, path, now, playbook.anchor_names, summary, bulk=bulk)
