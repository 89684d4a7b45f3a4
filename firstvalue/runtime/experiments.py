"""Experiment assignment: each account is given one variant per experiment, once, and recorded.

An account enters an experiment at the first tick that finds it with a run and fitting the
experiment's `where`. Assignment is balanced within each tier by permuted blocks: the accounts
of a tier take the places of a sequence of blocks in the order they enter (within one tick, in
account id order), and each block holds every variant equally often, in an order shuffled by a
generator seeded with the experiment's seed, key, tier and block number. The same entries in
the same order give the same assignment; the assignment, once recorded, never changes.

The tick then evaluates the account with its variants' playbook (`variant_playbook`); the read
path uses the recorded assignment and never assigns.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from firstvalue.engine.compiled import CompiledPlaybook, compile_playbook, traits_match
from firstvalue.engine.evaluate import AccountState
from firstvalue.engine.facts import AccountFacts
from firstvalue.playbook.experiments import find_variant, variant_model
from firstvalue.playbook.loader import LoadedPlaybook
from firstvalue.playbook.model import Experiment
from firstvalue.store.events import select_in
from firstvalue.store.traits import traits_at

log = logging.getLogger(__name__)

_COMPILED: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, CompiledPlaybook]] = {}


def block_size(experiment: Experiment) -> int:
    return experiment.block_size or 2 * len(experiment.variants)


def variant_at(experiment: Experiment, stratum: str, position: int) -> str:
    """The variant of the `position`-th account (from 0) of a tier stratum."""
    size = block_size(experiment)
    block, slot = divmod(position, size)
    order = [v.key for v in experiment.variants] * (size // len(experiment.variants))
    random.Random(f"{experiment.seed}:{experiment.key}:{stratum}:{block}").shuffle(order)
    return order[slot]


def stratum_of(state: AccountState) -> str:
    return "none" if state.tier is None else str(state.tier)


def recorded_variants(conn: sa.Connection, account_ids: Iterable[str] | None = None,
                      assigned_by: int | None = None) -> dict[str, dict[str, str]]:
    """Each account's recorded variants: {account id: {experiment: variant}}; with
    `assigned_by`, only those assigned by then."""
    sql = "SELECT account_id, experiment, variant FROM experiment_assignments WHERE "
    sql += "assigned_at <= :by" if assigned_by is not None else "1 = 1"
    by = {"by": assigned_by} if assigned_by is not None else {}
    if account_ids is None:
        rows = conn.execute(sa.text(sql), by).all()
    else:
        rows = select_in(conn, sql + " AND account_id IN :ids", account_ids, **by)
    found: dict[str, dict[str, str]] = {}
    for account_id, experiment, variant in rows:
        found.setdefault(account_id, {})[experiment] = variant
    return found


class Assignments:
    """The experiments of one tick or read: recorded variants, and new ones when writing."""

    def __init__(self, conn: sa.Connection, playbook: CompiledPlaybook,
                 account_ids: Iterable[str] | None, now: int, write: bool) -> None:
        self.conn = conn
        self.playbook = playbook
        self.now = now
        self.write = write
        self.experiments = playbook.loaded.model.experiments
        self.recorded = recorded_variants(conn, account_ids) if self.experiments else {}
        self.filled: dict[tuple[str, str], int] = {}
        if self.experiments and write:
            rows = conn.execute(sa.text(
                "SELECT experiment, stratum, MAX(position) + 1 FROM experiment_assignments "
                "GROUP BY experiment, stratum")).all()
            self.filled = {(e, s): n for e, s, n in rows}

    def evaluate(self, facts: AccountFacts, state: AccountState | None,
                 evaluate: Any) -> AccountState | None:
        """The state with the account's variants applied (assigning them first when this is
        a tick); the state unchanged for an account in no variant."""
        return self.applied(facts, state, evaluate)[0]

    def applied(self, facts: AccountFacts, state: AccountState | None, evaluate: Any
                ) -> tuple[AccountState | None, tuple[tuple[str, str], ...]]:
        """As `evaluate`, with the variants chosen (none for an account in no variant)."""
        if not self.experiments or state is None:
            return state, ()
        fitting = self.fitting(facts.traits, state) if self.write else ()
        chosen = self.effective(self.choose(facts.account_id, state, fitting))
        if not chosen:
            return state, ()
        return evaluate(facts, variant_playbook(self.playbook, chosen), self.now), chosen

    def fitting(self, traits: dict[str, list[Any]], state: AccountState) -> tuple[str, ...]:
        """The experiments an account with a run fits at `now` (their `where`)."""
        if state.run is None:
            return ()
        now_traits = {k: v[0] for k, v in traits_at(traits, self.now).items()}
        return tuple(e.key for e in self.experiments
                     if traits_match(e.where, now_traits, state.track))

    def choose(self, account_id: str, state: AccountState | Any,
               fitting: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """The account's variants; when this is a tick, first assigned in the `fitting`
        experiments it is not in yet. `state` is the one evaluated with the base playbook,
        or what a worker kept of it (`run`, `track` and `tier`)."""
        mine = self.recorded.setdefault(account_id, {})
        if self.write and state.run is not None:
            for experiment in self.experiments:
                if experiment.key not in mine and experiment.key in fitting:
                    mine[experiment.key] = self._assign(experiment, account_id, state)
        return tuple((e.key, mine[e.key]) for e in self.experiments if e.key in mine)

    def effective(self, chosen: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """The variants to evaluate with: `chosen` when one of them changes rules or
        templates, else none (the base playbook)."""
        return chosen if any(self._overrides(e, v) for e, v in chosen) else ()

    def _assign(self, experiment: Experiment, account_id: str, state: Any) -> str:
        stratum = stratum_of(state)
        position = self.filled.get((experiment.key, stratum), 0)
        self.filled[(experiment.key, stratum)] = position + 1
        variant = variant_at(experiment, stratum, position)
        self.conn.execute(sa.text(
            "INSERT INTO experiment_assignments (experiment, account_id, variant, stratum, "
            "position, run, assigned_at, playbook_version) VALUES (:e, :a, :v, :s, :p, :run, "
            ":now, :version)"),
            {"e": experiment.key, "a": account_id, "v": variant, "s": stratum, "p": position,
             "run": state.run["number"] if state.run else 0, "now": self.now,
             "version": self.playbook.version})
        log.info("Account %s was assigned variant %s of experiment %s.", account_id, variant,
                 experiment.key)
        return variant

    def _overrides(self, experiment_key: str, variant_key: str) -> bool:
        experiment = next(e for e in self.experiments if e.key == experiment_key)
        variant = find_variant(experiment, variant_key)
        return variant is not None and bool(variant.rules or variant.templates)


def variant_playbook(playbook: CompiledPlaybook,
                     chosen: tuple[tuple[str, str], ...]) -> CompiledPlaybook:
    """The compiled playbook of an account in the `chosen` variants, compiled once."""
    key = (id(playbook), chosen)
    cached = _COMPILED.get(key)
    if cached is not None and cached[0] is playbook:
        return cached[1]
    base = playbook.loaded
    loaded = LoadedPlaybook(model=variant_model(base.model, chosen), version=base.version,
                            source=base.source, text=base.text)
    compiled = compile_playbook(loaded)
    # The facts are read with the base playbook's names: keep them, so both read the same.
    compiled = CompiledPlaybook(**{**compiled.__dict__,
                                   "relevant_names": playbook.relevant_names
                                   | compiled.relevant_names})
    _COMPILED[key] = (playbook, compiled)
    return compiled
