"""Runs as the analytics see them: what each account's current run had reached by `now`.

The report reads the states the last tick stored, so that it costs a read of the store, not an
evaluation of every account. A stored state is used only when it is current: evaluated with the
playbook in use and after the account's last change. Any other account (never evaluated, changed
since, or evaluated with another playbook version) is evaluated at `now`. A state evaluated after
`now` is cut back to it: milestones, the kickoff and the run itself count only if they happened
at or before `now`, so that nothing later than `--now` is used.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.clock import from_micros, to_micros
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.days import zone
from firstvalue.store.database import Database

_decode = msgspec.json.decode
UTC_ZONE = zoneinfo.ZoneInfo("UTC")
MICROS_A_DAY = 86_400_000_000


class _StoredMilestone(msgspec.Struct):
    key: str
    status: str
    completed_at: str | None = None


class _StoredRun(msgspec.Struct):
    number: int
    started_at: str
    end_day: int | None = None


class _StoredState(msgspec.Struct):
    """The part of a stored state the analytics read; decoding only it skips the rest (the
    stalls' evidence, above all) at C speed."""

    id: str
    timezone: str | None = None
    segment: str | None = None
    tier: int | None = None
    track: str | None = None
    kickoff_at: str | None = None
    kickoff_source: str | None = None
    segment_at_kickoff: str | None = None
    ttv_target_days: int | None = None
    run: _StoredRun | None = None
    milestones: list[_StoredMilestone] = []
    error: str | None = None
    evaluated_at: str | None = None
    next_event_at: str | None = None

    def holds_at(self, now: int) -> bool:
        """Whether this state, cut back to `now`, is what an evaluation at `now` would give.

        Time alone is handled by the cut (censoring, a kickoff still ahead), but not a state
        evaluated after `now` whose run or kickoff came after `now` (another run, or another
        booking, was current then), nor one evaluated before events dated up to `now`.
        """
        if self.evaluated_at is None:
            return False
        evaluated = _instant(self.evaluated_at)
        if evaluated <= now:
            return self.next_event_at is None or _instant(self.next_event_at) > now
        if self.run is not None and _instant(self.run.started_at) > now:
            return False
        if self.kickoff_at is None:
            return True
        # A completed kickoff by `now` was already the kickoff then; a booking may not have
        # been (a later booking replaces an earlier one).
        return _instant(self.kickoff_at) <= now and self.kickoff_source == "completed"


class _UseCase(msgspec.Struct):
    use_case: list[list[Any]] = []


_decode_state = msgspec.json.Decoder(_StoredState).decode
_decode_use_case = msgspec.json.Decoder(_UseCase).decode


@dataclass(frozen=True)
class RunRecord:
    """One account's current run as of `now`: the facts every analytic is computed from."""

    account_id: str
    segment: str | None
    segment_at_kickoff: str | None
    tier: int | None
    track: str | None
    use_case: str | None
    tz: zoneinfo.ZoneInfo
    run: int
    started_at: int
    day0: date | None
    has_kickoff: bool
    end_day: int
    today: date
    now: int
    milestones: dict[str, int]  # done milestones: key -> completion instant (microseconds)
    targets: dict[str, int]
    ttv_target: int | None
    churned_at: int | None = None
    expansion_amount: float = 0.0
    expansions: int = 0
    renewals: int = 0
    variants: dict[str, str] = field(default_factory=dict)

    def local(self, micros: int) -> date:
        """The local date of an instant; remembered, as a report asks for the same ones often."""
        found = self._local_dates.get(micros)
        if found is None:
            found = self._local_dates[micros] = from_micros(micros).astimezone(self.tz).date()
        return found

    @cached_property
    def _local_dates(self) -> dict[int, date]:
        return {}

    @cached_property
    def memo(self) -> dict[Any, Any]:
        """Figures of this run that several analytics ask for (its TTV observation, funnel
        statuses, activation), worked out once. A record never changes, so neither do they."""
        return {}

    @cached_property
    def signed_on(self) -> date:
        return self.local(self.started_at)

    @cached_property
    def done_dates(self) -> dict[str, date]:
        """The local date of each done milestone (asked for many times a report)."""
        return {key: self.local(at) for key, at in self.milestones.items()}

    def done_on(self, milestone: str) -> date | None:
        return self.done_dates.get(milestone)

    def local_day(self, on: date) -> int | None:
        """The local day number of a date (day 0 is the kickoff's date)."""
        return None if self.day0 is None else (on - self.day0).days

    def day_start(self, day: int) -> int | None:
        """The first instant of local day `day`."""
        if self.day0 is None:
            return None
        found = self._day_starts.get(day)
        if found is None:
            moment = datetime.combine(self.day0 + timedelta(days=day), datetime.min.time(),
                                      self.tz)
            found = self._day_starts[day] = to_micros(moment)
        return found

    @cached_property
    def _day_starts(self) -> dict[int, int]:
        return {}

    @cached_property
    def cohort(self) -> str | None:
        """The onboarding cohort: the local month of day 0 (the kickoff's, or the contract's on
        a track without a kickoff)."""
        return None if self.day0 is None else f"{self.day0.year:04d}-{self.day0.month:02d}"

    @cached_property
    def censoring(self) -> tuple[date, str]:
        """The date this run stops being watched, and why: the earliest of today, its end day
        and its churn (on a tie, the first of those)."""
        candidates = [(self.today, "now")]
        if self.day0 is not None:
            candidates.append((self.day0 + timedelta(days=self.end_day), "end_day"))
        if self.churned_at is not None:
            candidates.append((self.local(self.churned_at), "churn"))
        return min(candidates, key=lambda c: c[0])


def load_runs(database: Database, playbook: CompiledPlaybook, now: int) -> list[RunRecord]:
    """Every account's current run at `now`, outcomes included, in account id order."""
    from firstvalue.metrics.outcomes import outcome_events

    with database.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, traits, state, change_seq, evaluated_seq, playbook_version, "
            "next_wake_at FROM accounts ORDER BY id")).all()
    states: dict[str, _StoredState] = {}
    stale = []
    for account_id, _, state, change_seq, evaluated_seq, version, wake in rows:
        if state is None or version != playbook.version or evaluated_seq < change_seq:
            stale.append(account_id)
            continue
        decoded = _decode_state(state)
        # A state without a run that was due to wake by `now` may have a run by then: a
        # contract dated ahead starts its run when its time comes.
        waking = decoded.run is None and wake is not None and wake <= now
        if decoded.error is not None or waking or not decoded.holds_at(now):
            stale.append(account_id)
        else:
            states[account_id] = decoded
    if stale:
        from firstvalue.runtime.evaluation import evaluate_accounts

        for fresh in evaluate_accounts(database, playbook, now, stale):
            states[fresh.id] = msgspec.convert(fresh.as_json(), _StoredState)

    variants = _assignments(database, now)
    outcomes = outcome_events(database, playbook, now)
    records = []
    for account_id, traits, *_ in rows:
        state = states.get(account_id)
        if state is None:
            continue
        record = run_from_state(state, _use_case(traits, now), playbook, now,
                                variants.get(account_id, {}), outcomes.get(account_id, ()))
        if record is not None:
            records.append(record)
    return records


