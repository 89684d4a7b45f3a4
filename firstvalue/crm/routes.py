"""The HTTP endpoints of the integrations: inbound webhooks at /webhooks, sync status at /api.

Every inbound endpoint verifies its signature over the raw body before reading it, and answers
401 to anything unsigned, stale, tampered with or signed with another secret, storing nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from firstvalue.access import CHANGERS
from firstvalue.api.app import AppContext, HTTPProblem, _authenticate_api, json_response, read_body
from firstvalue.crm import calendar, inbound
from firstvalue.crm.signatures import (
    SignatureError,
    verify_calcom,
    verify_calendly,
    verify_standard_webhook,
)
from firstvalue.settings import get_setting

MAX_WEBHOOK_BYTES = 256 * 1024
MAX_DELIVERY_ID = 150  # it goes into messageIds, which hold 200 characters

router = APIRouter()


def _context(request: Request) -> AppContext:
    return request.app.state.context


def _secret(setting: str, env: str, endpoint: str) -> str:
    secret = get_setting(setting)
    if not secret:
        raise HTTPProblem(401, "webhook_not_configured",
                          f"{endpoint} has no secret configured, so it accepts nothing; set "
                          f"{env}")
    return secret


def _refuse(exc: SignatureError) -> HTTPProblem:
    return HTTPProblem(401, "invalid_signature", f"{exc}; nothing was stored")


async def _store(context: AppContext, source: str, delivery_id: str,
                 mapper: inbound.Mapper) -> Response:
    try:
        result = await run_in_threadpool(
            inbound.store_delivery, context.database, source, delivery_id, mapper,
            context.clock(), context.playbook.anchor_names)
    except calendar.UnknownBooking as exc:
        raise HTTPProblem(409, "unknown_booking", f"{exc}; nothing was stored") from None
    except inbound.PayloadError as exc:
        raise HTTPProblem(400, "invalid_payload", f"{exc}; nothing was stored") from None
    return json_response(result.as_json())


def _decode(body: bytes, what: str) -> dict[str, Any]:
    try:
        return inbound.decode_object(body, what)
    except inbound.PayloadError as exc:
        raise HTTPProblem(400, "invalid_payload", f"{exc}; nothing was stored") from None


def _standard(request: Request, body: bytes, context: AppContext, setting: str, env: str,
              endpoint: str) -> str:
    secret = _secret(setting, env, endpoint)
    try:
        delivery = verify_standard_webhook(secret, request.headers, body,
                                           context.clock() / 1_000_000)
    except SignatureError as exc:
        raise _refuse(exc) from None
    if len(delivery) > MAX_DELIVERY_ID:
        raise HTTPProblem(400, "invalid_payload", f"the webhook-id is {len(delivery)} "
                          f"characters, over {MAX_DELIVERY_ID}; nothing was stored")
    return delivery


@router.post("/webhooks/crm")
async def crm_webhook(request: Request) -> Response:
    """Deals from the CRM: closed-won, renewal, expansion, churn (Standard Webhooks)."""
    context = _context(request)
    body = await read_body(request, MAX_WEBHOOK_BYTES, "webhook")
    delivery = _standard(request, body, context, "crm_inbound_secret",
                         "FIRSTVALUE_CRM_INBOUND_SECRET", "/webhooks/crm")
    payload = _decode(body, "CRM webhook")
    return await _store(context, "crm", delivery,
                        lambda _conn: inbound.crm_messages(payload, delivery))


@router.post("/webhooks/email")
async def email_webhook(request: Request) -> Response:
    """Email engagement: opened, clicked, replied (Standard Webhooks)."""
    context = _context(request)
    body = await read_body(request, MAX_WEBHOOK_BYTES, "webhook")
    delivery = _standard(request, body, context, "email_inbound_secret",
                         "FIRSTVALUE_EMAIL_INBOUND_SECRET", "/webhooks/email")
    payload = _decode(body, "email engagement")
    return await _store(context, "email", delivery,
                        lambda conn: inbound.email_messages(conn, payload, delivery))


@router.post("/webhooks/calendly")
async def calendly_webhook(request: Request) -> Response:
    context = _context(request)
    body = await read_body(request, MAX_WEBHOOK_BYTES, "webhook")
    key = _secret("calendly_signing_key", "FIRSTVALUE_CALENDLY_SIGNING_KEY", "/webhooks/calendly")
    try:
        verify_calendly(key, request.headers.get("calendly-webhook-signature"), body,
                        context.clock() / 1_000_000)
    except SignatureError as exc:
        raise _refuse(exc) from None
    envelope = _decode(body, "Calendly webhook")
    delivery = _delivery(calendar.calendly_delivery_id, envelope)
    now = context.clock()
    return await _store(context, "calendly", delivery,
                        lambda conn: calendar.calendly_messages(conn, envelope, now))


@router.post("/webhooks/calcom")
async def calcom_webhook(request: Request) -> Response:
    context = _context(request)
    body = await read_body(request, MAX_WEBHOOK_BYTES, "webhook")
    secret = _secret("calcom_secret", "FIRSTVALUE_CALCOM_SECRET", "/webhooks/calcom")
    try:
        verify_calcom(secret, request.headers.get("x-cal-signature-256"), body)
    except SignatureError as exc:
        raise _refuse(exc) from None
    envelope = _decode(body, "Cal.com webhook")
    delivery = _delivery(calendar.calcom_delivery_id, envelope)
    now = context.clock()
    return await _store(context, "calcom", delivery,
                        lambda conn: calendar.calcom_messages(conn, envelope, now))


def _delivery(find: Callable[[dict[str, Any]], str], envelope: dict[str, Any]) -> str:
    try:
        return find(envelope)
    except inbound.PayloadError as exc:
        raise HTTPProblem(400, "invalid_payload", f"{exc}; nothing was stored") from None


@router.get("/api/sync")
async def sync_status_endpoint(request: Request) -> Response:
    """Sync rows per connector and status, and the failed and dead rows."""
    from firstvalue.crm.sync import list_rows, sync_status

    context = _context(request)
    await _authenticate_api(request, context)
    status = await run_in_threadpool(sync_status, context.database, _configured_names())
    rows = await run_in_threadpool(list_rows, context.database)
    return json_response({"connectors": status, "rows": rows})


@router.post("/api/sync/retry")
async def sync_retry_endpoint(request: Request) -> Response:
    """Make failed and dead rows due again: all, one connector's, or the listed records."""
    from firstvalue.crm.sync import retry_rows

    context = _context(request)
    principal = await _authenticate_api(request, context)
    if principal.role not in CHANGERS:
        raise HTTPProblem(403, "forbidden", f"a {principal.role} token changes nothing; "
                          "retrying sync rows takes a csm or admin token")
    body = _decode(await read_body(request, 64 * 1024, "request") or b"{}", "retry")
    connector = body.get("connector")
    records = body.get("records") or []
    if connector is not None and not isinstance(connector, str) or not isinstance(records, list):
        raise HTTPProblem(400, "invalid_body", 'send {"connector": "hubspot", "records": '
                          '["acme/first_value"]}, both optional')
    count = await run_in_threadpool(retry_rows, context.database, context.clock(), connector,
                                    [str(r) for r in records])
    return json_response({"retried": count})


def _configured_names() -> list[str]:
    from firstvalue.crm.sync import configured_connectors
    from firstvalue.errors import ConfigError

    try:
        return [connector.name for connector in configured_connectors()]
    except ConfigError:  # a half-configured connector shows no row; `sync status` says why
        return []
