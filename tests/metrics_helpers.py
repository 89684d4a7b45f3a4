"""Hand-built runs for the analytics tests: every date in UTC, so local days are plain dates."""

from __future__ import annotations

import zoneinfo
from datetime import date

from firstvalue.clock import parse_instant, to_micros
from firstvalue.metrics.runs import RunRecord

UTC = zoneinfo.ZoneInfo("UTC")
KEYS = ("account_configured", "data_connected", "first_workflow", "first_value", "second_user")
MID_MARKET_TARGETS = {"account_configured": 3, "data_connected": 7, "first_workflow": 14,
                      "first_value": 21, "second_user": 30}


def at(text: str) -> int:
    """An instant; a bare date means 10:00 UTC that day."""
    return to_micros(parse_instant(text if "T" in text else f"{text}T10:00:00+00:00"))


def run(account_id: str, signed: str = "2026-03-01", day0: str | None = "2026-03-01",
        now: str = "2026-03-31T12:00:00+00:00", done: dict[str, str] | None = None,
        churned: str | None = None, segment: str = "mid_market", tier: int = 2,
        targets: dict[str, int] | None = None, end_day: int = 90, expansion: float = 0.0,
        expansions: int = 0, run_number: int = 1,
        variants: dict[str, str] | None = None) -> RunRecord:
    now_micros = at(now)
    return RunRecord(
        account_id=account_id, segment=segment, segment_at_kickoff=segment, tier=tier,
        track=segment, use_case=None,
        tz=UTC, run=run_number, started_at=at(signed),
        day0=date.fromisoformat(day0) if day0 else None, has_kickoff=True, end_day=end_day,
        today=date.fromisoformat(now[:10]), now=now_micros,
        milestones={key: at(moment) for key, moment in (done or {}).items()},
        targets=MID_MARKET_TARGETS if targets is None else targets, ttv_target=30,
        churned_at=at(churned) if churned else None, expansion_amount=expansion,
        expansions=expansions, variants=variants or {})
