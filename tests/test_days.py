"""Local dates: the cached offsets agree with the zone database everywhere."""

from __future__ import annotations

import zoneinfo
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from firstvalue.engine.days import local_date

ZONES = ["Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo", "Australia/Lord_Howe",
         "Asia/Kathmandu", "America/St_Johns", "UTC", "Africa/Monrovia", "Pacific/Chatham"]


@settings(max_examples=3000, deadline=None)
@given(seconds=st.integers(0, 4_102_444_800), micros=st.integers(0, 999_999),
       name=st.sampled_from(ZONES))
def test_local_date_is_the_zones_own_date(seconds, micros, name):
    tz = zoneinfo.ZoneInfo(name)
    assert local_date(seconds * 1_000_000 + micros, tz) == datetime.fromtimestamp(seconds,
                                                                                  tz).date()
