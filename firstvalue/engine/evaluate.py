"""Evaluating one account: the whole state from the facts, the playbook and `now`."""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from dataclasses import dataclass, field, fields, replace
from datetime import date, timedelta
from typing import Any

from firstvalue.engine.anchors import Kickoff, Run, find_kickoff, find_runs
from firstvalue.engine.compiled import CompiledPlaybook, CompiledTrack
from firstvalue.engine.days import (
    days_between,
    local_date,
    local_isoformat,
    next_local_midnight,
    start_of_local_day,
)
from firstvalue.engine.days import zone as find_zone
from firstvalue.engine.facts import AccountFacts, EventFact, as_number, by_order
from firstvalue.engine.handoff import HandoffError, check_handoff, missing_fields
from firstvalue.engine.rules import PlannedAction, RuleContext, RulePlan, plan_rules
from firstvalue.engine.stalls import Episode, StallContext, detect_stalls, plan_interventions
from firstvalue.store.traits import traits_at

UTC_ZONE = zoneinfo.ZoneInfo("UTC")


@dataclass(frozen=True)
class MilestoneStatus:
    key: str
    name: str
    status: str  # "done" or "open"
    completed_at: str | None
    local_day: int | None
    target_day: int | None
    due_on: str | None
    on_time: bool | None
    overdue_days: int | None
    severely_overdue: bool
    evidence: str | None


    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _MILESTONE_FIELDS}


_MILESTONE_FIELDS = tuple(f.name for f in fields(MilestoneStatus))


@dataclass(frozen=True)
class Phase:
    from_: str
    to: str
    days: int | None
    out_of_order: bool

    def as_json(self) -> dict[str, Any]:
        return {"from": self.from_, "to": self.to, "days": self.days,
                "out_of_order": self.out_of_order}


@dataclass(frozen=True)
class AccountState:
    id: str
    name: str | None
    segment: str | None
    tier: int | None
    track: str | None
    timezone: str
    timezone_is_default: bool
    owner: str | None
    arr: float | None
    playbook_version: str
    evaluated_at: str
    run: dict[str, Any] | None
    contract_signed_at: str | None
    kickoff_at: str | None
    kickoff_source: str | None
    day0: str | None
    day: int | None
    milestones: tuple[MilestoneStatus, ...]
    current_milestone: str | None
    ttv_days: int | None
    ttv_target_days: int | None
    ttv_on_time: bool | None
    phases: tuple[Phase, ...]
    next_wake_at: int | None
    stalls: tuple[Any, ...] = field(default=())
    actions: tuple[Any, ...] = field(default=())
    planned: tuple[PlannedAction, ...] = field(default=(), repr=False)
    episodes: tuple[Episode, ...] = field(default=(), repr=False)
    next_event_at: str | None = None  # the first event dated after the evaluation, if any
    handoff: dict[str, Any] | None = None  # complete, completed_at, missing
    segment_at_kickoff: str | None = None  # the segment when day 0 came (reports group by it)
    path: str | None = None  # the onboarding path the use case chose
    next_scheduled: dict[str, Any] | None = None  # the next rule to come due: rule, due_at

    @property
    def run_ended(self) -> bool:
        """Whether the current run is over (completed, or past its end day)."""
        return bool(self.run) and self.run.get("status") != "active"

    def as_json(self) -> dict[str, Any]:
        # Built field by field: dataclasses.asdict deep-copies, which cost more than the
        # evaluation itself on a full tick.
        data = {name: getattr(self, name) for name in _STATE_FIELDS}
        data["run"] = dict(self.run) if self.run is not None else None
        data["milestones"] = [m.as_json() for m in self.milestones]
        data["phases"] = [p.as_json() for p in self.phases]
        data["stalls"] = list(self.stalls)
        data["actions"] = list(self.actions)
        return data


_STATE_FIELDS = tuple(f.name for f in fields(AccountState)
                      if f.name not in ("next_wake_at", "planned", "episodes"))


