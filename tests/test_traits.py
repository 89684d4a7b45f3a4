"""Traits kept with their history: arrival order, re-sent values and `now` lose nothing."""

from __future__ import annotations

import itertools
import json

from firstvalue.store.traits import merge_traits, plain_traits, traits_at

CALLS = [(10, "a", {"kickoff_at": "2026-03-05", "segment": "smb"}),
         (20, "b", {"kickoff_at": "2026-03-05"}),
         (30, "c", {"segment": "enterprise"}),
         (40, "d", {"kickoff_at": "2026-03-09"})]


def merged(order) -> dict:
    stored: dict = {}
    for ts, mid, traits in order:
        merge_traits(stored, traits, ts, mid, received_at=ts + 1)
    return stored


def test_every_arrival_order_gives_the_same_traits():
    results = {json.dumps(merged(order), sort_keys=True)
               for order in itertools.permutations(CALLS)}
    assert len(results) == 1


def test_a_value_sent_again_holds_since_its_first_call():
    stored = merged(CALLS[:3])
    assert traits_at(stored, 35)["kickoff_at"] == ["2026-03-05", 10, "a", 11]


def test_traits_as_of_a_past_moment_use_what_was_set_by_then():
    stored = merged(CALLS)
    assert traits_at(stored, 25)["segment"][0] == "smb"
    assert traits_at(stored, 45)["segment"][0] == "enterprise"
    assert traits_at(stored, 45)["kickoff_at"] == ["2026-03-09", 40, "d", 41]
    assert "segment" not in traits_at(stored, 5)
    assert plain_traits(stored) == {"kickoff_at": "2026-03-09", "segment": "enterprise"}


def test_the_same_call_twice_changes_nothing():
    stored = merged(CALLS)
    assert merge_traits(stored, CALLS[0][2], 10, "a") is False
