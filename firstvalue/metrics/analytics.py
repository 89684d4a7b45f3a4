"""The whole onboarding analytics at `now`: what `firstvalue report` and `/api/metrics` show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.errors import ConfigError
from firstvalue.metrics.cohorts import (
    cohort_heatmap,
    retention_by_activation,
    retention_by_cohort,
    retention_window,
)
from firstvalue.metrics.expansion import (
    expansion_by_activation,
    expansion_by_ttv_quartile,
    ttv_expansion_correlation,
)
from firstvalue.metrics.funnel import MODES, funnel
from firstvalue.metrics.outcomes import active_between
from firstvalue.metrics.phases import decomposition_by
from firstvalue.metrics.runs import GROUPINGS, RunRecord, load_runs
from firstvalue.metrics.stall_rates import load_stalls, stall_rates
from firstvalue.metrics.survival import target_table, ttv_by
from firstvalue.store.database import Database


def check_grouping(by: str) -> str:
    if by not in GROUPINGS:
        raise ConfigError(f"cannot group by {by!r}; use one of: {', '.join(GROUPINGS)}")
    return by


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown funnel mode {mode!r}; use one of: {', '.join(MODES)}")
    return mode


def milestone_keys(playbook: CompiledPlaybook) -> list[str]:
    return [m.key for m in playbook.loaded.model.milestones]


def build_analytics(database: Database, playbook: CompiledPlaybook, now: int,
                    by: str = "segment", mode: str = "any",
                    records: Sequence[RunRecord] | None = None) -> dict[str, Any]:
    """Every analytic of the report, over the runs at `now`."""
    check_grouping(by)
    check_mode(mode)
    if records is None:
        records = load_runs(database, playbook, now)
    model = playbook.loaded.model
    keys = milestone_keys(playbook)
    windows = [w for w in (retention_window(r) for r in records) if w is not None]
    active = active_between(database, playbook, windows)
    stalls = stall_rates(records, keys, load_stalls(database, now))
    cohorts = retention_by_cohort(records, active)
    from firstvalue.metrics.experiments import experiment_readouts

    return {
        "by": by,
        "runs": len(records),
        "ttv": ttv_by(records, by, model.first_value),
        "ttv_targets": target_table(records, model.tracks, model.first_value),
        "phases": decomposition_by(records, by, model.phases),
        "funnel": {"mode": mode, "milestones": funnel(records, keys, mode)},
        "stalls": stalls,
        "retention": {"by_cohort": cohorts,
                      "by_activation": retention_by_activation(records, active, keys)},
        "cohort_heatmap": cohort_heatmap(records, keys, cohorts),
        "expansion": {
            "by_activation": expansion_by_activation(records, keys),
            "by_ttv_quartile": expansion_by_ttv_quartile(records, model.first_value),
            "ttv_correlation": ttv_expansion_correlation(records, model.first_value)},
        "experiments": experiment_readouts(records, playbook),
    }
