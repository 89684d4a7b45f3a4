"""The report's tables as CSV files, one a table, for spreadsheets and BI tools."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.metrics.analytics import milestone_keys
from firstvalue.metrics.funnel import STATUSES, funnel_status
from firstvalue.metrics.runs import load_runs
from firstvalue.store.database import Database


def write_csv(report: dict[str, Any], directory: Path, database: Database,
              playbook: CompiledPlaybook, now: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    by = report["by"]
    tables: dict[str, tuple[Sequence[str], Iterable[Sequence[Any]]]] = {
        "ttv": ((by, "accounts", "reached", "censored", "median_days", "median_ci_lower",
                 "median_ci_upper", "q1_days", "q3_days", "ttv_target_days",
                 "reached_by_target"),
                [(r["group"], r["accounts"], r["reached"], r["censored"], r["median_days"],
                  *r["median_ci"], r["q1_days"], r["q3_days"], r["ttv_target_days"],
                  r["reached_by_target"]) for r in report["ttv"]]),
        "ttv_curves": ((by, "day", "survival", "lower", "upper", "at_risk", "reached",
                        "censored"),
                       [(r["group"], p["day"], p["survival"], p["lower"], p["upper"],
                         p["at_risk"], p["reached"], p["censored"])
                        for r in report["ttv"] for p in r["curve"]]),
        "ttv_targets": (("track", "product_type", "accounts", "reached", "censored",
                         "median_days", "ttv_target_days", "on_target",
                         "reference_target_days", "reference_industry_average_days"),
                        [(r["track"], r["product_type"], r["accounts"], r["reached"],
                          r["censored"], r["median_days"], r["ttv_target_days"], r["on_target"],
                          r["reference_target_days"], r["reference_industry_average_days"])
                         for r in report["ttv_targets"]]),
        "phases": ((by, "from", "to", "accounts", "reached", "censored", "skipped",
                    "median_days", "share", "bottleneck"),
                   [(g["group"], p["from"], p["to"], p["accounts"], p["reached"], p["censored"],
                     p["skipped"], p["median_days"], p["share"],
                     g["bottleneck"] == {"from": p["from"], "to": p["to"]})
                    for g in report["phases"] for p in g["phases"]]),
        "funnel": (("milestone", "eligible", "reached", "on_time", "open", "conversion",
                    "worked_on", "stalled", "stall_rate"),
                   [(f["key"], f["eligible"], f["reached"], f["on_time"], f["open"],
                     f["conversion"], s["worked_on"], s["stalled"], s["stall_rate"])
                    for f, s in zip(report["funnel"]["milestones"],
                                    report["stalls"]["milestones"], strict=True)]),
        "funnel_accounts": (("milestone", "status", "account_id"),
                            _drilldown(database, playbook, now, report["funnel"]["mode"])),
        "retention_by_cohort": (("cohort", "accounts", "measured", "pending", "retained",
                                 "complete", "retention_rate"),
                                [(r["cohort"], r["accounts"], r["measured"], r["pending"],
                                  r["retained"], r["complete"], r["retention_rate"])
                                 for r in report["retention"]["by_cohort"]]),
        "expansion": (("split", "group", "accounts", "expanded", "expansion_rate",
                       "expansion_amount", "amount_per_account"),
                      [("activation", r["activation"], r["accounts"], r["expanded"],
                        r["expansion_rate"], r["expansion_amount"], r["amount_per_account"])
                       for r in report["expansion"]["by_activation"]]
                      + [("ttv_quartile", r["quartile"], r["accounts"], r["expanded"],
                          r["expansion_rate"], r["expansion_amount"], r["amount_per_account"])
                         for r in report["expansion"]["by_ttv_quartile"]]),
        "experiments": (("experiment", "variant", "accounts", "ttv_median_days",
                         "completion_eligible", "completion_reached", "completion_rate",
                         "ttv_logrank_p", "completion_fisher_p", "completion_mde"),
                        [(e["experiment"], v["variant"], v["accounts"], v["ttv"]["median_days"],
                          v["completion"]["eligible"], v["completion"]["reached"],
                          v["completion"]["rate"], e["ttv_logrank_p"],
                          v.get("versus_control", {}).get("completion_fisher_p"),
                          v.get("versus_control", {}).get("completion_mde"))
                         for e in report["experiments"] for v in e["variants"]]),
    }
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
               mode: str) -> list[tuple[str, str, str]]:
    """Every (milestone, status, account) behind the funnel's counts."""
    keys = milestone_keys(playbook)
    rows = []
    for record in load_runs(database, playbook, now):
        for index, key in enumerate(keys):
            statuses = funnel_status(record, keys, index, mode)
            rows += [(key, status, record.account_id) for status in STATUSES
                     if status in statuses]
    return sorted(rows)
