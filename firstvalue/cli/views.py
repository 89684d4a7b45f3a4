"""Tables for people: the accounts list, one account's scorecard, the report."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.evaluate import AccountState, MilestoneStatus

LONGEST_WORD = 40  # a word longer than this may still be folded inside its cell


class WholeWordsConsole(Console):
    """A console whose tables never cut a word to fit the terminal: each column is at least as
    wide as its longest word (header included), and longer text folds onto the next line
    rather than ending in an ellipsis. A table wider than the terminal then wraps, but every
    count, id and time stays whole."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if len(objects) == 1 and isinstance(objects[0], Table) and not kwargs:
            table = objects[0]
            keep_words_whole(table)
            if self._overflows(table):
                # Wider than the terminal even with its text folded: printed uncropped, so that
                # the terminal wraps its lines rather than the console cutting them off.
                super().print(table, crop=False)
                return
        super().print(*objects, **kwargs)


    def _overflows(self, table: Table) -> bool:
        """Whether the table drawn at the terminal's width comes out wider than it. (Rich's
        measure can say it fits while its drawing does not keep every column's minimum.)"""
        segments = self.render(table, self.options.update_width(self.width))
        return any(Segment.get_line_length(line) > self.width
                   for line in Segment.split_lines(segments))


def keep_words_whole(table: Table) -> None:
    for column in table.columns:
        texts = [column.header, *column.cells]
        words = [word for text in texts if isinstance(text, str)
                 for word in Text.from_markup(text).plain.split()]
        longest = max((len(word) for word in words), default=1)
        column.min_width = max(column.min_width or 0, min(longest, LONGEST_WORD))
        column.overflow = "fold"


# Piped or captured output gets room to breathe: ids and times are never cut to fit 80 columns.
console = WholeWordsConsole(highlight=False, width=None if sys.stdout.isatty() else 200)


def milestone_mark(milestone: MilestoneStatus, ended: bool = False) -> str:
    """done, late, -Nd (overdue by N days), open, or missed (open when the run ended)."""
    if milestone.status == "done":
        return "[green]done[/]" if milestone.on_time is not False else "[yellow]late[/]"
    if ended:
        return "[red]missed[/]"
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
        marks = [milestone_mark(by_key[k], state.run_ended) if k in by_key else ""
                 for k in keys]
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
        table.add_row(m.key, milestone_mark(m, state.run_ended), m.completed_at or "",
                      _text(m.local_day),
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
    reached = "not reached yet" if state.ttv_days is None else f"{state.ttv_days} day(s)"
    console.print(f"Time-to-value: {reached}{target}")
    handoff = state.handoff or {}
    if handoff.get("gate") and handoff.get("complete"):
        console.print(f"Handoff: complete since {handoff.get('completed_at') or '-'}")
    elif handoff.get("gate"):
        missing = ", ".join(handoff.get("missing") or ()) or "-"
        console.print(f"Handoff: incomplete (missing {missing}). This track holds the "
                      "customer's messages until it is complete; submit it with:")
        # On a line of its own, so that the command is never wrapped in two.
        console.print(f"  firstvalue handoff submit {state.id} FILE", soft_wrap=True)
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

    show_analytics(report)
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


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _days(value: Any) -> str:
    return "not reached" if value is None else str(value)


def _share(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}"


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, min_width=len(title))  # a title on one line
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


def show_analytics(report: dict[str, Any]) -> None:
    """The analytics sections of the report, in the order a CS leader reads them."""
    show_ttv(report)
    show_phases(report)
    show_funnel(report)
    show_retention(report)
    show_expansion(report["expansion"])
    for experiment in report["experiments"]:
        show_experiment(experiment)


def show_ttv(report: dict[str, Any]) -> None:
    by = report["by"]
    _table(f"Time-to-value by {by} (Kaplan-Meier; runs not at value yet are censored)",
           (by, "runs", "reached", "censored", "median days (95% CI)", "quartiles", "target",
            "reached by target"),
           [(r["group"], r["accounts"], r["reached"], r["censored"],
             f"{_days(r['median_days'])} ({_text(r['median_ci'][0])} to "
             f"{_days(r['median_ci'][1])})",
             f"{_days(r['q1_days'])} / {_days(r['q3_days'])}", _text(r["ttv_target_days"]),
             _share(r["reached_by_target"])) for r in report["ttv"]])
    _table("Time-to-value against target, per track (target / industry average: framework "
           "reference)",
           ("track", "product type", "median days", "playbook target", "on target",
            "reference target", "industry average"),
           [(r["track"], _text(r["product_type"]), _days(r["median_days"]),
             _text(r["ttv_target_days"]), _yes_no(r["on_target"]),
             _text(r["reference_target_days"]), _text(r["reference_industry_average_days"]))
            for r in report["ttv_targets"]])


def show_phases(report: dict[str, Any]) -> None:
    by = report["by"]
    _table(f"Phases of time-to-value by {by} (median days, share of the whole)",
           (by, "phase", "runs", "median days", "share", ""),
           [(g["group"], f"{p['from']} -> {p['to']}", p["accounts"], _days(p["median_days"]),
             _share(p["share"]),
             "bottleneck" if g["bottleneck"] == {"from": p["from"], "to": p["to"]} else "")
            for g in report["phases"] for p in g["phases"]])


