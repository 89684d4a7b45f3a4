"""`/api/metrics`: the onboarding analytics of `firstvalue report`, as JSON.

Every endpoint takes `now` (ISO 8601 with an offset; the server's clock when left out), and the
ones about time-to-value take `by`, so that a script gets the very figures the CLI prints.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from firstvalue.api.app import AppContext, HTTPProblem, _authenticate_api, json_response
from firstvalue.clock import parse_instant, to_micros
from firstvalue.errors import ConfigError
from firstvalue.metrics.analytics import build_analytics, check_grouping, check_mode
from firstvalue.metrics.funnel import STATUSES, drilldown
from firstvalue.metrics.runs import load_runs

SECTIONS = {"ttv": ("by", "runs", "ttv", "ttv_targets"), "phases": ("by", "runs", "phases"),
            "funnel": ("runs", "funnel", "stalls"),
            "retention": ("runs", "retention", "cohort_heatmap"),
            "expansion": ("runs", "expansion"), "experiments": ("runs", "experiments")}


def metrics_router(context: AppContext) -> APIRouter:
    router = APIRouter(prefix="/api/metrics")

    @router.get("")
    async def everything(request: Request, by: str = "segment", funnel: str = "any",
                         now: str | None = None) -> Response:
        await _authenticate_api(request, context)
        moment, by, funnel = _arguments(context, now, by, funnel)
        body = await run_in_threadpool(build_analytics, context.database, context.playbook,
                                       moment, by, funnel)
        return json_response({"now": _iso(moment), **body})

    @router.get("/funnel/{milestone}/accounts")
    async def funnel_accounts(milestone: str, request: Request, status: str = "open",
                              funnel: str = "any", now: str | None = None) -> Response:
        await _authenticate_api(request, context)
        moment, _, funnel = _arguments(context, now, "segment", funnel)
        keys = [m.key for m in context.playbook.loaded.model.milestones]
        if milestone not in keys:
            raise HTTPProblem(404, "unknown_milestone", f"unknown milestone {milestone!r}; "
                              f"use one of: {', '.join(keys)}")
        if status not in STATUSES:
            raise HTTPProblem(400, "invalid_status", f"status={status!r} is not a funnel "
                              f"status; use one of: {', '.join(STATUSES)}")
        records = await run_in_threadpool(load_runs, context.database, context.playbook,
                                          moment)
        ids = drilldown(records, keys, milestone, status, funnel)
        return json_response({"now": _iso(moment), "milestone": milestone, "status": status,
                              "mode": funnel, "count": len(ids), "accounts": ids})

    @router.get("/{section}")
    async def one_section(section: str, request: Request, by: str = "segment",
                          funnel: str = "any", now: str | None = None) -> Response:
        await _authenticate_api(request, context)
        if section not in SECTIONS:
            raise HTTPProblem(404, "unknown_section", f"no metrics named {section!r}; use one "
                              f"of: {', '.join(SECTIONS)}")
        moment, by, funnel = _arguments(context, now, by, funnel)
        body = await run_in_threadpool(build_analytics, context.database, context.playbook,
                                       moment, by, funnel)
        return json_response({"now": _iso(moment),
                              **{key: body[key] for key in SECTIONS[section]}})

    return router


def _arguments(context: AppContext, now: str | None, by: str,
               funnel: str) -> tuple[int, str, str]:
    try:
        moment = to_micros(parse_instant(now, "now")) if now else context.clock()
        return moment, check_grouping(by), check_mode(funnel)
    except ConfigError as exc:
        raise HTTPProblem(400, "invalid_parameter", str(exc)) from None


def _iso(moment: int) -> Any:
    from firstvalue.clock import isoformat

    return isoformat(moment)
