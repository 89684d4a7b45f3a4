"""Tier routing: which team member takes a new account. Pure: the roster, its loads and `now`
come in, a choice and its reason go out.

A pooled or dedicated account goes to the member of the model's role with the lowest load
relative to capacity; ties go to the member whose working day overlaps the account's most,
then in turn (the one assigned to least recently). A member who is away, or full, takes no new
account.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime

from firstvalue.engine.days import zone

WORKDAY = (9, 17)  # local hours a person and a customer are taken to work
DAY_SECONDS = 86_400


@dataclass(frozen=True)
class Member:
    handle: str
    email: str
    role: str
    capacity: int
    timezone: str
    away_from: int | None = None
    away_until: int | None = None
    cover: str | None = None
    last_assigned_at: int | None = None
    load: int = 0

    def is_away(self, now: int) -> bool:
        if self.away_from is None or self.away_from > now:
            return False
        return self.away_until is None or now < self.away_until


@dataclass(frozen=True)
class Choice:
    owner: Member | None
    reason: str


def choose_owner(members: list[Member], role: str, account_timezone: str | None,
                 now: int) -> Choice:
    """The member of `role` who takes the next account, or None with why nobody can."""
    staff = [m for m in members if m.role == role]
    if not staff:
        return Choice(None, f"the team has no {role} on its roster")
    available = [m for m in staff if not m.is_away(now) and m.load < m.capacity]
    if not available:
        states = ", ".join(f"{m.handle} " + ("away" if m.is_away(now) else
                                              f"full ({m.load}/{m.capacity})")
                           for m in sorted(staff, key=lambda m: m.handle))
        return Choice(None, f"no {role} has capacity: {states}")

    def rank(member: Member) -> tuple[float, int, int, str]:
        return (member.load / member.capacity,
                -overlap_hours(member.timezone, account_timezone, now),
                member.last_assigned_at if member.last_assigned_at is not None else -1,
                member.handle)

    chosen = min(available, key=rank)
    return Choice(chosen, f"{role} {chosen.handle}: the lowest load relative to capacity "
                          f"({chosen.load}/{chosen.capacity} before this account)")


def overlap_hours(first: str | None, second: str | None, now: int) -> int:
    """Whole hours the two zones' working days (09:00 to 17:00) share around `now`.

    A working day can cross midnight UTC (Tokyo's is 00:00 to 08:00 UTC, Honolulu's 19:00 to
    03:00), so the second is also tried a day earlier and a day later.
    """
    start_a, end_a = _workday_utc(first, now)
    start_b, end_b = _workday_utc(second, now)
    return max(max(0, min(end_a, end_b + shift) - max(start_a, start_b + shift))
               for shift in (-DAY_SECONDS, 0, DAY_SECONDS)) // 3600


def _workday_utc(name: str | None, now: int) -> tuple[int, int]:
    tz = zone(name) if name else None
    offset = datetime.fromtimestamp(now // 1_000_000, tz or zoneinfo.ZoneInfo("UTC")) \
        .utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    # Placed on one line of UTC seconds of the day, so two zones' days can be compared.
    return WORKDAY[0] * 3600 - seconds, WORKDAY[1] * 3600 - seconds
