"""A JSON integer past a float's range, sent as an amount, an `arr` trait or a filtered
property, is no number: nothing that reads it fails, and the account stays evaluated and
listed."""

from __future__ import annotations

import math
import warnings

import pytest

from firstvalue.access import create_api_token
from firstvalue.api.app import create_app
from firstvalue.engine import evaluate_account
from firstvalue.engine.facts import as_number
from firstvalue.ingest.service import ingest_messages
from firstvalue.runtime.evaluation import tick
from tests.conftest import micros
from tests.engine_helpers import event, facts, milestone, us
from tests.test_engine_milestones import MID, custom_playbook
from tests.test_metrics_survival import account_messages

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

HUGE = "1" + "0" * 400  # a valid JSON integer; float() of it raises OverflowError
NOW = "2026-03-30T00:00:00Z"


def raw_track(message_id: str, name: str, account: str, properties: str) -> bytes:
    return (f'{{"type":"track","messageId":"{message_id}","userId":"{account}-u1",'
            f'"event":"{name}","timestamp":"2026-03-20T10:00:00Z",'
            f'"context":{{"groupId":"{account}"}},"properties":{properties}}}').encode()


def raw_group(message_id: str, account: str, traits: str) -> bytes:
    return (f'{{"type":"group","messageId":"{message_id}","userId":"{account}-u1",'
            f'"groupId":"{account}","timestamp":"2026-03-20T10:00:00Z",'
            f'"traits":{traits}}}').encode()


@pytest.mark.parametrize(("value", "from_text", "expected"), [
    (12, False, 12.0), (2.5, False, 2.5), (int(HUGE), False, None), (True, False, None),
    (None, False, None), ("12000", False, None), ("12000", True, 12000.0),
    (HUGE, True, None), ("1e400", True, None), ("nan", True, None), (math.inf, False, None),
    ({"a": 1}, True, None),
])
def test_a_value_is_a_number_only_when_finite_and_not_a_bool(value, from_text, expected):
    assert as_number(value, from_text=from_text) == expected


def test_a_filter_on_a_property_past_a_floats_range_does_not_hold():
    playbook = custom_playbook("""milestones:
  - key: first_value
    when: {event: Value Delivered, where: {rows: {gt: 10}}}
""")
    huge = facts(MID, event("Value Delivered", "2026-03-05T10:00:00Z", rows=int(HUGE)))
    assert milestone(evaluate_account(huge, playbook, us(NOW)), "first_value").status == "open"
    fair = facts(MID, event("Value Delivered", "2026-03-05T10:00:00Z", rows=11))
    assert milestone(evaluate_account(fair, playbook, us(NOW)), "first_value").status == "done"


def test_an_arr_trait_past_a_floats_range_is_no_arr(playbook):
    state = evaluate_account(facts({**MID, "arr": int(HUGE)}), playbook, us(NOW))
    assert state.arr is None


@pytest.fixture
def client(database, playbook):
    messages = account_messages("big-deal") + account_messages("big-arr") + [
        raw_track("big-expansion", "Expansion Closed", "big-deal", f'{{"amount":{HUGE}}}'),
        raw_track("fair-expansion", "Expansion Closed", "big-deal", '{"amount":5000}'),
        # Finite, but two of them add up past a float's range: no amount either.
        raw_track("vast-1", "Expansion Closed", "big-deal", '{"amount":1e308}'),
        raw_track("vast-2", "Expansion Closed", "big-deal", '{"amount":1e308}'),
        raw_group("big-arr-trait", "big-arr", f'{{"arr":{HUGE}}}'),
    ]
    statuses = ingest_messages(database, messages, micros(NOW), playbook.anchor_names)
    assert {status.status for status in statuses} == {"accepted"}
    tick(database, playbook, micros(NOW))
    with TestClient(create_app(database, playbook, clock=lambda: micros(NOW))) as test_client:
        token = create_api_token(database, "viewer", "viewer", micros(NOW))
        test_client.headers["Authorization"] = f"Bearer {token}"
        yield test_client


def test_an_amount_past_a_floats_range_counts_as_no_amount_in_the_report(client):
    assert client.get("/api/metrics", params={"now": NOW}).status_code == 200
    expansion = client.get("/api/metrics/expansion", params={"now": NOW}).json()["expansion"]
    (row,) = [row for row in expansion["by_activation"] if row["accounts"]]
    # Both expansions count as such; only the fair one's amount adds up.
    assert (row["accounts"], row["expanded"], row["expansion_amount"]) == (2, 1, 5000.0)


def test_an_arr_past_a_floats_range_leaves_the_account_evaluated_and_listed(client):
    account = client.get("/api/accounts/big-arr")
    assert account.status_code == 200, account.text
    assert account.json()["arr"] is None
    listed = [row["id"] for row in client.get("/api/accounts").json()["accounts"]]
    assert {"big-arr", "big-deal"} <= set(listed)
