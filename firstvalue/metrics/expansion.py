"""Onboarding and expansion: expansion rate and amount by activation and by TTV quartile, and
the rank correlation between TTV and expansion.

- Expanded means at least one `Expansion Closed` during the run, at or before `now`; the amount
  is the sum of their `amount` properties (0 for none).
- TTV quartiles are taken over the runs whose TTV is observed (Q1 the fastest); the runs still
  short of value (censored) make a group of their own beside them.
- The correlation is Spearman's rho over the runs whose TTV is observed, with a confidence
  interval from Fisher's z transform with the Bonett-Wright standard error. Below
  MIN_CORRELATION_RUNS observed runs the result is "not enough data", not a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from firstvalue.metrics.cohorts import activation
from firstvalue.metrics.runs import RunRecord
from firstvalue.metrics.survival import ttv_observation

MIN_CORRELATION_RUNS = 10
CONFIDENCE = 0.95


def _group(members: Sequence[RunRecord]) -> dict[str, Any]:
    expanded = [r for r in members if r.expansions]
    amount = sum(r.expansion_amount for r in members)
    return {"accounts": len(members), "expanded": len(expanded),
            "expansion_rate": round(len(expanded) / len(members), 4) if members else None,
            "expansion_amount": round(amount, 2),
            "amount_per_account": round(amount / len(members), 2) if members else None}


def expansion_by_activation(records: Sequence[RunRecord],
                            keys: Sequence[str]) -> list[dict[str, Any]]:
    groups: dict[str, list[RunRecord]] = {"activated": [], "not_activated": [],
                                          "not_known_yet": []}
    for record in records:
        groups[activation(record, keys) or "not_known_yet"].append(record)
    return [{"activation": key, **_group(members)} for key, members in groups.items()]


def expansion_by_ttv_quartile(records: Sequence[RunRecord],
                              first_value: str) -> list[dict[str, Any]]:
    """Quartile q of n observed TTVs sorted takes the ranks from q*n/4 up to (q+1)*n/4; runs
    with the same TTV stay together, in the quartile of the first of them."""
    observations = [(r, ttv_observation(r, first_value)) for r in records]
    reached = sorted(((o.days, r) for r, o in observations if o.observed),
                     key=lambda item: (item[0], item[1].account_id))
    first_rank: dict[int, int] = {}
    for rank, (days, _) in enumerate(reached):
        first_rank.setdefault(days, rank)
    quartiles: list[list[tuple[int, RunRecord]]] = [[], [], [], []]
    for days, record in reached:
        quartiles[first_rank[days] * 4 // len(reached)].append((days, record))
    rows = []
    for q, members in enumerate(quartiles):
        days = [d for d, _ in members]
        rows.append({"quartile": f"Q{q + 1}", "ttv_days": [min(days), max(days)] if days
                     else None, **_group([r for _, r in members])})
    censored = [r for r, o in observations if not o.observed]
    rows.append({"quartile": "value_not_reached", "ttv_days": None, **_group(censored)})
    return rows


def ttv_expansion_correlation(records: Sequence[RunRecord],
                              first_value: str) -> dict[str, Any]:
    observed = [(ttv_observation(r, first_value), r) for r in records]
    pairs = [(o.days, r.expansion_amount) for o, r in observed if o.observed]
    result: dict[str, Any] = {"method": "spearman", "observed": len(pairs),
                              "censored_left_out": len(observed) - len(pairs),
                              "rho": None, "ci": [None, None], "p_value": None,
                              "enough_data": False,
                              "minimum": MIN_CORRELATION_RUNS}
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(pairs) < MIN_CORRELATION_RUNS or len(set(xs)) < 2 or len(set(ys)) < 2:
        return result
    from scipy.stats import norm, spearmanr

    rho, p_value = spearmanr(xs, ys)
    rho = float(rho)
    n = len(pairs)
    # Fisher's z with the Bonett-Wright standard error for Spearman's rho.
    se = math.sqrt((1 + rho * rho / 2) / (n - 3))
    z = math.atanh(max(-0.999999, min(0.999999, rho)))
    half = float(norm.ppf(1 - (1 - CONFIDENCE) / 2)) * se
    result |= {"rho": round(rho, 4), "p_value": round(float(p_value), 6), "enough_data": True,
               "ci": [round(math.tanh(z - half), 4), round(math.tanh(z + half), 4)]}
    return result
