"""Rules: which actions and escalations are due for an account at `now`, and why.

Pure like the rest of the engine. A rule fires at its trigger (something happened, or a local
day since an anchor arrived) unless its condition already holds; each of its escalations comes
due later and is re-checked then: if the customer acted in the meantime it is cancelled, with
the reason. The runtime turns these plans into outbox rows; the store's unique key on each
action is what makes "once" hold, whatever the timing.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any

from firstvalue.clock import to_micros
from firstvalue.engine.anchors import Kickoff, Run
from firstvalue.engine.compiled import traits_match
from firstvalue.engine.days import local_date, local_isoformat
from firstvalue.engine.facts import EventFact, by_order
from firstvalue.playbook.model import WEEKDAYS, DayTrigger, Happening, Rule, SendWindow

HOUR = 3_600_000_000


@dataclass(frozen=True)
class PlannedAction:
    """One action the playbook asks for, with the key that makes it happen at most once."""

    key: str
    rule: str  # the rule's key, or `rule.escalation` for an escalation's actions
    kind: str
    to: str | None
    template: str | None
    due_at: int
    known_at: int  # when the fact that made it due reached the engine
    status: str  # "due", or "cancelled" for an escalation whose condition cleared in time
    # The reason and the facts are only written when the action is first recorded, so they may
    # be given as functions that build them then: most evaluations plan actions already stored.
    reason_source: str | Callable[[], str]
    facts_source: dict[str, Any] | Callable[[], dict[str, Any]]
    cleared: bool = False  # the condition cleared after the action came due
    actor: str | None = None
    run: int = 1
    unless_at: int | None = None  # when the rule's `unless` happened, after the trigger

    @property
    def reason(self) -> str:
        source = self.reason_source
        return source if isinstance(source, str) else source()

    @property
    def facts(self) -> dict[str, Any]:
        source = self.facts_source
        return source if isinstance(source, dict) else source()

    def late_news(self, late_limit_hours: int) -> bool:
        """Whether the fact that made it due reached the engine more than the late limit
        after its due time: backfill, recorded and not sent (shared/DESIGN.md "Time", 10)."""
        return self.known_at - self.due_at > late_limit_hours * HOUR


@dataclass(frozen=True)
class RulePlan:
    due: tuple[PlannedAction, ...]
    next_due_at: int | None
    next_rule: str | None = None  # the rule or escalation that comes due then


@dataclass
class RuleContext:
    """What rules are judged against: everything the evaluation already worked out."""

    account_id: str
    traits: Mapping[str, Any]
    track: str | None
    has_kickoff: bool
    tz: zoneinfo.ZoneInfo
    run: Run | None
    kickoff: Kickoff | None
    day0: date | None
    events: Mapping[str, Sequence[EventFact]]
    milestones: Mapping[str, EventFact]  # done milestones and their completing events
    meanings: Mapping[str, list[str]]
    window: SendWindow
    now: int
    country: str | None = None
    arrivals: dict[str, int] = field(default_factory=dict)


def plan_rules(rules: Sequence[Rule], context: RuleContext) -> RulePlan:
    """The actions due by `now` (or cancelled), and when the next one will come due."""
    if context.run is None:
        return RulePlan((), None)
    due: list[PlannedAction] = []
    upcoming: list[tuple[int, str]] = []
    for rule in rules:
        if not traits_match(rule.where, context.traits, context.track):
            continue
        for trigger in _triggers(rule, context):
            _plan_rule(rule, trigger, context, due, upcoming)
    if not upcoming:
        return RulePlan(tuple(due), None)
    next_at, next_rule = min(upcoming)
    return RulePlan(tuple(due), next_at, next_rule)


@dataclass(frozen=True)
class Trigger:
    at: int
    known_at: int
    occurrence: str
    what: str
    evidence: str | None
    actor: str | None = None


def _plan_rule(rule: Rule, trigger: Trigger, context: RuleContext,
               due: list[PlannedAction], upcoming: list[tuple[int, str]]) -> None:
    done_before = _happened_at(rule.unless, context)
    if done_before is not None and done_before <= trigger.at:
        # The customer had already done it: nothing to say, now or when it comes due (so it
        # is not what comes next either).
        return
    if trigger.at > context.now:
        upcoming.append((trigger.at, rule.key))
        return
    run = context.run.number  # type: ignore[union-attr]
    base = f"{context.account_id}/{context.run.key}"  # type: ignore[union-attr]

    # The closure keeps only what it needs: not the context, which holds all the events.
    tz, unless = context.tz, rule.unless

    def facts() -> dict[str, Any]:
        return {"trigger": trigger.what, "trigger_at": local_isoformat(trigger.at, tz),
                "evidence": trigger.evidence, "unless": _describe(unless)}

    for index, spec in enumerate(rule.actions):
        suffix = f"/{index}" if index else ""
        due.append(PlannedAction(
            f"{base}/{rule.key}/{trigger.occurrence}{suffix}", rule.key, spec.kind, spec.to,
            spec.template, trigger.at, trigger.known_at, "due",
            f"rule {rule.key}: {trigger.what}" + _unless_text(rule.unless), facts,
            actor=trigger.actor, run=run, unless_at=done_before))

    for escalation in rule.escalations:
        if not traits_match(escalation.where, context.traits, context.track):
            continue
        unless = escalation.unless or rule.unless
        label = f"{rule.key}.{escalation.key}"
        if escalation.at is not None:
            due_at = _day_moment(escalation.at, context)
            if due_at is None:
                continue
        elif escalation.after is not None:
            due_at = _after(trigger.at, escalation.after.days, escalation.after.hours, context)
        else:
            due_at = trigger.at
        if due_at > context.now:
            upcoming.append((due_at, label))
            continue
        cleared_at = _happened_at(unless, context)
        cancelled = cleared_at is not None and cleared_at <= due_at
        for index, spec in enumerate(escalation.actions):
            suffix = f"/{index}" if index else ""
            escalation_facts = _escalation_facts(facts, escalation.key, due_at, context.tz)
            if cancelled:
                reason: str | Callable[[], str] = _cancel_reason(unless, cleared_at, due_at,
                                                                 context.tz)
            else:
                reason = f"escalation {label}: {trigger.what}" + _unless_text(unless)
            due.append(PlannedAction(
                f"{base}/{label}/{trigger.occurrence}{suffix}", label, spec.kind, spec.to,
                spec.template, due_at, trigger.known_at, "cancelled" if cancelled else "due",
                reason, escalation_facts,
                cleared=not cancelled and cleared_at is not None, actor=trigger.actor, run=run))


def _escalation_facts(facts: Callable[[], dict[str, Any]], key: str, due_at: int,
                      tz: zoneinfo.ZoneInfo) -> Callable[[], dict[str, Any]]:
    return lambda: {**facts(), "escalation": key, "due_at": local_isoformat(due_at, tz)}


def _cancel_reason(unless: Happening | None, cleared_at: int | None, due_at: int,
                   tz: zoneinfo.ZoneInfo) -> Callable[[], str]:
    happened = "was booked" if unless and unless.anchor == "kickoff" else "happened"

    def reason() -> str:  # worked out only when needed, as every reason is
        came_due = "just as the escalation came due" if cleared_at == due_at else \
            f"before the escalation came due at {local_isoformat(due_at, tz)}"
        return (f"cancelled: {_describe(unless)} {happened} at "
                f"{local_isoformat(cleared_at or 0, tz)}, {came_due}")

    return reason


def _triggers(rule: Rule, context: RuleContext) -> list[Trigger]:
    if rule.at is not None:
        moment = _day_moment(rule.at, context)
        if moment is None:
            return []
        since = rule.at.since
        if since == "kickoff" and not context.has_kickoff:
            # Day 0 of a track without a kickoff is the contract's (shared/DESIGN.md "Time").
            since = "contract signed (day 0 of a track without kickoff)"
        what = (f"day {rule.at.day}" if rule.at.day is not None else f"{rule.at.hours} hours") \
            + f" since {since}"
        return [Trigger(moment, _anchor_known_at(rule.at.since, context), "1", what, None)]

    happening = rule.on
    assert happening is not None
    if happening.anchor == "contract_signed":
        run = context.run
        return [Trigger(run.started_at, _anchor_known_at("contract_signed", context), "1",  # type: ignore[union-attr]
                        "contract signed", run.evidence)]  # type: ignore[union-attr]
    if happening.anchor == "kickoff":
        kickoff = context.kickoff
        if kickoff is None or not context.has_kickoff:
            return []
        return [Trigger(kickoff.at, _anchor_known_at("kickoff", context), "1", "kickoff",
                        kickoff.evidence)]
    if happening.milestone is not None:
        found = context.milestones.get(happening.milestone)
        if found is None:
            return []
        return [_in_run(Trigger(found.ts, found.received_at, "1",
                                f"milestone {happening.milestone} done", found.message_id,
                                found.actor), context)]

    events = _matching_events(happening, context)
    if rule.once == "run":
        events = events[:1]
    return [_in_run(Trigger(e.ts, e.received_at, "1" if rule.once == "run" else e.message_id,
                            f"event {e.name!r}", e.message_id, e.actor), context)
            for e in events]


def _in_run(trigger: Trigger, context: RuleContext) -> Trigger:
    """Something that happened before the contract (a trial's workspace) acts when the run
    starts, and is known no earlier than the contract is."""
    run = context.run
    assert run is not None
    if trigger.at >= run.started_at:
        return trigger
    known = max(trigger.known_at, _anchor_known_at("contract_signed", context))
    return Trigger(run.started_at, known, trigger.occurrence,
                   trigger.what + " (before the contract)", trigger.evidence, trigger.actor)


def _matching_events(happening: Happening, context: RuleContext) -> list[EventFact]:
    names = context.meanings.get(happening.meaning, []) if happening.meaning else \
        [happening.event]
    found = [e for name in names for e in context.events.get(name or "", ())]
    found.sort(key=by_order)
    return found


def _happened_at(happening: Happening | None, context: RuleContext) -> int | None:
    """When the thing first happened (by its own time), or None if it has not."""
    if happening is None:
        return None
    if happening.milestone is not None:
        found = context.milestones.get(happening.milestone)
        return found.ts if found else None
    if happening.anchor == "contract_signed":
        return context.run.started_at if context.run else None
    if happening.anchor == "kickoff":
        return context.arrivals.get("kickoff_booked")
    events = _matching_events(happening, context)
    return events[0].ts if events else None


def _anchor_known_at(anchor: str, context: RuleContext) -> int:
    """When the anchor reached the engine (now, when that is not known). Days since the
    kickoff count from day 0, known when it was (see `evaluate._arrivals`)."""
    key = "day0_known" if anchor == "kickoff" else f"{anchor}_known"
    return context.arrivals.get(key, context.now)


def _day_moment(trigger: DayTrigger, context: RuleContext) -> int | None:
    """The instant a day trigger fires: the window's opening on that local day, or hours."""
    if trigger.since == "kickoff":
        if context.day0 is None:
            return None
        base_day = context.day0
        if context.kickoff is not None:
            base_instant = context.kickoff.at
        elif not context.has_kickoff:
            base_instant = context.run.started_at  # type: ignore[union-attr]
        elif trigger.hours is not None:
            return None  # hours since a kickoff that has not happened yet: wait for it
        else:
            base_instant = 0
    else:
        base_instant = context.run.started_at  # type: ignore[union-attr]
        base_day = local_date(base_instant, context.tz)
    if trigger.hours is not None:
        return base_instant + trigger.hours * HOUR
    assert trigger.day is not None
    if trigger.business_days:
        target = nth_business_day(base_day, trigger.day, context.country)
    else:
        target = base_day + timedelta(days=trigger.day)
    return window_opening(target, context.tz, context.window)


def _after(start: int, days: int | None, hours: int | None, context: RuleContext) -> int:
    if hours is not None:
        return start + hours * HOUR
    target = local_date(start, context.tz) + timedelta(days=days or 0)
    return window_opening(target, context.tz, context.window)


def window_opening(day: date, tz: zoneinfo.ZoneInfo, window: SendWindow) -> int:
    hour, minute = (int(part) for part in window.start.split(":"))
    return to_micros(datetime.combine(day, time(hour, minute), tz))


def nth_business_day(start: date, count: int, country: str | None) -> date:
    """Business day N: the N-th Monday-to-Friday non-holiday strictly after `start`."""
    day = start
    found = 0
    while found < count:
        day += timedelta(days=1)
        if day.weekday() < 5 and day not in _holidays(country, day.year):
            found += 1
    return day


@lru_cache(maxsize=256)
def _holidays(country: str | None, year: int) -> frozenset[date]:
    if not country:
        return frozenset()
    import holidays

    try:
        return frozenset(holidays.country_holidays(country.upper(), years=year))
    except (NotImplementedError, KeyError):
        return frozenset()


def next_window_opening(moment: int, tz: zoneinfo.ZoneInfo, window: SendWindow) -> int:
    """`moment` itself if it is inside the send window, else the window's next opening."""
    local = datetime.fromtimestamp(moment // 1_000_000, tz)
    start = time(*(int(p) for p in window.start.split(":")))
    end = time(*(int(p) for p in window.end.split(":")))
    allowed = {WEEKDAYS.index(day) for day in window.weekdays}
    day = local.date()
    if day.weekday() in allowed and start <= local.time() < end:
        return moment
    if local.time() >= start:
        day += timedelta(days=1)
    while day.weekday() not in allowed:
        day += timedelta(days=1)
    return window_opening(day, tz, window)


def _describe(happening: Happening | None) -> str | None:
    if happening is None:
        return None
    for name in ("milestone", "anchor", "meaning", "event"):
        value = getattr(happening, name)
        if value is not None:
            return f"{name} {value}"
    return None


def _unless_text(happening: Happening | None) -> str:
    """What has not happened, which would have stopped the action: "milestone
    data_connected not done", "no account_churned yet"."""
    if happening is None:
        return ""
    if happening.milestone is not None:
        return f", milestone {happening.milestone} not done"
    for name in ("anchor", "meaning", "event"):
        value = getattr(happening, name)
        if value is not None:
            return f", no {value} yet"
    return ""