def evaluate_account(facts: AccountFacts, playbook: CompiledPlaybook, now: int) -> AccountState:
    """The state of one account at `now` (microseconds, UTC). Pure: no clock, no I/O."""
    stamped = traits_at(facts.traits, now)
    traits = {key: entry[0] for key, entry in stamped.items()}
    tz, tz_name, tz_default = _timezone_of(traits, playbook)
    # The use case of the handoff (else the trait) picks the onboarding path: its own
    # milestone definitions and templates.
    compiled_track = playbook.on_path(playbook.choose_track(traits), _use_case(facts, traits, now))

    events = _index_events(facts.events, now)
    all_runs = find_runs(events, stamped, playbook, tz)
    runs = [run for run in all_runs if run.started_at <= now]
    # A contract dated ahead (a `contract_signed_at` trait) starts its run when that time comes.
    future_starts = [run.started_at for run in all_runs if run.started_at > now]
    run = runs[-1] if runs else None
    if run is not None and run.counts_from is not None:
        events = {name: [e for e in group if e.ts >= run.counts_from]
                  for name, group in events.items()}

    has_kickoff = compiled_track.track.kickoff if compiled_track else True
    kickoff = find_kickoff(events, stamped, run, playbook, tz) if has_kickoff else None
    day0 = _day0(run, kickoff, has_kickoff, tz)
    today = local_date(now, tz)
    day = days_between(day0, today) if day0 else None

    milestones, completions = _milestones(compiled_track, events, facts.contacts, day0, day, tz)
    done = {m.key: m for m in milestones if m.status == "done"}
    current = next((m.key for m in milestones if m.status == "open"), None)
    ttv = _ttv(run, done.get(playbook.loaded.model.first_value), tz)
    track = compiled_track.track if compiled_track else None
    ttv_target = track.ttv_target if track else None
    arrivals = _arrivals(playbook, run, events, stamped, has_kickoff)
    plan = _plan(facts, playbook, compiled_track, traits, tz, run, kickoff, has_kickoff, day0,
                 events, completions, arrivals, now)
    run_info = _run_json(run, track, day, current, tz)
    finished = run_info is not None and run_info["status"] != "active"
    handoff = _handoff_status(facts, playbook, stamped, now)
    gated = track is not None and track.key in playbook.loaded.model.handoff.gate
    finished_at = _finished_at(track, day0, current, completions, tz) if finished else None
    episodes, interventions = _stalls(facts, playbook, compiled_track, traits, tz, run, day0,
                                      events, completions, arrivals, now, finished_at)
    # An event dated after `now` (history imported ahead of the clock a tick runs at) changes
    # the state when its time comes.
    next_event = min((e.ts for e in facts.events if e.ts > now), default=None)
    planned = plan.due + tuple(interventions)
    reminders_due: list[int] = []
    if gated and run is not None:
        # The handoff gate (shared/DESIGN.md "The default playbook"): the customer hears
        # nothing until the handoff is complete; the AE and then their manager are told.
        planned = _gate(planned, handoff[0], now, playbook.loaded.model.late_limit_hours)
        reminders, reminders_due = _handoff_reminders(
            facts, playbook, run, handoff[0], arrivals.get("contract_signed_known", 0), now, tz)
        planned += tuple(reminders)
    wakes = [w for w in (_next_wake(now, kickoff, day, tz, finished), plan.next_due_at,
                         min(future_starts, default=None), next_event,
                         min(reminders_due, default=None)) if w is not None]
    wake = min(wakes) if wakes else None

    return AccountState(
        id=facts.account_id,
        name=_text(traits.get("name")),
        segment=_text(traits.get("segment")),
        tier=playbook.choose_tier(traits),
        track=track.key if track else None,
        timezone=tz_name,
        timezone_is_default=tz_default,
        owner=_text(traits.get("owner")),
        arr=as_number(traits.get("arr"), from_text=True),
        playbook_version=playbook.version,
        evaluated_at=local_isoformat(now, UTC_ZONE),
        run=run_info,
        contract_signed_at=local_isoformat(run.started_at, tz) if run else None,
        kickoff_at=local_isoformat(kickoff.at, tz) if kickoff else None,
        kickoff_source=kickoff.source if kickoff else None,
        day0=day0.isoformat() if day0 else None,
        day=day,
        milestones=tuple(milestones),
        current_milestone=current,
        ttv_days=ttv,
        ttv_target_days=ttv_target,
        ttv_on_time=None if ttv is None or ttv_target is None else ttv <= ttv_target,
        phases=_phases(playbook, run, kickoff if kickoff and kickoff.at <= now else None,
                       has_kickoff, done, tz),
        next_wake_at=wake,
        next_scheduled=None if plan.next_rule is None or plan.next_due_at is None else {
            "rule": plan.next_rule, "due_at": local_isoformat(plan.next_due_at, tz)},
        planned=planned,
        stalls=tuple(e.as_json(facts.account_id, tz) for e in episodes),
        episodes=tuple(episodes),
        next_event_at=local_isoformat(next_event, tz) if next_event is not None else None,
        handoff=_handoff_json(handoff, tz, gated),
        path=compiled_track.path if compiled_track else None,
        segment_at_kickoff=_segment_at(facts, kickoff.at if kickoff and has_kickoff else
                                       (run.started_at if run else None), now),
    )


