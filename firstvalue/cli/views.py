"""Tables for people: the accounts list, one account's scorecard, the report."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.evaluate import AccountState, MilestoneStatus

# Piped or captured output gets room to breathe: ids and times are never cut to fit 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def milestone_mark(milestone: MilestoneStatus) -> str:
    if milestone.status == "done":
        return "[green]done[/]" if milestone.on_time is not False else "[yellow]late[/]"
    if milestone.overdue_days:
        return f"[red]-{milestone.overdue_days}d[/]"
    return "[dim]open[/]"


def show_accounts(states: Sequence[AccountState], playbook: CompiledPlaybook) -> None:
    keys = [m.key for m in playbook.loaded.model.milestones]
    table = Table(title=f"{len(states)} account(s)")
    for column in ("account", "segment", "tier", "track", "day"):
        table.add_column(column)
    for key in keys:
        table.add_column(key.replace("_", " "))
    table.add_column("TTV")
    for state in states:
        by_key = {m.key: m for m in state.milestones}
        marks = [milestone_mark(by_key[k]) if k in by_key else "" for k in keys]
        table.add_row(state.id, state.segment or "?", _text(state.tier), state.track or "-",
                      _text(state.day), *marks, _text(state.ttv_days))
    console.print(table)


def show_account(state: AccountState, timeline: Sequence[dict[str, Any]] = ()) -> None:
    console.print(f"[bold]{state.name or state.id}[/] ({state.id}): segment "
                  f"{state.segment or '?'}, tier {_text(state.tier)}, track {state.track or '-'}")
    zone = state.timezone + (" (default)" if state.timezone_is_default else "")
    console.print(f"Timezone {zone}; contract signed {state.contract_signed_at or '-'}; "
                  f"kickoff {state.kickoff_at or '-'} ({state.kickoff_source or 'none'})")
    console.print(f"Day {_text(state.day)} (day 0 is {state.day0 or 'not known yet'}); "
                  f"current milestone {state.current_milestone or 'none: all done'}")

    table = Table(title="Milestones")
    for column in ("milestone", "status", "done at", "local day", "target", "due on",
                   "overdue"):
        table.add_column(column)
    for m in state.milestones:
        table.add_row(m.key, milestone_mark(m), m.completed_at or "", _text(m.local_day),
                      _text(m.target_day), m.due_on or "", _text(m.overdue_days))
    console.print(table)

    phases = Table(title="Phases (local days)")
    for column in ("from", "to", "days"):
        phases.add_column(column)
    for phase in state.phases:
        note = " (out of order)" if phase.out_of_order else ""
        phases.add_row(phase.from_, phase.to, _text(phase.days) + note)
    console.print(phases)
    target = f" (target {state.ttv_target_days})" if state.ttv_target_days is not None else ""
    console.print(f"Time-to-value: {_text(state.ttv_days)} day(s){target}")
    if timeline:
        story = Table(title="Timeline (events, milestones, actions, escalations)")
        for column in ("at", "type", "what", "why"):
            story.add_column(column, overflow="fold")
        for entry in timeline:
            story.add_row(entry["at"] or "", entry["type"], entry["what"], entry["reason"] or "")
        console.print(story)
    console.print(f"[dim]Evaluated with playbook {state.playbook_version}[/]")


def show_report(report: dict[str, Any]) -> None:
    console.print(f"[bold]Onboarding report[/] at {report['now']}: {report['accounts']} "
                  f"account(s), playbook {report['playbook_version']}")
    table = Table(title="Milestones")
    for column in ("milestone", "reached", "on time", "open", "overdue"):
        table.add_column(column, justify="right" if column != "milestone" else "left")
    for row in report["milestones"]:
        table.add_row(row["key"], str(row["reached"]), str(row["reached_on_time"]),
                      str(row["open"]), str(row["overdue"]))
    console.print(table)

    ttv = Table(title="Time-to-value by segment (contract signed to first value)")
    for column in ("segment", "accounts", "reached value", "median TTV (days)", "target",
                   "not reached yet"):
        ttv.add_column(column, justify="right" if column != "segment" else "left")
    for row in report["ttv_by_segment"]:
        ttv.add_row(row["segment"], str(row["accounts"]), str(row["reached_value"]),
                    _text(row["median_ttv_days"]), _text(row["ttv_target_days"]),
                    str(row["not_reached_yet"]))
    console.print(ttv)
    console.print("[dim]The median counts only accounts that reached value; those that have "
                  "not are counted beside it, not dropped.[/]")
    actions = report.get("actions_by_rule") or []
    if actions:
        table = Table(title="Actions and escalations by rule")
        columns = ("rule", "kind", "sent", "late", "pending", "cancelled", "suppressed",
                   "failed", "dead", "resolved")
        for column in columns:
            if column == "rule":
                table.add_column(column, no_wrap=True, min_width=24)
            else:
                table.add_column(column, justify="left" if column == "kind" else "right")
        for row in actions:
            table.add_row(*(str(row[c]) for c in columns))
        console.print(table)
    held = report.get("held_events") or []
    if held:
        console.print(f"[yellow]{sum(h['events'] for h in held)} event(s) have waited for their "
                      f"account longer than the hold period[/] (see `firstvalue held`).")


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def show_actions(actions: Sequence[dict[str, Any]]) -> None:
    table = Table(title=f"{len(actions)} action(s)")
    for column in ("due", "account", "rule", "kind", "status", "sent", "reason"):
        table.add_column(column, overflow="fold")
    for action in actions:
        status = action["status"] + (" (late)" if action["late"] else "")
        if action.get("resolved_at") and action["status"] == "sent":
            status += ", resolved"
        table.add_row(action["due_at"] or "", action["account_id"], action["rule"],
                      action["kind"], status, action["sent_at"] or "",
                      action["error"] or action["reason"])
    console.print(table)


def show_stalls(queue: Sequence[dict[str, Any]]) -> None:
    table = Table(title=f"{len(queue)} stall(s), riskiest first")
    for column in ("account", "tier", "kind", "milestone", "diagnosis", "days", "status",
                   "next step"):
        table.add_column(column, overflow="fold")
    for stall in queue:
        table.add_row(stall["account_id"], _text(stall["tier"]), stall["kind"],
                      stall["milestone"] or "", stall["diagnosis"], str(stall["days_stalled"]),
                      stall["status"], stall["next_step"])
    console.print(table)
