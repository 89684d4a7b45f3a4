"""Stalls: when an account stopped progressing, why, and which intervention fits.

Pure like the rest of the engine. Every episode is worked out from the events and `now` each
time (shared/DESIGN.md "Time", rules 4 to 6): it opens at a local moment, closes when its
condition clears, and one continuous condition is one episode. The runtime compares these with
the episodes it recorded before, which is how a late event dated before a stall shows that the
stall was wrong (the recorded episode is then retracted).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from firstvalue.engine.compiled import traits_match
from firstvalue.engine.days import local_date, local_isoformat, start_of_local_day
from firstvalue.engine.facts import EventFact, by_order
from firstvalue.engine.rules import PlannedAction, nth_business_day
from firstvalue.playbook.model import Intervention, Playbook, StallRule

HOUR = 3_600_000_000
DAY = 24 * HOUR


@dataclass(frozen=True)
class Episode:
    rule: str
    kind: str
    milestone: str | None
    opened_at: int
    closed_at: int | None
    diagnosis: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return f"{self.rule}:{self.milestone or ''}:{self.opened_at}"

    def as_json(self, account_id: str, tz: zoneinfo.ZoneInfo) -> dict[str, Any]:
        return {"account_id": account_id, "rule": self.rule, "kind": self.kind,
                "milestone": self.milestone, "diagnosis": self.diagnosis,
                "opened_at": local_isoformat(self.opened_at, tz),
                "closed_at": local_isoformat(self.closed_at, tz) if self.closed_at else None,
                "status": "open" if self.closed_at is None else "closed",
                "evidence": self.evidence}


@dataclass
class StallContext:
    account_id: str
    traits: Mapping[str, Any]
    tz: zoneinfo.ZoneInfo
    day0: date | None
    now: int
    events: Mapping[str, Sequence[EventFact]]
    milestones: Mapping[str, EventFact]  # done milestones and their completing events
    targets: Mapping[str, int]
    milestone_order: Sequence[str]
    contacts: Mapping[str, Mapping[str, Any]]
    model: Playbook
    run: int
    known_at: int
    country: str | None = None
    run_key: str = "contract"
    # The events of each set of meanings, merged and in time order: asked for again and again.
    _by_meanings: dict[tuple[str, ...], list[EventFact]] = field(default_factory=dict,
                                                                 repr=False)


def detect_stalls(rules: Sequence[StallRule], context: StallContext) -> list[Episode]:
    """Every stall episode of the run up to `now`, in the order they opened."""
    if context.day0 is None:
        return []
    episodes: list[Episode] = []
    for rule in rules:
        for milestone, opened, closed, evidence in _episodes_of(rule, context):
            if opened > context.now:
                continue
            closed = closed if closed is not None and closed <= context.now else None
            diagnosis, signals = diagnose(rule.kind, opened, context)
            episodes.append(Episode(rule.key, rule.kind, milestone, opened, closed, diagnosis,
                                    {**evidence, **signals}))
    episodes.sort(key=lambda e: (e.opened_at, e.rule, e.milestone or ""))
    return episodes


def _episodes_of(rule: StallRule, context: StallContext) -> Iterator[tuple[Any, ...]]:
    if rule.kind == "inactivity":
        yield from _inactivity(rule, context)
    elif rule.kind == "overdue":
        yield from _overdue(rule, context)
    elif rule.kind == "missed_calls":
        yield from _missed_calls(rule, context)
    elif rule.kind == "champion_silent":
        yield from _champion_silent(rule, context)
    elif rule.kind == "custom":
        yield from _custom(rule, context)


def _custom(rule: StallRule, context: StallContext) -> Iterator[tuple[Any, ...]]:
    """A user-defined stall: from when its condition (written like a milestone's) is first
    true, until its `until` happens."""
    from firstvalue.engine.conditions import compile_condition

    assert rule.when is not None
    found = compile_condition(rule.when, context.model.meanings).detect(context.events,
                                                                       context.contacts)
    if found is None:
        return
    closing = None
    if rule.until is not None:
        if rule.until.milestone is not None:
            done = context.milestones.get(rule.until.milestone)
            closing = done if done is not None and done.ts > found.ts else None
        else:
            names = (context.model.meanings.get(rule.until.meaning or "", [])
                     if rule.until.meaning else [rule.until.event or ""])
            later = sorted((e for n in names for e in context.events.get(n, ())
                            if e.ts > found.ts), key=by_order)
            closing = later[0] if later else None
    yield (None, found.ts, closing.ts if closing else None,
           {"evidence": found.message_id, "closed_by": closing.message_id if closing else None})


def _names(context: StallContext, meaning: str) -> list[str]:
    return context.model.meanings.get(meaning, [])


def _events(context: StallContext, *meanings: str) -> list[EventFact]:
    """The events of these meanings in time order (shared: do not change the list)."""
    found = context._by_meanings.get(meanings)
    if found is not None:
        return found
    groups = [context.events[n] for m in meanings for n in _names(context, m)
              if n in context.events]
    if len(groups) == 1:
        found = groups[0]  # each name's events come in time order already
    else:
        found = [e for group in groups for e in group]
        found.sort(key=by_order)
    context._by_meanings[meanings] = found
    return found


def _inactivity(rule: StallRule, context: StallContext) -> Iterator[tuple[Any, ...]]:
    """No login for K consecutive local days, counted from day 0 (day 0 counts if it had none);
    raised at the local midnight that ends the K-th day, only if that is day N - 1 or earlier."""
    tz, day0, k = context.tz, context.day0, rule.days or 1
    assert day0 is not None
    day0_start = start_of_local_day(day0, tz)
    logins = [e for e in _events(context, context.model.login) if e.ts >= day0_start]
    close = _no_gap_within(k)
    today = local_date(context.now, tz)
    gap_start, previous, previous_counted = day0, None, True
    for login in [*logins, None]:
        if login is not None and previous is not None and login.ts - previous < close:
            previous, previous_counted = login.ts, False
            continue
        if not previous_counted and previous is not None:
            gap_start = local_date(previous, tz) + timedelta(days=1)
        login_day = local_date(login.ts, tz) if login is not None else None
        gap_end = (login_day - timedelta(days=1)) if login_day else today
        opened_day = _kth_day(gap_start, gap_end, k, rule.business_days, context.country)
        if opened_day is not None:
            raised_on = (opened_day - day0).days  # the day whose end raises it
            if rule.within_days is None or raised_on <= rule.within_days - 1:
                opened = start_of_local_day(opened_day + timedelta(days=1), tz)
                yield (None, opened, login.ts if login else None,
                       {"days_without_login": k, "since": gap_start.isoformat(),
                        "closed_by": login.message_id if login else None})
        if login is None or login_day is None:
            break
        gap_start, previous, previous_counted = login_day + timedelta(days=1), login.ts, True


def _no_gap_within(days: int) -> int:
    """An elapsed time short enough that two instants that far apart cannot have `days` whole
    local days between them, whatever the zone's offset did meanwhile (less than a day's
    change, with room to spare): activity that close together needs no calendar work."""
    return (days - 1) * DAY - 2 * HOUR


def _kth_day(start: date, end: date, k: int, business: bool, country: str | None) -> date | None:
    """The K-th (business) day of the gap from `start` to `end` inclusive, if it has one."""
    if end < start:
        return None
    if not business:
        day = start + timedelta(days=k - 1)
        return day if day <= end else None
    day = nth_business_day(start - timedelta(days=1), k, country)
    return day if day <= end else None


def _overdue(rule: StallRule, context: StallContext) -> Iterator[tuple[Any, ...]]:
    """A milestone more than `percent` % past its target: from the first day d with
    (d - T) / T > percent / 100 (for T = 0, from day 1), until it is done."""
    assert context.day0 is not None
    for key in context.milestone_order:
        target = context.targets.get(key)
        if target is None:
            continue
        first_day = 1 if target == 0 else target + (target * rule.percent) // 100 + 1
        opened = start_of_local_day(context.day0 + timedelta(days=first_day), context.tz)
        done = context.milestones.get(key)
        if done is not None and done.ts < opened:
            continue
        yield (key, opened, done.ts if done else None,
               {"target_day": target, "raised_on_day": first_day,
                "closed_by": done.message_id if done else None})


def _missed_calls(rule: StallRule, context: StallContext) -> Iterator[tuple[Any, ...]]:
    """M or more missed or rescheduled calls; a cancellation followed within the window by a
    new booking is one reschedule; the same call reported twice counts once."""
    incidents = call_incidents(context, rule.rebook_hours * HOUR)
    if len(incidents) < rule.count:
        return
    at, _, _ = incidents[rule.count - 1]
    completed = [e for e in _events(context, "call_completed") if e.ts > at]
    closing = completed[0] if completed else None
    yield (None, at, closing.ts if closing else None,
           {"incidents": [{"at": local_isoformat(t, context.tz), "what": what, "evidence": ref}
                          for t, what, ref in incidents[:rule.count]],
            "closed_by": closing.message_id if closing else None})


def call_incidents(context: StallContext, window: int) -> list[tuple[int, str, str]]:
    """Missed and rescheduled calls in time order: (time, what, message id)."""
    seen: set[tuple[str, str]] = set()

    def once(events: list[EventFact], what: str) -> list[EventFact]:
        kept = []
        for event in events:
            call = event.properties.get("call_id") or event.properties.get("start_time")
            key = (what, str(call)) if call is not None else (what, event.message_id)
            if key not in seen:
                seen.add(key)
                kept.append(event)
        return kept

    incidents = [(e.ts, "missed", e.message_id) for e in once(_events(context, "call_missed"),
                                                               "missed")]
    incidents += [(e.ts, "rescheduled", e.message_id)
                  for e in once(_events(context, "call_rescheduled"), "rescheduled")]
    bookings = _events(context, "call_scheduled")
    for cancel in once(_events(context, "call_cancelled"), "cancelled"):
        rebooked = any(cancel.ts < b.ts <= cancel.ts + window for b in bookings)
        if rebooked:
            incidents.append((cancel.ts, "rescheduled", cancel.message_id))
        elif cancel.ts + window <= context.now:
            incidents.append((cancel.ts, "missed", cancel.message_id))
    incidents.sort()
    return incidents


def _champion_silent(rule: StallRule, context: StallContext) -> Iterator[tuple[Any, ...]]:
    """No activity of the champions' own for more than D days: raised at the local midnight
    that ends the D-th whole day after their last activity (after day 0 when there was none;
    activity before day 0 counts too), closed by their next activity."""
    tz, day0, days = context.tz, context.day0, rule.days or 1
    assert day0 is not None
    champions = {user for user, t in context.contacts.items() if t.get("role") == "champion"}
    if not champions:
        return
    activity = sorted(champion_activity(rule, context, champions),
                      key=by_order)
    floor = start_of_local_day(day0, tz)
    close = _no_gap_within(days + 1)
    reference, last_ref, position = day0, None, 0
    while True:
        opened = max(floor, start_of_local_day(reference + timedelta(days=days + 1), tz))
        if position < len(activity) and activity[position].ts < opened:
            # Activity that follows the last too closely to leave a silence between them is
            # taken in one step.
            while (position + 1 < len(activity)
                   and activity[position + 1].ts - activity[position].ts < close):
                position += 1
            reference = local_date(activity[position].ts, tz)
            last_ref = activity[position].message_id
            position += 1
            continue
        if opened > context.now:
            return
        closing = activity[position] if position < len(activity) else None
        yield (None, opened, closing.ts if closing else None,
               {"silent_days": days, "last_activity": last_ref,
                "closed_by": closing.message_id if closing else None})
        if closing is None:
            return
        reference, last_ref = local_date(closing.ts, tz), closing.message_id
        position += 1


def champion_activity(rule: StallRule, context: StallContext,
                      champions: set[str]) -> list[EventFact]:
    """What counts as the champions' own activity: their logins and replies, and calls they
    attended. Not the engine's emails to them, not a colleague's login, not opens or clicks
    (unless the rule's `activity` names those meanings)."""
    found = []
    for meaning in rule.activity:
        for event in _events(context, meaning):
            if meaning == "call_completed":
                attendees = event.properties.get("attendees")
                if isinstance(attendees, list) and champions & {str(a) for a in attendees}:
                    found.append(event)
            elif event.actor in champions:
                found.append(event)
    return found


def diagnose(kind: str, at: int, context: StallContext) -> tuple[str, dict[str, Any]]:
    """The stall's pattern as the events up to `at` show it, with the signals behind it."""
    settings = context.model.diagnosis
    if kind == "champion_silent":
        return "champion_quiet", {}
    connected = context.milestones.get(settings.before_milestone)
    if connected is None or connected.ts > at:
        failures = [e for e in _events(context, *settings.blocker_meanings) if e.ts <= at]
        tickets = [e for e in _events(context, settings.ticket_meaning)
                   if e.ts <= at and e.properties.get("topic") in settings.blocker_topics]
        if failures or tickets:
            parts = [f"{len(failures)} failed connection attempt(s)"] if failures else []
            parts += [f"a {t.properties.get('topic')} ticket" for t in tickets[:2]]
            return "integration_blocker", {
                "signals": [e.message_id for e in [*failures, *tickets]],
                "evidence_summary": ", ".join(parts)}
    features = sorted({e.name for e in _events(context, settings.feature_meaning) if e.ts <= at})
    later = [key for key in context.milestone_order[1:]
             if key in context.milestones and context.milestones[key].ts <= at]
    if len(features) >= settings.scope_creep_features and not later:
        return "scope_creep", {"features": features}
    return "unknown", {}


def plan_interventions(episodes: Sequence[Episode], interventions: Sequence[Intervention],
                       context: StallContext, track: str | None) -> list[PlannedAction]:
    """The actions each opened episode starts, keyed by the episode so each fires once.

    An episode opening while another of the same diagnosis is still open starts nothing new:
    an account overdue on three milestones for one integration blocker gets one sandbox offer,
    not three.
    """
    planned = []
    for episode, spell_end in _first_of_each_spell(episodes):
        for intervention in interventions:
            if intervention.kinds and episode.kind not in intervention.kinds:
                continue
            if intervention.diagnosis and episode.diagnosis not in intervention.diagnosis:
                continue
            if not traits_match(intervention.where, context.traits, track):
                continue
            for index, spec in enumerate(intervention.actions):
                if spec.to == "ae" and not context.traits.get("ae"):
                    continue  # the AE is looped in only where the account names one
                label = f"stall.{intervention.key}"
                planned.append(PlannedAction(
                    f"{context.account_id}/{context.run_key}/{label}/{episode.identity}/{index}",
                    label, spec.kind, spec.to, spec.template, episode.opened_at,
                    context.known_at, "due", _stall_reason(episode, context.tz),
                    _stall_facts(episode, context), run=context.run,
                    # The spell is over (the account moved on, or the run ended): a task or
                    # alert it sent is resolved, as an alert whose condition cleared.
                    cleared=spell_end is not None and spell_end <= context.now))
    return planned


def _stall_reason(episode: Episode, tz: zoneinfo.ZoneInfo) -> Callable[[], str]:
    return lambda: (f"stall {episode.rule} ({episode.diagnosis}) opened at "
                    f"{local_isoformat(episode.opened_at, tz)}")


def _stall_facts(episode: Episode, context: StallContext) -> Callable[[], dict[str, Any]]:
    account_id, tz = context.account_id, context.tz
    return lambda: {"stall": {**episode.as_json(account_id, tz),
                              "evidence_summary": episode.evidence.get("evidence_summary"),
                              "features": episode.evidence.get("features", [])}}


def _first_of_each_spell(episodes: Sequence[Episode]) -> list[tuple[Episode, int | None]]:
    """The episodes that open when no other episode of their diagnosis is open, each with the
    end of the spell it opens (None while it lasts)."""
    chosen: list[tuple[Episode, int | None]] = []
    current: dict[str, int] = {}  # diagnosis -> index in `chosen` of its latest spell
    for episode in sorted(episodes, key=lambda e: (e.opened_at, e.rule, e.milestone or "")):
        diagnosis = episode.diagnosis
        if diagnosis in current:
            first, until = chosen[current[diagnosis]]
            if until is None or until > episode.opened_at:
                # The spell goes on; it lasts until the later of the two closes.
                if until is not None:
                    until = None if episode.closed_at is None else max(until, episode.closed_at)
                    chosen[current[diagnosis]] = (first, until)
                continue
        current[diagnosis] = len(chosen)
        chosen.append((episode, episode.closed_at))
    return chosen
