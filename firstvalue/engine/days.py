"""Local calendar days: the customer's days, not the server's (shared/DESIGN.md "Time")."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, time, timedelta, timezone
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
_OFFSETS: dict[str, dict[int, int]] = {}
_MIDNIGHTS: dict[tuple[int, str], int] = {}


def local_date(micros: int, tz: zoneinfo.ZoneInfo) -> date:
    """The local calendar date of an instant.

    The engine asks this hundreds of times an evaluation, so the zone's offset is cached per
    quarter hour, and only where it is the same at both ends of that quarter hour.
    """
    offset = _offset(micros // 1_000_000, tz)
    if offset is None:
        return datetime.fromtimestamp(micros // 1_000_000, tz).date()
    return date.fromordinal(_EPOCH_ORDINAL + (micros // 1_000_000 + offset) // 86_400)


def _offset(seconds: int, tz: zoneinfo.ZoneInfo) -> int | None:
    """The zone's UTC offset in seconds at an instant, or None in the quarter hour of a
    change (where the caller asks the zone itself)."""
    bucket = seconds // _BUCKET
    offsets = _OFFSETS.get(tz.key)
    if offsets is None:
        offsets = _OFFSETS.setdefault(tz.key, {})
    offset = offsets.get(bucket)
    if offset is None:
        start = bucket * _BUCKET
        first = datetime.fromtimestamp(start, tz).utcoffset()
        last = datetime.fromtimestamp(start + _BUCKET - 1, tz).utcoffset()
        if first != last or first is None:
            return None
        offset = int(first.total_seconds())
        if len(offsets) > 200_000:
            offsets.clear()
        offsets[bucket] = offset
    return offset


def days_between(start: date, end: date) -> int:
    """Whole local days from `start` to `end`: a difference of dates, never hours / 24."""
    return (end - start).days


def next_local_midnight(micros: int, tz: zoneinfo.ZoneInfo) -> int:
    """The first instant of the next local date after `micros`."""
    tomorrow = local_date(micros, tz) + timedelta(days=1)
    return start_of_local_day(tomorrow, tz)


def start_of_local_day(day: date, tz: zoneinfo.ZoneInfo) -> int:
    """The first instant of a local date (cached: the engine asks for the same few days of
    the same few zones over and over)."""
    key = (day.toordinal(), tz.key)
    found = _MIDNIGHTS.get(key)
    if found is None:
        if len(_MIDNIGHTS) > 200_000:
            _MIDNIGHTS.clear()
        found = _MIDNIGHTS[key] = _first_instant(day, tz)
    return found


def _first_instant(day: date, tz: zoneinfo.ZoneInfo) -> int:
    # Midnight can fall in a daylight-saving gap (some zones switch at 00:00); fold=0 and a
    # round trip through UTC give the first instant that really exists on that date.
    moment = datetime.combine(day, time(0), tz)
    utc = moment.astimezone(UTC)
    if utc.astimezone(tz).date() != day:
        utc = datetime.combine(day, time(1), tz).astimezone(UTC)
    return to_micros(utc)


def local_isoformat(micros: int, tz: zoneinfo.ZoneInfo) -> str:
    """The instant as local ISO 8601 with its offset, as `datetime.isoformat` writes it.

    Cached: an evaluation writes the same few instants (window openings, midnights, its
    events' times) into facts, reasons and the stored state several times over.
    """
    key = (micros, tz.key)
    text = _ISO_TEXTS.get(key)
    if text is None:
        if len(_ISO_TEXTS) > 100_000:
            _ISO_TEXTS.clear()
        text = _ISO_TEXTS[key] = _isoformat(micros, tz)
    return text


def _isoformat(micros: int, tz: zoneinfo.ZoneInfo) -> str:
    seconds, fraction = divmod(micros, 1_000_000)
    offset = _offset(seconds, tz)
    if offset is None:
        return from_micros(micros).astimezone(tz).isoformat()
    wall = _EPOCH_NAIVE + timedelta(seconds=seconds + offset, microseconds=fraction)
    suffix = _SUFFIXES.get(offset)
    if suffix is None:
        suffix = _SUFFIXES[offset] = datetime(
            2000, 1, 1, tzinfo=timezone(timedelta(seconds=offset))).isoformat()[19:]
    return wall.isoformat() + suffix


_EPOCH_NAIVE = datetime(1970, 1, 1)
_SUFFIXES: dict[int, str] = {}
_ISO_TEXTS: dict[tuple[int, str], str] = {}
