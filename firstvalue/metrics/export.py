"""The report's tables as CSV files, one a table, for spreadsheets and BI tools."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.metrics.analytics import milestone_keys
from firstvalue.metrics.funnel import STATUSES, funnel_status
from firstvalue.metrics.runs import load_runs
from firstvalue.store.database import Database

Table = tuple[Sequence[str], list[Sequence[Any]]]


def ttv_table(report: dict[str, Any]) -> Table:
    return ((report["by"], "accounts", "reached", "censored", "median_days", "median_ci_lower",
             "median_ci_upper", "q1_days", "q3_days", "ttv_target_days", "reached_by_target"),
            [(r["group"], r["accounts"], r["reached"], r["censored"], r["median_days"],
              *r["median_ci"], r["q1_days"], r["q3_days"], r["ttv_target_days"],
              r["reached_by_target"]) for r in report["ttv"]])


def curves_table(report: dict[str, Any]) -> Table:
    return ((report["by"], "day", "survival", "lower", "upper", "at_risk", "reached",
             "censored"),
            [(r["group"], p["day"], p["survival"], p["lower"], p["upper"], p["at_risk"],
              p["reached"], p["censored"]) for r in report["ttv"] for p in r["curve"]])


def targets_table(report: dict[str, Any]) -> Table:
    columns = ("track", "product_type", "accounts", "reached", "censored", "median_days",
               "ttv_target_days", "on_target", "reference_target_days",
               "reference_industry_average_days")
    return columns, [tuple(r[c] for c in columns) for r in report["ttv_targets"]]


def phases_table(report: dict[str, Any]) -> Table:
    return ((report["by"], "from", "to", "accounts", "reached", "censored", "skipped",
             "median_days", "share", "bottleneck"),
            [(g["group"], p["from"], p["to"], p["accounts"], p["reached"], p["censored"],
              p["skipped"], p["median_days"], p["share"],
              g["bottleneck"] == {"from": p["from"], "to": p["to"]})
             for g in report["phases"] for p in g["phases"]])


def funnel_table(report: dict[str, Any]) -> Table:
    stalls = {row["key"]: row for row in report["stalls"]["milestones"]}
    return (("milestone", "eligible", "reached", "on_time", "open", "conversion", "worked_on",
             "stalled", "stall_rate"),
            [(f["key"], f["eligible"], f["reached"], f["on_time"], f["open"], f["conversion"],
              stalls[f["key"]]["worked_on"], stalls[f["key"]]["stalled"],
              stalls[f["key"]]["stall_rate"]) for f in report["funnel"]["milestones"]])


def retention_table(report: dict[str, Any]) -> Table:
    columns = ("cohort", "accounts", "measured", "pending", "retained", "complete",
               "retention_rate")
    return columns, [tuple(r[c] for c in columns) for r in report["retention"]["by_cohort"]]


def expansion_table(report: dict[str, Any]) -> Table:
    figures = ("accounts", "expanded", "expansion_rate", "expansion_amount",
               "amount_per_account")
    expansion = report["expansion"]
    rows: list[Sequence[Any]] = [("activation", r["activation"], *(r[f] for f in figures))
                                 for r in expansion["by_activation"]]
    rows += [("ttv_quartile", r["quartile"], *(r[f] for f in figures))
             for r in expansion["by_ttv_quartile"]]
    return ("split", "group", *figures), rows


def experiments_table(report: dict[str, Any]) -> Table:
    rows: list[Sequence[Any]] = []
    for e in report["experiments"]:
        for v in e["variants"]:
            versus = v.get("versus_control") or {}
            rows.append((e["experiment"], v["variant"], v["accounts"], v["ttv"]["median_days"],
                         v["completion"]["eligible"], v["completion"]["reached"],
                         v["completion"]["rate"], e["ttv_logrank_p"],
                         versus.get("completion_fisher_p"), versus.get("completion_mde"),
                         versus.get("ttv_mde_hazard_ratio")))
    return (("experiment", "variant", "accounts", "ttv_median_days", "completion_eligible",
             "completion_reached", "completion_rate", "ttv_logrank_p", "completion_fisher_p",
             "completion_mde", "ttv_mde_hazard_ratio"), rows)


TABLES: dict[str, Callable[[dict[str, Any]], Table]] = {
    "ttv": ttv_table, "ttv_curves": curves_table, "ttv_targets": targets_table,
    "phases": phases_table, "funnel": funnel_table, "retention_by_cohort": retention_table,
    "expansion": expansion_table, "experiments": experiments_table,
}


def write_csv(report: dict[str, Any], directory: Path, database: Database,
              playbook: CompiledPlaybook, now: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    tables = {name: build(report) for name, build in TABLES.items()}
    tables["funnel_accounts"] = (("milestone", "status", "account_id"),
                                 _drilldown(database, playbook, now, report["funnel"]["mode"]))
    written = []
    for name, (header, rows) in tables.items():
        path = directory / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(path)
    return written


def _drilldown(database: Database, playbook: CompiledPlaybook, now: int,
               mode: str) -> list[Sequence[Any]]:
    """Every (milestone, status, account) behind the funnel's counts."""
    keys = milestone_keys(playbook)
    rows = []
    for record in load_runs(database, playbook, now):
        for index, key in enumerate(keys):
            statuses = funnel_status(record, keys, index, mode)
            rows += [(key, status, record.account_id) for status in STATUSES
                     if status in statuses]
    return sorted(rows)
