"""Anchors: the contract signing that starts a run, and the kickoff that day 0 counts from."""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from firstvalue.clock import to_micros
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.days import start_of_local_day
from firstvalue.engine.facts import EventFact, by_order


@dataclass(frozen=True)
class Run:
    """One onboarding of the account. Run 1 counts every event; a restart counts from itself."""

    number: int
    started_at: int
    source: str  # "event", "trait" or "restart"
    deal_id: str | None
    evidence: str | None  # the message id of the event that started it

    @property
    def counts_from(self) -> int | None:
        return None if self.number == 1 else self.started_at

    @property
    def key(self) -> str:
        """What names the run in action keys. Not its number: an older deal arriving late
        renumbers the runs, and the actions already taken must keep their keys."""
        return self.evidence or "contract"


@dataclass(frozen=True)
class Kickoff:
    at: int
    source: str  # "completed", "scheduled" or "trait"
    evidence: str | None


EARLIEST = date(1971, 1, 1)
LATEST = date(9000, 1, 1)


def parse_moment(value: Any, tz: zoneinfo.ZoneInfo) -> int | None:
    """A trait or property time: ISO 8601 with an offset, or local if it has none, or a date.

    Placeholders such as 0001-01-01 or 9999-12-31 (what many CRMs write for "no date") and
    anything unreadable count as no time at all.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return start_of_local_day(day, tz) if EARLIEST <= day <= LATEST else None
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    if not EARLIEST <= moment.date() <= LATEST:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return to_micros(moment)


def find_runs(events: Mapping[str, Sequence[EventFact]], traits: Mapping[str, list[Any]],
              playbook: CompiledPlaybook, tz: zoneinfo.ZoneInfo) -> list[Run]:
    """Every run, in time order: the first contract, each new deal, each explicit restart."""
    anchor = playbook.loaded.model.anchors.contract_signed
    starts: list[Run] = []
    seen_deals: set[str] = set()

    contracts = sorted((e for n in playbook.contract_names for e in events.get(n, ())),
                       key=by_order)
    for event in contracts:
        deal = event.properties.get(anchor.deal_property)
        deal_id = None if deal is None else str(deal)
        if starts and deal_id is not None and not seen_deals:
            # The first deal came without an id: the first id seen names that same deal.
            seen_deals.add(deal_id)
            continue
        if starts and (deal_id is None or deal_id in seen_deals):
            continue  # the same deal sent again
        if deal_id is not None:
            seen_deals.add(deal_id)
        starts.append(Run(0, event.ts, "event", deal_id, event.message_id))

    trait = traits.get(anchor.trait)
    signed = parse_moment(trait[0], tz) if trait else None
    if signed is not None and (not starts or signed < starts[0].started_at):
        first = starts[0] if starts else None
        # The trait and the first deal event describe the same signing: keep the earlier time.
        starts[:1] = [Run(0, signed, "trait", first.deal_id if first else None, None)]

    restarts = [e for n in playbook.restart_names for e in events.get(n, ())]
    starts += [Run(0, e.ts, "restart", None, e.message_id) for e in restarts]
    starts.sort(key=lambda run: run.started_at)
    return [Run(i + 1, r.started_at, r.source, r.deal_id, r.evidence)
            for i, r in enumerate(starts)]


def find_kickoff(events: Mapping[str, Sequence[EventFact]], traits: Mapping[str, list[Any]],
                 run: Run | None, playbook: CompiledPlaybook,
                 tz: zoneinfo.ZoneInfo) -> Kickoff | None:
    """The kickoff completed, else the meeting time of the kickoff booked last."""
    anchor = playbook.loaded.model.anchors.kickoff
    since = run.counts_from if run else None

    def in_run(ts: int) -> bool:
        return since is None or ts >= since

    completed = [e for n in playbook.kickoff_completed_names for e in events.get(n, ())
                 if in_run(e.ts)]
    if completed:
        first = min(completed, key=by_order)
        return Kickoff(first.ts, "completed", first.message_id)

    # A booking is (when it was booked, its id, the meeting time, where it came from).
    bookings: list[tuple[int, str, int, str, str | None]] = []
    for name in playbook.kickoff_scheduled_names:
        for event in events.get(name, ()):
            start = parse_moment(event.properties.get(anchor.start_property), tz)
            if start is not None and in_run(event.ts):
                bookings.append((event.ts, event.message_id, start, "scheduled",
                                 event.message_id))
    trait = traits.get(anchor.trait)
    if trait:
        start = parse_moment(trait[0], tz)
        if start is not None and in_run(trait[1]):
            bookings.append((trait[1], trait[2], start, "trait", None))
    if not bookings:
        return None
    latest = max(bookings)
    return Kickoff(latest[2], latest[3], latest[4])
