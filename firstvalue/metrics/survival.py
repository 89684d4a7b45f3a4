"""Time-to-value with censoring: Kaplan-Meier estimates (lifelines) of contract to first value.

An account that has not reached value is not missing data: it is censored, at the earliest of
`now`, its run's end day and its churn. Dropping it, or averaging over the accounts that finished,
would make every team look faster than it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from firstvalue.metrics.runs import RunRecord, group_key, group_order

CONFIDENCE = 0.95

# The onboarding framework's reference figures by product type (shared/seed): a TTV target
# and the industry average range, in days.
REFERENCES = {
    "self_serve": {"target_days": "under 1", "industry_average_days": "3 to 7"},
    "mid_market": {"target_days": "under 14", "industry_average_days": "30 to 45"},
    "enterprise": {"target_days": "under 30", "industry_average_days": "60 to 120"},
    "data_analytics": {"target_days": "under 7", "industry_average_days": "21 to 30"},
}


@dataclass(frozen=True)
class Observation:
    """What the estimator is fed for one run: a duration in days and whether it ended in the
    event (`observed`) or was censored, and by what."""

    account_id: str
    days: int
    observed: bool
    censored_by: str | None  # "now", "end_day" or "churn"; None when observed


def censoring_point(record: RunRecord) -> tuple[date, str]:
    """The date a run stops being watched, and why: the earliest of today, its end day and its
    churn (ties go to the first of those)."""
    return record.censoring


def span_observation(record: RunRecord, start: date, end_at: int | None) -> Observation:
    """From `start` to the instant `end_at` (a milestone's time), censored as TTV is."""
    end_on = record.local(end_at) if end_at is not None else None
    limit, reason = censoring_point(record)
    churned_first = (end_at is not None and record.churned_at is not None
                     and record.churned_at < end_at)
    past_end = (end_on is not None and record.day0 is not None
                and end_on > record.day0 + timedelta(days=record.end_day))
    if end_on is not None and not churned_first and not past_end:
        return Observation(record.account_id, max(0, (end_on - start).days), True, None)
    return Observation(record.account_id, max(0, (limit - start).days), False, reason)


def ttv_observation(record: RunRecord, first_value: str) -> Observation:
    """Contract signed to first value, in local days (as the engine counts `ttv_days`)."""
    key = ("ttv", first_value)
    found = record.memo.get(key)
    if found is None:
        found = record.memo[key] = span_observation(record, record.signed_on,
                                                    record.milestones.get(first_value))
    return found


def kaplan_meier(observations: Sequence[Observation], curve: bool = True) -> dict[str, Any]:
    """Median, quartiles and their confidence intervals, and the survival curve.

    "Survival" here is the share of runs that have not reached value yet. A median that the
    curve never brings down to one half is reported as not reached (`null`), never guessed.
    """
    total = len(observations)
    events = sum(1 for o in observations if o.observed)
    summary: dict[str, Any] = {"accounts": total, "reached": events, "censored": total - events,
                               "median_days": None, "median_reached": False,
                               "median_ci": [None, None], "q1_days": None, "q3_days": None,
                               "curve": []}
    if not total:
        return summary
    fitter = _fit([o.days for o in observations], [o.observed for o in observations])
    table = fitter.survival_function_.iloc[:, 0]
    band = fitter.confidence_interval_
    lower, upper = band.iloc[:, 0], band.iloc[:, 1]

    median = _crossing(table, 0.5)
    summary |= {
        "median_days": median, "median_reached": median is not None,
        # The interval of the median: where the pointwise band of the curve crosses one half.
        "median_ci": [_crossing(lower, 0.5), _crossing(upper, 0.5)],
        "q1_days": _crossing(table, 0.75), "q3_days": _crossing(table, 0.25),
    }
    if curve:
        events_table = fitter.event_table
        summary["curve"] = [
            {"day": int(day), "survival": _round(table[day]), "lower": _round(lower[day]),
             "upper": _round(upper[day]), "at_risk": int(events_table.loc[day, "at_risk"]),
             "reached": int(events_table.loc[day, "observed"]),
             "censored": int(events_table.loc[day, "censored"])}
            for day in table.index]
    return summary


def _fit(durations: list[int], observed: list[bool]) -> Any:
    from lifelines import KaplanMeierFitter

    fitter = KaplanMeierFitter(alpha=1 - CONFIDENCE)
    return fitter.fit(durations, event_observed=observed)


def _crossing(series: Any, level: float) -> int | None:
    """The first day the curve is at or below `level`; None when it never gets there."""
    for day, value in series.items():
        if value <= level + 1e-12:
            return int(day)
    return None


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def survival_at(summary: dict[str, Any], day: int) -> float | None:
    """The curve's value at `day` (1 before the first step)."""
    value = 1.0
    for point in summary["curve"]:
        if point["day"] > day:
            break
        value = point["survival"]
    return value if summary["accounts"] else None


def ttv_by(records: Sequence[RunRecord], by: str, first_value: str,
           curve: bool = True) -> list[dict[str, Any]]:
    """The TTV estimate per group of `--by`, each with its TTV targets where they agree."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record, by), []).append(record)
    rows = []
    for key in group_order(list(groups), by):
        members = groups[key]
        summary = kaplan_meier([ttv_observation(r, first_value) for r in members], curve)
        targets = {r.ttv_target for r in members if r.ttv_target is not None}
        target = targets.pop() if len(targets) == 1 else None
        reached_by_target = None
        if target is not None and curve:
            left = survival_at(summary, target)
            reached_by_target = None if left is None else round(1 - left, 6)
        rows.append({"group": key, **summary, "ttv_target_days": target,
                     "reached_by_target": reached_by_target})
    return rows


def target_table(records: Sequence[RunRecord], playbook_tracks: Sequence[Any],
                 first_value: str) -> list[dict[str, Any]]:
    """Per track: the measured median beside the playbook's TTV target and the framework's
    reference figures for the track's product type."""
    rows = []
    for track in playbook_tracks:
        members = [r for r in records if r.track == track.key]
        summary = kaplan_meier([ttv_observation(r, first_value) for r in members], curve=False)
        kind = product_type(track)
        reference = REFERENCES.get(kind or "", {})
        median = summary["median_days"]
        rows.append({
            "track": track.key, "product_type": kind, "accounts": summary["accounts"],
            "reached": summary["reached"], "censored": summary["censored"],
            "median_days": median, "median_ci": summary["median_ci"],
            "ttv_target_days": track.ttv_target,
            "on_target": None if median is None or track.ttv_target is None
            else median <= track.ttv_target,
            "reference_target_days": reference.get("target_days"),
            "reference_industry_average_days": reference.get("industry_average_days"),
        })
    return rows


def product_type(track: Any) -> str | None:
    """The framework's product type for a track: declared, or read from the track's shape (a
    self-serve track has no kickoff; otherwise the segment it matches)."""
    declared = getattr(track, "product_type", None)
    if declared:
        return declared
    if not track.kickoff:
        return "self_serve"
    segment = track.match.get("segment")
    segments = segment if isinstance(segment, list) else [segment]
    for name in ("enterprise", "mid_market"):
        if name in segments:
            return name
    return None