def _stalls(facts: AccountFacts, playbook: CompiledPlaybook, track: CompiledTrack | None,
            traits: dict[str, Any], tz: zoneinfo.ZoneInfo, run: Run | None, day0: date | None,
            events: dict[str, list[EventFact]], completions: dict[str, EventFact],
            arrivals: dict[str, int], now: int,
            finished_at: int | None) -> tuple[list[Episode], list[PlannedAction]]:
    """The run's stalls, and the interventions they start.

    Stalls belong to onboarding: once the run has finished (every milestone done, or past its
    end day), none opens, and those still open close at the finish. This also keeps a
    finished run's stored state true without waking it every day.
    """
    model = playbook.loaded.model
    if track is None or run is None or not model.stalls or day0 is None:
        return [], []
    if finished_at is not None:
        now = min(now, finished_at)
    context = StallContext(
        account_id=facts.account_id, traits=traits, tz=tz, day0=day0, now=now, events=events,
        milestones=completions, targets=track.track.targets,
        milestone_order=[m.key for m in track.milestones], contacts=facts.contacts,
        model=model, run=run.number, known_at=arrivals.get("day0_known", now),
        run_key=run.key,
        country=_text(traits.get("country")))
    episodes = detect_stalls(model.stalls, context)
    if finished_at is not None:
        episodes = [_closed_at_finish(e, finished_at) for e in episodes]
    return episodes, plan_interventions(episodes, model.interventions, context, track.key)


def _handoff_status(facts: AccountFacts, playbook: CompiledPlaybook,
                    stamped: dict[str, list[Any]], now: int) -> tuple[int | None, list[str]]:
    """When the handoff was complete (None: not by `now`) and the required fields it lacks.

    The record submitted over the API or the CLI counts; without one, a `handoff` trait
    holding the fields (as a CRM sends them with the deal) counts from the call that set it,
    judged by the same rules. A submission after `now` is not there yet.
    """
    settings = playbook.loaded.model.handoff
    required = [f.key for f in settings.fields if f.required]
    stored = facts.handoff
    if stored is not None and stored.get("submitted_at", 0) <= now:
        completed_at = stored.get("completed_at")
        missing = missing_fields(settings, stored["record"])
        if completed_at is not None and completed_at > now:
            # Only the latest record is kept: before its completion it counts as incomplete.
            return None, missing or required
        return completed_at, missing
    trait = stamped.get("handoff")
    if trait is None or not isinstance(trait[0], dict):
        return None, required
    try:
        _, missing = check_handoff(settings, trait[0])
    except HandoffError:
        return None, required
    return (None if missing else trait[1]), missing


def _use_case(facts: AccountFacts, traits: dict[str, Any], now: int) -> Any:
    stored = facts.handoff
    if stored is not None and stored.get("submitted_at", 0) <= now:
        chosen = stored["record"].get("use_case")
        if chosen:
            return chosen
    return traits.get("use_case")


def _segment_at(facts: AccountFacts, moment: int | None, now: int) -> str | None:
    """The `segment` trait as it was at day 0's moment (the kickoff, or the contract on a
    track without one); null before day 0 is known or reached."""
    if moment is None or moment > now:
        return None
    history = facts.traits.get("segment")
    if history is None:
        return None
    # Only the segment's history: traits_at reads each key on its own.
    return _text(traits_at({"segment": history}, moment).get("segment", [None])[0])


