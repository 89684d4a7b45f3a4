"""Time-to-value taken apart: each phase's median (censored as TTV is), its share, the bottleneck.

A phase runs from one checkpoint of the playbook's phase list to the next. A run is at risk for a
phase once it has reached the phase's first checkpoint. A later checkpoint reached before the
earlier one (out of order) counts the phase as 0 days, as the account's own phase figures do. A
run that reached the later checkpoint but not the earlier one has no start for the phase and is
left out of it (counted as `skipped`). A track without a kickoff has no contract-to-kickoff phase:
its contract leads straight to the next checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firstvalue.metrics.runs import RunRecord, group_key, group_order
from firstvalue.metrics.survival import Observation, kaplan_meier, span_observation


def checkpoints_of(record: RunRecord, phases: Sequence[str]) -> list[str]:
    return [c for c in phases if c != "kickoff" or record.has_kickoff]


def reached_at(record: RunRecord, checkpoint: str) -> int | None:
    """When a run reached a checkpoint (by `now`): the contract, day 0, or a milestone."""
    if checkpoint == "contract_signed":
        return record.started_at
    if checkpoint == "kickoff":
        return record.day_start(0) if record.day0 is not None else None
    return record.milestones.get(checkpoint)


def phase_observations(records: Sequence[RunRecord], phases: Sequence[str]
                       ) -> dict[tuple[str, str], tuple[list[Observation], int]]:
    """Per phase (in order): what the estimator gets, and how many runs were skipped."""
    found: dict[tuple[str, str], tuple[list[Observation], int]] = {}
    for record in records:
        points = checkpoints_of(record, phases)
        for start, end in zip(points, points[1:], strict=False):
            observations, skipped = found.setdefault((start, end), ([], 0))
            began, ended = reached_at(record, start), reached_at(record, end)
            if began is None:
                if ended is not None:
                    found[(start, end)] = (observations, skipped + 1)
                continue
            if ended is not None and ended < began:
                ended = began  # out of order: the phase took no time of its own
            observations.append(span_observation(record, record.local(began), ended))
    return found


def decomposition(records: Sequence[RunRecord], phases: Sequence[str]) -> dict[str, Any]:
    """Each phase's median and share of the sum of the phase medians, and the bottleneck."""
    rows = []
    for (start, end), (observations, skipped) in phase_observations(records, phases).items():
        summary = kaplan_meier(observations, curve=False)
        rows.append({"from": start, "to": end, "accounts": summary["accounts"],
                     "reached": summary["reached"], "censored": summary["censored"],
                     "skipped": skipped, "median_days": summary["median_days"],
                     "median_ci": summary["median_ci"], "share": None})
    medians = [row["median_days"] for row in rows]
    if rows and all(m is not None for m in medians) and sum(medians):
        for row in rows:
            row["share"] = round(row["median_days"] / sum(medians), 4)
    return {"phases": rows, "bottleneck": _bottleneck(rows)}


def _bottleneck(rows: list[dict[str, Any]]) -> dict[str, str] | None:
    """The phase with the longest median; a phase whose median is not reached is longer than
    any that is (among those, the one with the fewest runs through it). None without data."""
    candidates = [row for row in rows if row["accounts"]]
    if not candidates:
        return None

    def length(row: dict[str, Any]) -> tuple[int, float]:
        if row["median_days"] is None:
            return (1, 1 - row["reached"] / row["accounts"])
        return (0, row["median_days"])

    worst = max(candidates, key=length)
    return {"from": worst["from"], "to": worst["to"]}


def decomposition_by(records: Sequence[RunRecord], by: str,
                     phases: Sequence[str]) -> list[dict[str, Any]]:
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record, by), []).append(record)
    return [{"group": key, **decomposition(groups[key], phases)}
            for key in group_order(list(groups), by)]