def show_funnel(report: dict[str, Any]) -> None:
    stalls = {row["key"]: row for row in report["stalls"]["milestones"]}
    _table(f"Funnel ({report['funnel']['mode']} order; eligible: reached, or target day "
           "past) with stall rates",
           # "open past target": eligible and not reached, which the milestones table above
           # calls overdue; its own "open" counts every run not there yet.
           ("milestone", "eligible", "reached", "on time", "open past target", "conversion",
            "stalled", "of worked on", "stall rate"),
           [(f["key"], f["eligible"], f["reached"], f["on_time"], f["open"],
             _share(f["conversion"]), stalls[f["key"]]["stalled"],
             stalls[f["key"]]["worked_on"], _share(stalls[f["key"]]["stall_rate"]))
            for f in report["funnel"]["milestones"]])
    console.print(f"Most accounts stall at: {report['stalls']['most_stalled'] or 'none'}")


def show_retention(report: dict[str, Any]) -> None:
    _table("90-day retention by onboarding cohort (local month of day 0)",
           ("cohort", "runs", "measured", "pending", "retained", "retention"),
           [(r["cohort"], r["accounts"], r["measured"], r["pending"], r["retained"],
             _share(r["retention_rate"]) if r["complete"] else "incomplete")
            for r in report["retention"]["by_cohort"]])
    _table("90-day retention by activation (every milestone done by day 90)",
           ("activation", "runs", "measured", "retained", "retention"),
           [(r["activation"], r["accounts"], r["measured"], r["retained"],
             _share(r["retention_rate"])) for r in report["retention"]["by_activation"]])


def show_expansion(expansion: dict[str, Any]) -> None:
    def quartile(row: dict[str, Any]) -> str:
        days = row["ttv_days"]
        return f"TTV {row['quartile']}" + (f" ({days[0]}-{days[1]} d)" if days else "")

    rows = [(r["activation"], r) for r in expansion["by_activation"]]
    rows += [(quartile(r), r) for r in expansion["by_ttv_quartile"]]
    _table("Expansion by activation and by TTV quartile",
           ("group", "runs", "expanded", "rate", "amount"),
           [(name, r["accounts"], r["expanded"], _share(r["expansion_rate"]),
             f"{r['expansion_amount']:,.0f}") for name, r in rows])
    corr = expansion["ttv_correlation"]
    if not corr["enough_data"]:
        console.print(f"Correlation of TTV and expansion: not enough data ({corr['observed']} "
                      f"runs with TTV observed, {corr['minimum']} needed).")
        return
    console.print(f"Spearman correlation of TTV and expansion: {corr['rho']} (95% CI "
                  f"{corr['ci'][0]} to {corr['ci'][1]}, p {corr['p_value']}) over "
                  f"{corr['observed']} runs with TTV observed; "
                  f"{corr['censored_left_out']} censored runs left out.")


def show_experiment(experiment: dict[str, Any]) -> None:
    rows = []
    for v in experiment["variants"]:
        versus = v.get("versus_control") or {}
        rows.append((v["variant"], v["accounts"], v["ttv"]["reached"],
                     _days(v["ttv"]["median_days"]) if v["accounts"] else "-",
                     f"{v['completion']['reached']}/{v['completion']['eligible']}",
                     _share(v["completion"]["rate"]), _text(versus.get("completion_fisher_p")),
                     _text(versus.get("completion_mde")),
                     _text(versus.get("ttv_mde_hazard_ratio"))))
    _table(f"Experiment {experiment['experiment']}: {experiment['milestone']} completion and "
           f"TTV (log-rank p {_text(experiment['ttv_logrank_p'])})",
           ("variant", "runs", "at value", "median TTV", "completed", "rate", "Fisher p",
            "MDE (abs.)", "MDE (hazard ratio)"), rows)


def show_actions(actions: Sequence[dict[str, Any]]) -> None:
    table = Table(title=f"{len(actions)} action(s)")
    for column in ("due", "key", "kind", "status", "sent", "reason"):
        table.add_column(column, overflow="fold")
    for action in actions:
        status = action["status"] + (" (late)" if action["late"] else "")
        if action.get("resolved_at") and action["status"] == "sent":
            status += ", resolved"
        if action.get("done_at"):
            status += ", done"
        if action.get("next_attempt_at") and action["next_attempt_at"] != action["due_at"]:
            status += f", next try {action['next_attempt_at']}"  # deferred or retried
        reason = action["reason"] if not action["error"] else \
            f"{action['reason']} (last error: {action['error']})"
        table.add_row(action["due_at"] or "", action["key"], action["kind"], status,
                      action["sent_at"] or "", reason)
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


def show_routing(routing: dict[str, Any]) -> None:
    """The roster's loads and the assignments by status (tier routing, docs/routing.md)."""
    team = routing.get("team") or []
    if not team:
        return
    statuses = routing.get("assignments") or {}
    console.print("\nTier routing: " + ", ".join(f"{count} {status}"
                                              for status, count in sorted(statuses.items())))
    for member in team:
        if member["role"] == "team_lead":
            continue
        away = " (away)" if member["away"] else ""
        console.print(f"  {member['handle']}: {member['role']}, {member['load']}/"
                   f"{member['capacity']} accounts in onboarding{away}")