def _handoff_json(status: tuple[int | None, list[str]], tz: zoneinfo.ZoneInfo,
                  gated: bool) -> dict[str, Any]:
    completed_at, missing = status
    return {"complete": not missing and completed_at is not None,
            "completed_at": local_isoformat(completed_at, tz) if completed_at else None,
            "missing": missing, "gate": gated}


CUSTOMER_FACING = ("champion", "actor", None)


def _gate(planned: tuple[PlannedAction, ...], completed_at: int | None, now: int,
          late_limit_hours: int) -> tuple[PlannedAction, ...]:
    """Customer-facing actions wait for the handoff: none before it is complete, then each
    due no earlier than its completion, and judged late from then (shared/DESIGN.md "Time",
    rule 10).

    The gate holds only what would have been sent but for it: an action whose fact reached
    the engine past the late limit (history imported long after) is backfill whether or not
    it waited, and keeps its own times, so the outbox suppresses it.
    """
    kept = []
    released = completed_at is not None and completed_at <= now
    for action in planned:
        internal = action.kind not in ("email", "in_app") or action.to not in CUSTOMER_FACING
        if internal or (released and action.late_news(late_limit_hours)):
            kept.append(action)
        elif released:
            due = max(action.due_at, completed_at or 0)
            if action.unless_at is not None and action.unless_at <= due:
                # What it would have prompted happened while it waited: it is not sent.
                kept.append(replace(action, due_at=due, status="cancelled",
                                    reason_source="cancelled: held for the handoff, and its "
                                    "rule's condition was met before the handoff completed"))
                continue
            kept.append(replace(action, due_at=due, known_at=max(action.known_at, completed_at)))
    return tuple(kept)


def _handoff_reminders(facts: AccountFacts, playbook: CompiledPlaybook, run: Run,
                       completed_at: int | None, contract_known: int, now: int,
                       tz: zoneinfo.ZoneInfo) -> tuple[list[PlannedAction], list[int]]:
    """The AE's reminder and their manager's escalation while the handoff is incomplete:
    each due its hours after the contract, cancelled if the handoff was complete by then.

    The engine could act on a missing handoff only once it knew of the contract: a contract
    imported with history (`contract_known` long after a reminder came due) makes the
    reminder backfill, suppressed like any other action that late."""
    settings = playbook.loaded.model.handoff
    planned, upcoming = [], []
    for key, to, hours, template in (
            ("handoff.ae_reminder", "ae", settings.remind_ae_after_hours, "handoff_ae_reminder"),
            ("handoff.manager", "manager", settings.escalate_after_hours, "handoff_manager")):
        due = run.started_at + hours * 3_600_000_000
        if due > now:
            if completed_at is None or completed_at > due:
                upcoming.append(due)
            continue
        done = completed_at is not None and completed_at <= due
        why = (f"cancelled: the handoff was complete at {local_isoformat(completed_at, tz)}, "
               f"before the reminder came due" if done and completed_at is not None else
               f"{key}: the handoff is not complete {hours} hours after the contract")
        planned.append(PlannedAction(
            f"{facts.account_id}/{run.key}/{key}/1", key, "task", to, template, due,
            max(due, contract_known), "cancelled" if done else "due", why,
            {"handoff_due_hours": hours}, run=run.number,
            # Sent, and the handoff came in since: the task is resolved, as an alert whose
            # condition cleared.
            cleared=not done and completed_at is not None and completed_at <= now))
    return planned, upcoming


def _finished_at(track: Any, day0: date | None, current: str | None,
                 completions: dict[str, EventFact], tz: zoneinfo.ZoneInfo) -> int | None:
    """When a finished run finished: its last milestone, else the end of its end day."""
    if current is None and completions:
        return max(found.ts for found in completions.values())
    if day0 is None or track is None:
        return None
    return start_of_local_day(day0 + timedelta(days=track.end_day + 1), tz)


def _closed_at_finish(episode: Episode, finished_at: int) -> Episode:
    if episode.closed_at is not None and episode.closed_at <= finished_at:
        return episode
    return replace(episode, closed_at=finished_at,
                   evidence={**episode.evidence, "closed_by": None,
                             "closed_because": "the run finished"})


