"""`firstvalue sync ...`: the CRM sync from the command line (a thin view of crm.sync).

`firstvalue.cli.main` adds this group to its own; so that `python -m firstvalue.cli.main` works
too, nothing here imports that module before a command runs.
"""

from __future__ import annotations

from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON instead of tables.")
now_option = click.option("--now", "now_text", metavar="ISO",
                          help="Run as if the clock read this time (ISO 8601 with an offset).")


def resolve_now(now_text: str | None) -> int:
    from firstvalue.cli.main import resolve_now as resolve

    return resolve(now_text)


def print_json(data: Any) -> None:
    from firstvalue.cli.main import print_json as show

    show(data)


@click.group("sync", invoke_without_command=False)
def sync_group() -> None:
    """The CRM sync: milestone records and account fields pushed to HubSpot, Salesforce or a
    signed webhook."""


@sync_group.command("status")
@click.option("--connector", default=None, help="Only this connector's rows.")
@json_option
@click.pass_obj
def sync_status_command(obj: Any, connector: str | None, as_json: bool) -> None:
    """Pending, delivered, failed and dead rows per connector, and the rows that need a look."""
    from firstvalue.crm.sync import configured_connectors, list_rows, sync_status

    names = [c.name for c in configured_connectors()]
    status = [s for s in sync_status(obj.database, names)
              if connector is None or s["connector"] == connector]
    rows = list_rows(obj.database, connector=connector)
    if as_json:
        print_json({"connectors": status, "rows": rows})
        return
    if not status:
        click.echo("No CRM connector is configured and no row was ever synced; see "
                   "docs/integrations.md.")
    for line in status:
        click.echo(f"{line['connector']}: {line['pending']} pending, {line['delivered']} "
                   f"delivered, {line['failed']} failed, {line['dead']} dead")
    for row in rows:
        click.echo(f"  {row['status']} {row['connector']} {row['record_type']} "
                   f"{row['record_id']} (attempts {row['attempts']}): {row['error']}")


@sync_group.command("retry")
@click.argument("records", nargs=-1)
@click.option("--connector", default=None, help="Only this connector's rows.")
@now_option
@click.pass_obj
def sync_retry_command(obj: Any, records: tuple[str, ...], connector: str | None,
                       now_text: str | None) -> None:
    """Make failed and dead rows due again (all of them, or the RECORDS named)."""
    from firstvalue.crm.sync import retry_rows

    count = retry_rows(obj.database, resolve_now(now_text), connector, records)
    click.echo(f"{count} row(s) will be pushed again; run `firstvalue sync run`.")


@sync_group.command("run")
@now_option
@click.pass_obj
def sync_run_command(obj: Any, now_text: str | None) -> None:
    """Plan and push the CRM records that changed, once (`serve` does it after every tick)."""
    from firstvalue.crm.sync import sync_crm

    result = sync_crm(obj.database, resolve_now(now_text))
    if not result.outcomes:
        click.echo("No CRM connector is configured; see docs/integrations.md.")
    for name, counts in result.outcomes.items():
        click.echo(f"{name}: {result.planned.get(name, 0)} record(s) changed; "
                   f"{counts.get('delivered', 0)} delivered, {counts.get('failed', 0)} "
                   f"failed, {counts.get('dead', 0)} dead.")


def show_demo_sync(summary: dict) -> None:
    """The demo's CRM sync: what reached its local receiver, and the sync status after."""
    if not summary:
        return
    click.echo(f"\nCRM sync, to {summary['receiver']}:")
    click.echo(f"  {summary['milestone_records']} milestone records "
               f"({summary['completed_milestones']} completed) and "
               f"{summary['account_records']} account records, in "
               f"{summary['deliveries']} signed deliveries")
    for line in summary["status"]:
        click.echo(f"  sync status {line['connector']}: {line['pending']} pending, "
                   f"{line['delivered']} delivered, {line['failed']} failed, "
                   f"{line['dead']} dead")
