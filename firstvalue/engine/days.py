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
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        # OSError: a name such as "America" is a folder of the zone database, not a zone.
        return None


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_BUCKET = 900  # seconds: zones change their offset on quarter hours, if at all
_OFFSETS: dict[tuple[str, int], int] = {}


def local_date(micros: int, tz: zoneinfo.ZoneInfo) -> date:
    """The local calendar date of an instant.

    The engine asks this hundreds of times an evaluation, so the zone's offset is cached per
    quarter hour, and only where it is the same at both ends of that quarter hour.
    """
    seconds = micros // 1_000_000
    key = (tz.key, seconds // _BUCKET)
    offset = _OFFSETS.get(key)
    if offset is None:
        start = key[1] * _BUCKET
        first = datetime.fromtimestamp(start, tz).utcoffset()
        last = datetime.fromtimestamp(start + _BUCKET - 1, tz).utcoffset()
        if first != last or first is None:
            return datetime.fromtimestamp(seconds, tz).date()
        offset = int(first.total_seconds())
        if len(_OFFSETS) > 500_000:
            _OFFSETS.clear()
        _OFFSETS[key] = offset
    return date.fromordinal(_EPOCH_ORDINAL + (seconds + offset) // 86_400)


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
