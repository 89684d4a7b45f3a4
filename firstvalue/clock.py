"""Instants: parsing ISO 8601, and the microsecond integers the store keeps."""

from __future__ import annotations

from datetime import UTC, datetime

from firstvalue.errors import ConfigError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def parse_instant(text: str, what: str = "--now") -> datetime:
    """An ISO 8601 time with an offset (a trailing Z means UTC)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{what} {text!r} is not an ISO 8601 time; write e.g. 2026-03-01T09:00:00+01:00"
        ) from None
    if moment.tzinfo is None:
        example = text if "T" in text or " " in text else f"{text}T00:00:00"
        raise ConfigError(f"{what} {text!r} has no offset; add one, e.g. {example}+00:00 or "
                          f"{example}Z")
    if not 1971 <= moment.year <= 9000:
        raise ConfigError(f"{what} {text!r} is outside the years 1971 to 9000 firstvalue "
                          "counts days in")
    return moment


def system_now() -> datetime:
    """The real clock. Only the runtime's edges call it; the engine is handed `now`."""
    return datetime.now(UTC)


def isoformat(micros: int | None) -> str | None:
    return None if micros is None else from_micros(micros).isoformat()
