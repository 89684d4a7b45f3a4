"""`/api/metrics`: the report's figures over HTTP, with the same `now`, `by` and errors."""

from __future__ import annotations

import warnings

import pytest

from firstvalue.access import create_api_token
from firstvalue.api.app import create_app
from firstvalue.ingest.service import ingest_messages
from firstvalue.runtime.evaluation import tick
from tests.conftest import micros
from tests.test_metrics_survival import account_messages, track

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NOW = "2026-03-20T12:00:00+00:00"


@pytest.fixture
def client(sqlite_database, playbook):
    messages = account_messages("onboarding") + account_messages("reached")
    messages.append(track("r-value", "Value Delivered", "2026-03-15T10:00:00Z", "reached"))
    ingest_messages(sqlite_database, messages, micros("2026-03-30T00:00:00Z"),
                    playbook.anchor_names)
    tick(sqlite_database, playbook, micros("2026-03-30T00:00:00Z"))
    with TestClient(create_app(sqlite_database, playbook,
                               clock=lambda: micros("2026-03-30T00:00:00Z"))) as test_client:
        token = create_api_token(sqlite_database, "viewer", "viewer", micros(NOW))
        test_client.headers["Authorization"] = f"Bearer {token}"
        yield test_client


def test_ttv_by_segment_over_http_is_censored_at_now(client):
    body = client.get("/api/metrics/ttv", params={"now": NOW}).json()
    (mid,) = body["ttv"]
    # reached: 14 days, observed; onboarding: censored at 19 days. S(14) = 1/2 -> median 14.
    assert (mid["group"], mid["accounts"], mid["reached"], mid["censored"]) == (
        "mid_market", 2, 1, 1)
    assert mid["median_days"] == 14
    assert body["now"] == NOW


def test_the_drill_down_lists_the_accounts_behind_the_funnel_count(client):
    funnel = client.get("/api/metrics/funnel", params={"now": NOW}).json()["funnel"]
    first_value = next(m for m in funnel["milestones"] if m["key"] == "first_value")
    listed = client.get("/api/metrics/funnel/first_value/accounts",
                        params={"now": NOW, "status": "reached"}).json()
    assert listed["accounts"] == ["reached"] and listed["count"] == first_value["reached"]


@pytest.mark.parametrize(("path", "params", "status", "words"), [
    ("/api/metrics/ttv", {"by": "region"}, 400, "cannot group by 'region'"),
    ("/api/metrics/ttv", {"now": "yesterday"}, 400, "'yesterday' is not an ISO 8601 time"),
    ("/api/metrics/funnel", {"funnel": "random"}, 400, "unknown funnel mode 'random'"),
    ("/api/metrics/churn", {}, 404, "no metrics named 'churn'"),
    ("/api/metrics/funnel/first_valu/accounts", {}, 404, "unknown milestone 'first_valu'"),
])
def test_bad_parameters_get_a_clear_error_naming_the_value(client, path, params, status, words):
    response = client.get(path, params=params)
    assert response.status_code == status
    assert words in response.json()["error"]["message"]


def test_the_whole_metrics_answer_holds_every_section_of_the_report(client):
    body = client.get("/api/metrics", params={"now": NOW, "by": "cohort"}).json()
    assert set(body) == {"now", "by", "runs", "ttv", "ttv_targets", "phases", "funnel",
                         "stalls", "retention", "cohort_heatmap", "expansion", "experiments"}
    # Both kicked off 03-03: one cohort, 2026-03.
    assert (body["by"], [g["group"] for g in body["ttv"]]) == ("cohort", ["2026-03"])


def test_metrics_need_a_token(client):
    del client.headers["Authorization"]
    assert client.get("/api/metrics").status_code == 401
