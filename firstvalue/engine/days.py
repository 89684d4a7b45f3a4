"""Local calendar days: the customer's days, not the server's (shared/DESIGN.md "Time")."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

from firstvalue.clock import from_micros, to_micros


@lru_cache(maxsize=1024)
def zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        return None


def local_date(micros: int, tz: zoneinfo.ZoneInfo) -> date:
    return datetime.fromtimestamp(micros // 1_000_000, tz).date()


def days_between(start: date, end: date) -> int:
    """Whole local days from `start` to `end`: a difference of dates, never hours / 24."""
    return (end - start).days


def next_local_midnight(micros: int, tz: zoneinfo.ZoneInfo) -> int:
    """The first instant of the next local date after `micros`."""
    tomorrow = local_date(micros, tz) + timedelta(days=1)
    return start_of_local_day(tomorrow, tz)


def start_of_local_day(day: date, tz: zoneinfo.ZoneInfo) -> int:
    # Midnight can fall in a daylight-saving gap (some zones switch at 00:00); fold=0 and a
    # round trip through UTC give the first instant that really exists on that date.
    moment = datetime.combine(day, time(0), tz)
    utc = moment.astimezone(UTC)
    if utc.astimezone(tz).date() != day:
        utc = datetime.combine(day, time(1), tz).astimezone(UTC)
    return to_micros(utc)


def local_isoformat(micros: int, tz: zoneinfo.ZoneInfo) -> str:
    return from_micros(micros).astimezone(tz).isoformat()
