"""Experiment read-outs: per variant, TTV (Kaplan-Meier, log-rank test) and milestone
completion (Fisher's exact test), with the minimum detectable effect at the current sample size.

- TTV per variant is censored as everywhere else; the log-rank test compares the variants'
  curves (lifelines' multivariate log-rank test, which is the ordinary one for two variants).
- Completion is the share of the eligible runs (as in the funnel: reached, or target day past)
  that reached the experiment's milestone (`first_value` unless it names another). Each variant
  is compared with the first one (the control) by Fisher's exact test, two-sided.
- The minimum detectable effect at level `alpha` and power `power`: for completion, the
  absolute difference of two proportions, by the normal approximation at the pooled rate,
  (z(1 - alpha/2) + z(power)) * sqrt(p (1 - p) (1/n1 + 1/n2)); for TTV, the hazard ratio by
  Schoenfeld's formula, exp((z(1 - alpha/2) + z(power)) / sqrt(d w (1 - w))), with d runs that
  reached value in the two variants and w the share of the variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.metrics.funnel import funnel_status
from firstvalue.metrics.runs import RunRecord
from firstvalue.metrics.survival import kaplan_meier, ttv_observation
from firstvalue.playbook.model import Experiment


def experiment_readouts(records: Sequence[RunRecord],
                        playbook: CompiledPlaybook) -> list[dict[str, Any]]:
    model = playbook.loaded.model
    keys = [m.key for m in model.milestones]
    return [readout(e, records, keys, model.first_value) for e in model.experiments]


def readout(experiment: Experiment, records: Sequence[RunRecord], keys: Sequence[str],
            first_value: str) -> dict[str, Any]:
    milestone = experiment.milestone or first_value
    index = list(keys).index(milestone)
    arms: dict[str, list[RunRecord]] = {v.key: [] for v in experiment.variants}
    for record in records:
        variant = record.variants.get(experiment.key)
        if variant in arms:
            arms[variant].append(record)

    variants = []
    for key, members in arms.items():
        statuses = [funnel_status(r, keys, index, "any") for r in members]
        eligible = sum(1 for s in statuses if "eligible" in s)
        done = sum(1 for s in statuses if "reached" in s)
        ttv = kaplan_meier([ttv_observation(r, first_value) for r in members])
        variants.append({"variant": key, "accounts": len(members), "ttv": ttv,
                         "completion": {"eligible": eligible, "reached": done,
                                        "rate": round(done / eligible, 4) if eligible
                                        else None}})
    control = variants[0]
    for row in variants[1:]:
        row["versus_control"] = _compare(control, row, experiment)
    return {"experiment": experiment.key, "description": experiment.description,
            "milestone": milestone, "alpha": experiment.alpha, "power": experiment.power,
            "control": control["variant"],
            "accounts": sum(len(m) for m in arms.values()),
            "ttv_logrank_p": _logrank(arms, first_value), "variants": variants}


def _logrank(arms: dict[str, list[RunRecord]], first_value: str) -> float | None:
    durations, groups, events = [], [], []
    for key, members in arms.items():
        for record in members:
            observation = ttv_observation(record, first_value)
            durations.append(observation.days)
            events.append(observation.observed)
            groups.append(key)
    if len({g for g in groups}) < 2 or not any(events):
        return None
    from lifelines.statistics import multivariate_logrank_test

    result = multivariate_logrank_test(durations, groups, events)
    return round(float(result.p_value), 6)


def _compare(control: dict[str, Any], other: dict[str, Any],
             experiment: Experiment) -> dict[str, Any]:
    from scipy.stats import fisher_exact, norm

    a, b = control["completion"], other["completion"]
    p_value = None
    if a["eligible"] and b["eligible"]:
        table = [[b["reached"], b["eligible"] - b["reached"]],
                 [a["reached"], a["eligible"] - a["reached"]]]
        p_value = round(float(fisher_exact(table, alternative="two-sided")[1]), 6)
    z = float(norm.ppf(1 - experiment.alpha / 2) + norm.ppf(experiment.power))
    return {"completion_difference": _difference(a["rate"], b["rate"]),
            "completion_fisher_p": p_value,
            "completion_mde": _proportion_mde(a, b, z),
            "ttv_mde_hazard_ratio": _hazard_ratio_mde(control, other, z)}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 4)


def _proportion_mde(a: dict[str, Any], b: dict[str, Any], z: float) -> float | None:
    n1, n2 = a["eligible"], b["eligible"]
    if not n1 or not n2:
        return None
    pooled = (a["reached"] + b["reached"]) / (n1 + n2)
    spread = pooled * (1 - pooled)
    if spread == 0:
        spread = 0.25  # no variation yet: the widest case, so the figure is not flattered
    return round(z * math.sqrt(spread * (1 / n1 + 1 / n2)), 4)


def _hazard_ratio_mde(control: dict[str, Any], other: dict[str, Any],
                      z: float) -> float | None:
    events = control["ttv"]["reached"] + other["ttv"]["reached"]
    total = control["accounts"] + other["accounts"]
    if not events or not control["accounts"] or not other["accounts"]:
        return None
    share = other["accounts"] / total
    return round(math.exp(z / math.sqrt(events * share * (1 - share))), 4)