def _plan(facts: AccountFacts, playbook: CompiledPlaybook, track: CompiledTrack | None,
          traits: dict[str, Any], tz: zoneinfo.ZoneInfo, run: Run | None,
          kickoff: Kickoff | None, has_kickoff: bool, day0: date | None,
          events: dict[str, list[EventFact]], completions: dict[str, EventFact],
          arrivals: dict[str, int], now: int) -> RulePlan:
    if track is None or not track.rules:
        return RulePlan((), None)
    model = playbook.loaded.model
    context = RuleContext(
        account_id=facts.account_id, traits=traits, track=track.key, has_kickoff=has_kickoff,
        tz=tz, run=run, kickoff=kickoff if kickoff and kickoff.at <= now else None, day0=day0,
        events=events, milestones=completions, meanings=model.meanings,
        window=model.send_window, now=now, country=_text(traits.get("country")),
        arrivals=arrivals)
    return plan_rules(track.rules, context)


def _arrivals(playbook: CompiledPlaybook, run: Run | None, events: dict[str, list[EventFact]],
              stamped: dict[str, list[Any]], has_kickoff: bool) -> dict[str, int]:
    """When anchor facts happened and reached the engine: what rule timing is judged by.

    `day0_known` is when day 0 was: the kickoff's arrival, or on a track without a kickoff,
    whose days count from the contract, the contract's. Rules counting days since the
    kickoff and stall interventions are judged by it.
    """
    arrivals: dict[str, int] = {}
    anchors = playbook.loaded.model.anchors
    by_id = {e.message_id: e for group in events.values() for e in group}
    if run is not None:
        evidence = by_id.get(run.evidence or "")
        trait = stamped.get(anchors.contract_signed.trait)
        known = evidence.received_at if evidence else (_trait_arrival(trait) if trait else 0)
        arrivals["contract_signed_known"] = known
    names = playbook.kickoff_completed_names | playbook.kickoff_scheduled_names
    kickoff_events = [e for n in names for e in events.get(n, ())]
    booked = [e.ts for e in kickoff_events]
    known = [e.received_at for e in kickoff_events]
    trait = stamped.get(anchors.kickoff.trait)
    if trait:
        booked.append(trait[1])
        known.append(_trait_arrival(trait))
    if booked:
        arrivals["kickoff_booked"] = min(booked)
        arrivals["kickoff_known"] = min(known)
    day0_known = arrivals.get("kickoff_known" if has_kickoff else "contract_signed_known")
    if day0_known is not None:
        arrivals["day0_known"] = day0_known
    return arrivals


def _trait_arrival(stamped_trait: list[Any]) -> int:
    return stamped_trait[3]


def _timezone_of(traits: dict[str, Any],
                 playbook: CompiledPlaybook) -> tuple[zoneinfo.ZoneInfo, str, bool]:
    name = traits.get("timezone")
    tz = find_zone(name) if isinstance(name, str) else None
    if tz is not None:
        return tz, name, False
    fallback = playbook.loaded.model.timezone or "UTC"
    return find_zone(fallback) or UTC_ZONE, fallback, True


def _index_events(events: tuple[EventFact, ...], now: int) -> dict[str, list[EventFact]]:
    """Events up to `now`, by name, each list in time order (then message id)."""
    by_name: dict[str, list[EventFact]] = defaultdict(list)
    for event in events:
        if event.ts <= now:
            by_name[event.name].append(event)
    for group in by_name.values():
        group.sort(key=by_order)
    return by_name


def _day0(run: Run | None, kickoff: Kickoff | None, has_kickoff: bool,
          tz: zoneinfo.ZoneInfo) -> date | None:
    if not has_kickoff:
        return local_date(run.started_at, tz) if run else None
    return local_date(kickoff.at, tz) if kickoff else None


def _milestones(track: CompiledTrack | None, events: dict[str, list[EventFact]],
                contacts: dict[str, dict[str, Any]], day0: date | None, day: int | None,
                tz: zoneinfo.ZoneInfo) -> tuple[list[MilestoneStatus], dict[str, EventFact]]:
    if track is None:
        return [], {}
    targets = track.track.targets
    statuses = []
    completions = {}
    for milestone in track.milestones:
        found = milestone.detector.detect(events, contacts)
        if found is not None:
            completions[milestone.key] = found
        target = targets.get(milestone.key)
        statuses.append(_milestone_status(milestone.key, milestone.name, found, target, day0,
                                          day, tz))
    return statuses, completions