def _assignments(database: Database, now: int) -> dict[str, dict[str, str]]:
    """The variants recorded by `now`: an account assigned later was in no variant then."""
    from firstvalue.runtime.experiments import recorded_variants

    with database.engine.connect() as conn:
        return recorded_variants(conn, assigned_by=now)


def _use_case(traits: str, now: int) -> str | None:
    """The `use_case` trait as of `now`, from the stamped traits: each call that set it is
    `[ts, message id, value, received at]`, in time order (see store/traits.py)."""
    for call in reversed(_decode_use_case(traits).use_case):
        if len(call) > 2 and call[0] <= now:
            return _text(call[2])
    return None


def run_from_state(state: _StoredState, use_case: str | None, playbook: CompiledPlaybook,
                   now: int, variants: dict[str, str] | None = None,
                   outcomes: Sequence[tuple[str, int, float]] = ()) -> RunRecord | None:
    """The run of a stored state, cut back to `now`, with its variants and its outcomes
    ((kind, time, amount) of churn, expansion and renewal events); None for an account with no
    run started by then."""
    from firstvalue.metrics.outcomes import summarize_outcomes

    run = state.run
    if run is None:
        return None
    started_at = _instant(run.started_at)
    if started_at > now:
        return None
    tz = zone(state.timezone or "UTC") or UTC_ZONE
    track = _track(playbook, state.track)
    has_kickoff = track.kickoff if track is not None else True
    kickoff = _instant(state.kickoff_at) if state.kickoff_at else None
    if has_kickoff:
        day0 = None if kickoff is None or kickoff > now else _local(kickoff, tz)
    else:
        day0 = _local(started_at, tz)
    milestones = {}
    for milestone in state.milestones:
        if milestone.status == "done" and milestone.completed_at:
            at = _instant(milestone.completed_at)
            if at <= now:
                milestones[milestone.key] = at
    return RunRecord(
        account_id=state.id, segment=state.segment, segment_at_kickoff=state.segment_at_kickoff,
        tier=state.tier, track=state.track,
        use_case=use_case, tz=tz, run=run.number, started_at=started_at, day0=day0,
        has_kickoff=has_kickoff, end_day=run.end_day or (track.end_day if track else 90),
        today=_local(now, tz), now=now, milestones=milestones,
        targets=dict(track.targets) if track else {},
        ttv_target=track.ttv_target if track else state.ttv_target_days,
        variants=variants or {}, **summarize_outcomes(outcomes, started_at, now))


def _track(playbook: CompiledPlaybook, key: str | None) -> Any:
    for track in playbook.loaded.model.tracks:
        if track.key == key:
            return track
    return None


def _instant(text: str) -> int:
    return to_micros(datetime.fromisoformat(text))


def _local(micros: int, tz: zoneinfo.ZoneInfo) -> date:
    return from_micros(micros).astimezone(tz).date()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def group_key(record: RunRecord, by: str) -> str:
    """The group a run falls in for `--by`."""
    if by == "cohort":
        return record.cohort or "no day 0 yet"
    value = getattr(record, by)
    return "unknown" if value is None else str(value)


GROUPINGS = ("segment", "segment_at_kickoff", "tier", "track", "use_case", "cohort")
SEGMENT_ORDER = ("smb", "mid_market", "enterprise")


def group_order(keys: Sequence[str], by: str) -> list[str]:
    """Groups in the order a reader expects: segments by size, the rest sorted."""
    if by in ("segment", "segment_at_kickoff"):
        return sorted(keys, key=lambda k: (SEGMENT_ORDER.index(k) if k in SEGMENT_ORDER
                                           else len(SEGMENT_ORDER), k))
    return sorted(keys, key=lambda k: (k in ("unknown", "no day 0 yet"), k))