def _milestone_status(key: str, name: str, found: EventFact | None, target: int | None,
                      day0: date | None, day: int | None,
                      tz: zoneinfo.ZoneInfo) -> MilestoneStatus:
    due_on = (day0 + timedelta(days=target)).isoformat() if day0 and target is not None else None
    if found is not None:
        local_day = days_between(day0, local_date(found.ts, tz)) if day0 else None
        on_time = None if local_day is None or target is None else local_day <= target
        late_by = None if on_time is None else max(0, local_day - target)  # type: ignore[operator]
        return MilestoneStatus(key, name, "done", local_isoformat(found.ts, tz), local_day,
                               target, due_on, on_time, late_by, False, found.message_id)

    overdue = None if day is None or target is None else max(0, day - target)
    return MilestoneStatus(key, name, "open", None, None, target, due_on, None, overdue,
                           _severely_overdue(day, target), None)


def _severely_overdue(day: int | None, target: int | None) -> bool:
    """More than 50 % past the target: from the first day d with (d - T) / T > 0.5."""
    if day is None or target is None:
        return False
    if target == 0:
        return day >= 1
    return (day - target) * 2 > target


def _ttv(run: Run | None, first_value: MilestoneStatus | None,
         tz: zoneinfo.ZoneInfo) -> int | None:
    """Contract signed to first value, in local days; 0 when value came before the contract."""
    if run is None or first_value is None or first_value.completed_at is None:
        return None
    value_day = date.fromisoformat(first_value.completed_at[:10])
    return max(0, days_between(local_date(run.started_at, tz), value_day))


def _phases(playbook: CompiledPlaybook, run: Run | None, kickoff: Kickoff | None,
            has_kickoff: bool, done: dict[str, MilestoneStatus],
            tz: zoneinfo.ZoneInfo) -> tuple[Phase, ...]:
    """Days between consecutive checkpoints; a kickoff still ahead is not reached yet."""
    reached: dict[str, date | None] = {"contract_signed": local_date(run.started_at, tz)
                                       if run else None}
    if has_kickoff:
        reached["kickoff"] = local_date(kickoff.at, tz) if kickoff else None
    for key, status in done.items():
        reached[key] = date.fromisoformat(status.completed_at[:10])  # type: ignore[index]

    checkpoints = [c for c in playbook.loaded.model.phases if c != "kickoff" or has_kickoff]
    phases = []
    for start, end in zip(checkpoints, checkpoints[1:], strict=False):
        first, second = reached.get(start), reached.get(end)
        if first is None or second is None:
            phases.append(Phase(start, end, None, False))
            continue
        days = days_between(first, second)
        phases.append(Phase(start, end, max(0, days), days < 0))
    return tuple(phases)


def _run_json(run: Run | None, track: Any, day: int | None, current: str | None,
              tz: zoneinfo.ZoneInfo) -> dict[str, Any] | None:
    if run is None:
        return None
    end_day = track.end_day if track else 90
    if current is None:
        status = "completed"
    elif day is not None and day > end_day:
        status = "ended"
    else:
        status = "active"
    return {"number": run.number, "key": run.key,
            "started_at": local_isoformat(run.started_at, tz),
            "source": run.source, "deal_id": run.deal_id, "status": status,
            "end_day": end_day}


def _next_wake(now: int, kickoff: Kickoff | None, day: int | None, tz: zoneinfo.ZoneInfo,
               finished: bool) -> int | None:
    """When time alone next changes this state.

    A kickoff booked ahead becomes reached at its meeting time. While a run is active, every
    local midnight moves `day`, overdue counts and the run's status, so the account wakes then.
    A finished run (completed, or past its end day) no longer wakes each day: its stored `day`
    stays at the last evaluation, while read commands and the API, which evaluate at the time
    asked for, show today's.
    """
    wakes = []
    if kickoff is not None and kickoff.at > now:
        wakes.append(kickoff.at)
    if day is not None and not finished:
        wakes.append(next_local_midnight(now, tz))
    return min(wakes) if wakes else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)

