"""The HTTP app: Segment-compatible ingest at /v1, the JSON API at /api, and /health."""

from __future__ import annotations

import base64
import binascii
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from firstvalue.access import CHANGERS, Principal, check_api_token, check_write_key
from firstvalue.clock import system_now, to_micros
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.ingest.messages import MAX_BATCH_BYTES, MAX_EVENT_BYTES, decode_batch
from firstvalue.ingest.pipeline import ACCEPTED, DUPLICATE, PENDING_ACCOUNT
from firstvalue.ingest.service import MessageStatus, ingest_messages
from firstvalue.runtime.evaluation import evaluate_accounts
from firstvalue.store.database import Database, holds_nul, store_busy

log = logging.getLogger(__name__)

SINGLE_CALLS = {"track": "track", "identify": "identify", "group": "group",
                "t": "track", "i": "identify", "g": "group"}
STORED = {ACCEPTED, DUPLICATE, PENDING_ACCOUNT}
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}
BUSY_RETRY_SECONDS = 5  # Retry-After of a request that found the store's write lock held
API_BODY_BYTES = 64 * 1024  # the JSON API's own writes: a key, a team member


class HTTPProblem(Exception):
    """An error answered as `{"error": {"code", "message"}}` with its status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass
class AppContext:
    database: Database
    playbook: CompiledPlaybook
    clock: Callable[[], int]


def create_app(database: Database, playbook: CompiledPlaybook,
               clock: Callable[[], int] | None = None, lifespan: Any = None) -> FastAPI:
    # The OpenAPI document is served behind a token at /api/openapi.json: only /health
    # answers anyone (shared/DESIGN.md "Access").
    # No redirect of a trailing slash: Starlette builds its Location from the Host header, and
    # an unknown path is a 404 like any other.
    app = FastAPI(title="firstvalue", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    context = AppContext(database, playbook, clock or (lambda: to_micros(system_now())))
    app.state.context = context

    @app.middleware("http")
    async def _no_nul(request: Request, call_next: Callable[..., Any]) -> Response:
        # No id holds a NUL; PostgreSQL text cannot store one and SQLite's JSON functions
        # cut a string at it, so one in a path or query is refused before anything reads it.
        try:
            if "\x00" in request.url.path or "%00" in request.url.query:
                response = error_response(400, "invalid_request", "a NUL character (%00) is "
                                          "not allowed in a path or query", request.url.path)
            else:
                response = await call_next(request)
        except Exception as exc:
            # Answered here rather than by Starlette's outermost handler, which sends its
            # answer without this middleware's headers and then closes the connection.
            response = await _failure_answer(request, exc)
        # Every answer, the API's errors included, is read as what its type says only.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        response = await _error_answer(request, exc.status_code, code, str(exc.detail),
                                       message)
        response.headers.update(exc.headers or {})  # a 405's Allow
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        return error_response(400, "invalid_request", problems, request.url.path)

    # Reached only by a failure outside `_no_nul` (which answers every other one itself).
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _exc: Exception) -> JSONResponse:
        # The server logs the traceback; the client gets the one error shape, and a 5xx
        # tells Segment's and RudderStack's clients to send the batch again later.
        return error_response(500, "internal_error",
                              "the server failed to handle the request; it is logged, and the "
                              "request can be sent again", request.url.path)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/batch")
    @app.post("/v1/b")
    async def batch(request: Request) -> Response:
        await _authenticate_ingest(request, context)
        body = await read_body(request)
        try:
            envelope = decode_batch(body)
        except msgspec.DecodeError as exc:
            raise HTTPProblem(400, "invalid_batch",
                              f"the body is not a batch ({exc}); send "
                              '{"batch": [{"type": "track", ...}, ...]}') from None
        statuses = await run_in_threadpool(
            ingest_messages, context.database, [bytes(raw) for raw in envelope.batch],
            context.clock(), context.playbook.anchor_names, envelope.sentAt)
        return ingest_response(statuses)

    @app.post("/v1/{call}")
    async def single(call: str, request: Request) -> Response:
        kind = SINGLE_CALLS.get(call)
        if kind is None:
            raise HTTPProblem(404, "not_found",
                              f"no ingest endpoint /v1/{call}; use /v1/track, /v1/identify, "
                              "/v1/group or /v1/batch")
        await _authenticate_ingest(request, context)
        body = await read_body(request, limit=MAX_EVENT_BYTES, what="event")
        statuses = await run_in_threadpool(
            ingest_messages, context.database, [body], context.clock(),
            context.playbook.anchor_names, None, kind)
        return ingest_response(statuses)

    @app.get("/api/accounts")
    async def list_accounts(request: Request, limit: int = 100, offset: int = 0) -> Response:
        await _authenticate_api(request, context)
        if not 1 <= limit <= 1000 or not 0 <= offset <= 10**12:
            raise HTTPProblem(400, "invalid_page",
                              f"limit={limit}, offset={offset}: limit must be 1 to 1000 and "
                              "offset 0 to 10^12")
        states = await run_in_threadpool(_account_page, context, limit, offset)
        return json_response({"accounts": states, "limit": limit, "offset": offset})

    @app.get("/api/openapi.json")
    async def openapi(request: Request) -> Response:
        await _authenticate_api(request, context)
        return json_response(app.openapi())

    @app.get("/api/actions")
    async def list_actions_endpoint(request: Request, account: str | None = None,
                                    status: str | None = None) -> Response:
        await _authenticate_api(request, context)
        from firstvalue.actions.outbox import STATUSES

        if status is not None and status not in STATUSES:
            raise HTTPProblem(400, "invalid_status",
                              f"status={status!r} is not a status; use one of "
                              f"{', '.join(STATUSES)}")
        rows = await run_in_threadpool(_actions, context, account, status)
        return json_response({"actions": rows})

    @app.get("/api/stalls")
    async def stalls_endpoint(request: Request, include_all: bool = False) -> Response:
        await _authenticate_api(request, context)
        queue = await run_in_threadpool(_stalls, context, include_all)
        return json_response({"stalls": queue})

    @app.post("/api/tasks/done")
    async def complete_task_endpoint(request: Request) -> Response:
        principal = await _authenticate_api(request, context)
        if principal.role not in CHANGERS:
            raise HTTPProblem(403, "forbidden", f"a {principal.role} token changes nothing; "
                              "completing a task takes a csm or admin token")
        key = _key_from(await read_body(request, API_BODY_BYTES, "request"))
        done = await run_in_threadpool(_complete, context, key, f"token:{principal.name}")
        if not done:
            raise HTTPProblem(404, "unknown_task", f"no open task with key {key!r}")
        return json_response({"key": key, "done": True})

    @app.get("/api/in-app/{account_id}/{user_id}")
    async def in_app_messages(account_id: str, user_id: str, request: Request) -> Response:
        await _authenticate_api(request, context)
        messages = await run_in_threadpool(_in_app, context, account_id, user_id)
        return json_response({"messages": messages})

    @app.post("/api/in-app/{account_id}/{user_id}/ack")
    async def acknowledge_in_app(account_id: str, user_id: str, request: Request) -> Response:
        principal = await _authenticate_api(request, context)
        if principal.role not in CHANGERS:
            raise HTTPProblem(403, "forbidden", f"a {principal.role} token changes nothing; "
                              "acknowledging takes a csm or admin token (give the product one)")
        key = _key_from(await read_body(request, API_BODY_BYTES, "request"))
        done = await run_in_threadpool(_acknowledge, context, account_id, user_id, key)
        if not done:
            raise HTTPProblem(404, "unknown_message",
                              f"no unacknowledged in-app message {key!r} for {user_id!r}")
        return json_response({"key": key, "acknowledged": True})

    @app.get("/api/team")
    async def team_endpoint(request: Request) -> Response:
        await _authenticate_api(request, context)
        return json_response({"team": await run_in_threadpool(_team, context)})

    @app.put("/api/team/{handle}")
    async def put_team_member(handle: str, request: Request) -> Response:
        principal = await _authenticate_api(request, context)
        if principal.role != "admin":
            raise HTTPProblem(403, "forbidden", f"a {principal.role} token cannot change the "
                              "roster; that takes an admin token")
        member = _member_from(await read_body(request, API_BODY_BYTES, "request"))
        await run_in_threadpool(_save_member, context, handle, member)
        return json_response({"team": await run_in_threadpool(_team, context)})

    @app.get("/api/assignments")
    async def assignments_endpoint(request: Request) -> Response:
        await _authenticate_api(request, context)
        return json_response({"assignments": await run_in_threadpool(_assignments, context)})

    from firstvalue.crm.routes import router as integrations_router

    app.include_router(integrations_router)

    from firstvalue.api.metrics import metrics_router

    app.include_router(metrics_router(context))

    from firstvalue.web.pages import install as install_dashboard

    install_dashboard(app, context)

    @app.put("/api/accounts/{account_id:path}/handoff")
    async def put_handoff(account_id: str, request: Request) -> Response:
        principal = await _authenticate_api(request, context)
        if principal.role not in CHANGERS:
            raise HTTPProblem(403, "forbidden", f"a {principal.role} token changes nothing; "
                              "submitting a handoff takes a csm or admin token")
        body = await read_body(request, API_BODY_BYTES, "request")
        result = await run_in_threadpool(_submit_handoff, context, account_id, body,
                                         principal.name)
        return json_response(result)

    @app.get("/api/accounts/{account_id:path}/handoff")
    async def get_handoff(account_id: str, request: Request) -> Response:
        await _authenticate_api(request, context)
        found = await run_in_threadpool(_handoff, context, account_id)
        if found is None:
            raise HTTPProblem(404, "unknown_account", f"no account {account_id!r}")
        return json_response(found)

    # `path`: a groupId may hold a slash ("org/42"), which arrives decoded in the path.
    @app.get("/api/accounts/{account_id:path}")
    async def get_account(account_id: str, request: Request) -> Response:
        await _authenticate_api(request, context)
        view = await run_in_threadpool(_account_view, context, account_id)
        if view is None:
            raise HTTPProblem(404, "unknown_account", f"no account {account_id!r}")
        return json_response(view)

    return app


class TeamMember(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    role: str = "csm"
    capacity: int = 0
    timezone: str = "UTC"
    name: str | None = None
    away_from: str | None = None
    away_until: str | None = None
    cover: str | None = None


def _member_from(body: bytes) -> TeamMember:
    try:
        member = msgspec.json.decode(body, type=TeamMember)
    except msgspec.DecodeError as exc:
        raise HTTPProblem(400, "invalid_member",
                          f"{exc}; send a JSON object with email, role (csm, "
                          "implementation_manager or team_lead), capacity, timezone and "
                          "optionally name, away_from, away_until (ISO times) and cover") from None
    if holds_nul(msgspec.to_builtins(member), body):
        raise HTTPProblem(400, "invalid_member", "a NUL character (\\u0000) is not allowed")
    return member


def _save_member(context: AppContext, handle: str, member: TeamMember) -> None:
    from firstvalue.clock import parse_instant
    from firstvalue.errors import ConfigError
    from firstvalue.runtime.routing import save_member, set_away

    try:
        start = to_micros(parse_instant(member.away_from, "away_from")) \
            if member.away_from else None
        end = to_micros(parse_instant(member.away_until, "away_until")) \
            if member.away_until else None
        with context.database.write() as conn:
            save_member(conn, handle, member.email, member.role, member.capacity,
                        member.timezone, member.name, context.clock())
            set_away(conn, handle, start, end, member.cover)
    except ConfigError as exc:
        raise HTTPProblem(400, "invalid_member", str(exc)) from None


def _submit_handoff(context: AppContext, account_id: str, body: bytes,
                    submitted_by: str) -> dict[str, Any]:
    from firstvalue.clock import isoformat
    from firstvalue.errors import UnknownAccount
    from firstvalue.runtime.handoff import HandoffError, submit_handoff

    try:
        submitted = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise HTTPProblem(400, "invalid_handoff", "the body is not JSON; send the handoff as "
                          "a JSON object of its fields") from None
    if holds_nul(submitted, body):
        raise HTTPProblem(400, "invalid_handoff", "a NUL character (\\u0000) is not allowed")
    try:
        with context.database.write() as conn:
            result = submit_handoff(conn, context.playbook.loaded.model.handoff, account_id,
                                    submitted, context.clock(), submitted_by)
    except UnknownAccount:
        raise HTTPProblem(404, "unknown_account", f"no account {account_id!r}; it is created "
                          "by its `group` call or a closed-won webhook") from None
    except HandoffError as exc:
        raise HTTPProblem(400, "invalid_handoff", f"{exc}; nothing was stored") from None
    return {**result, "completed_at": isoformat(result["completed_at"]),
            "submitted_at": isoformat(result["submitted_at"])}


def _handoff(context: AppContext, account_id: str) -> dict[str, Any] | None:
    from firstvalue.errors import UnknownAccount
    from firstvalue.runtime.handoff import handoff_json

    with context.database.engine.connect() as conn:
        try:
            return handoff_json(conn, context.playbook.loaded.model.handoff, account_id)
        except UnknownAccount:
            return None


def _team(context: AppContext) -> list[dict[str, Any]]:
    from firstvalue.runtime.routing import team_json

    with context.database.engine.connect() as conn:
        return team_json(conn, context.clock())


def _assignments(context: AppContext) -> list[dict[str, Any]]:
    from firstvalue.runtime.routing import assignment_json

    with context.database.engine.connect() as conn:
        return assignment_json(conn)


def _account_view(context: AppContext, account_id: str) -> dict[str, Any] | None:
    from firstvalue.runtime.timeline import account_view

    now = context.clock()
    states = evaluate_accounts(context.database, context.playbook, now, [account_id])
    return account_view(context.database, states[0], now) if states else None


def _actions(context: AppContext, account: str | None,
             status: str | None) -> list[dict[str, Any]]:
    from firstvalue.actions.outbox import action_json, list_actions

    with context.database.engine.connect() as conn:
        rows = list_actions(conn, [account] if account else None, [status] if status else None)
    return [action_json(row) for row in rows]


def _stalls(context: AppContext, include_all: bool) -> list[dict[str, Any]]:
    from firstvalue.runtime.stall_history import stall_queue_at

    return stall_queue_at(context.database, context.playbook, context.clock(), include_all)


def _complete(context: AppContext, key: str, by: str) -> bool:
    from firstvalue.actions.outbox import complete_task

    with context.database.write() as conn:
        return complete_task(conn, key, context.clock(), by=by)


def _in_app(context: AppContext, account_id: str, user_id: str) -> list[dict[str, Any]]:
    from firstvalue.clock import isoformat

    with context.database.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT key, subject, body, sent_at FROM actions WHERE kind = 'in_app' "
            "AND status = 'sent' AND done_at IS NULL AND account_id = :a AND contact = :u "
            "ORDER BY sent_at, key"), {"a": account_id, "u": user_id}).all()
    return [{"key": r.key, "subject": r.subject, "body": r.body, "sent_at": isoformat(r.sent_at)}
            for r in rows]


def _acknowledge(context: AppContext, account_id: str, user_id: str, key: str) -> bool:
    with context.database.write() as conn:
        return conn.execute(sa.text(
            "UPDATE actions SET done_at = :now WHERE key = :k AND kind = 'in_app' "
            "AND status = 'sent' AND done_at IS NULL AND account_id = :a AND contact = :u"),
            {"now": context.clock(), "k": key, "a": account_id, "u": user_id}).rowcount == 1


def _key_from(body: bytes) -> str:
    try:
        key = msgspec.json.decode(body).get("key")
    except (msgspec.DecodeError, AttributeError):
        key = None
    if not isinstance(key, str) or not key or "\x00" in key:
        raise HTTPProblem(400, "invalid_body", 'send {"key": "ACTION KEY"} as JSON')
    return key


def _account_page(context: AppContext, limit: int, offset: int) -> list[dict[str, Any]]:
    with context.database.engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT id FROM accounts ORDER BY id LIMIT :l OFFSET :o"),
                           {"l": limit, "o": offset}).scalars().all()
    states = evaluate_accounts(context.database, context.playbook, context.clock(), ids)
    return [state.as_json() for state in states]


async def read_body(request: Request, limit: int = MAX_BATCH_BYTES, what: str = "batch") -> bytes:
    """The decoded body, refused with 413 past `limit` (checked after gzip decoding)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise HTTPProblem(415, "unsupported_encoding",
                          f"Content-Encoding {encoding!r} is not supported; send gzip or none")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise _too_large(limit, what)
    if encoding != "gzip":
        return bytes(received)
    return _gunzip(bytes(received), limit, what)


def _gunzip(data: bytes, limit: int, what: str) -> bytes:
    """Decode every gzip member of `data` (a gzip file may hold several, one after another)."""
    body = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            # Decompress no more than the limit allows, so a small bomb cannot fill the memory.
            body += inflater.decompress(rest, limit + 1 - len(body))
        except zlib.error as exc:
            raise HTTPProblem(400, "invalid_gzip",
                              f"the gzip body cannot be decoded: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise _too_large(limit, what)
        if not inflater.eof:
            raise HTTPProblem(400, "invalid_gzip",
                              f"the gzip body ends after {len(data)} bytes, in the middle of its "
                              "data; send the whole body")
        rest = inflater.unused_data
    return bytes(body)


def _too_large(limit: int, what: str) -> HTTPProblem:
    fixes = {"event": "send fewer or smaller properties", "batch": "send smaller batches",
             "webhook": "send the events one delivery each"}
    fix = fixes.get(what, "send a smaller body")
    return HTTPProblem(413, "payload_too_large",
                       f"the {what} is over {limit // 1024} KiB once decoded; {fix}")


async def _authenticate_ingest(request: Request, context: AppContext) -> None:
    key = _basic_user(request.headers.get("authorization", ""))
    if key is None or not await run_in_threadpool(check_write_key, context.database, key):
        raise HTTPProblem(401, "unknown_write_key",
                          "no known write key; send it as the HTTP Basic user name")


def _basic_user(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, _, _ = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


async def _authenticate_api(request: Request, context: AppContext) -> Principal:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    principal = None
    if scheme.lower() == "bearer":
        principal = await run_in_threadpool(check_api_token, context.database, token.strip())
    if principal is None:
        raise HTTPProblem(401, "unauthorized",
                          "send a bearer token made with `firstvalue tokens create` (tokens "
                          "belong to the database they were made in: make it with this "
                          "server's --db)")
    return principal


def ingest_response(statuses: list[MessageStatus]) -> Response:
    results = [{"index": i, **status.as_json()} for i, status in enumerate(statuses)]
    stored = any(status.status in STORED for status in statuses)
    if stored:
        return json_response({"success": True, "results": results})
    why = ("no event was stored; each one's reason is in `results`" if statuses else
           "no event was stored: the batch holds no messages (put them in its `batch` list)")
    body = {"success": False, **_client_error_fields("all_rejected", why), "results": results}
    return json_response(body, status=400)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


async def _failure_answer(request: Request, exc: Exception) -> Response:
    """The answer to a request that raised: a 503 when the store was only busy, else a 500."""
    if not store_busy(exc):
        log.exception("%s %s failed.", request.method, request.url.path, exc_info=exc)
        return await _error_answer(request, 500, "internal_error", "Something went wrong",
                                   "the server failed to handle the request; it is logged, "
                                   "and the request can be sent again")
    # SQLite's write lock held past the wait (a bulk import, a long tick), or every connection
    # taken by requests waiting for it: the request did nothing, and can be sent again
    # (Segment's clients do on a 5xx).
    log.warning("%s %s waited too long for the store.", request.method, request.url.path)
    response = await _error_answer(
        request, 503, "store_busy", "The store is busy", "another process holds the store's "
        "write lock (an import or a tick); nothing was stored, send the request again in a "
        "moment")
    response.headers["Retry-After"] = str(BUSY_RETRY_SECONDS)
    return response


async def _error_answer(request: Request, status: int, code: str, title: str,
                        message: str) -> Response:
    """An error as the dashboard's page for a browser asking for a page, else as JSON."""
    dashboard = getattr(request.app.state, "dashboard", None)
    if dashboard is not None and _asks_for_a_page(request):
        from firstvalue.web.pages import Refused

        try:
            return await run_in_threadpool(dashboard.refusal, request,
                                           Refused(status, title, message))
        except Exception:  # the page needs the store, which may be what failed
            log.exception("The error page for %s could not be drawn.", request.url.path)
    return error_response(status, code, message, request.url.path)


def _asks_for_a_page(request: Request) -> bool:
    first = request.url.path.strip("/").split("/", 1)[0]
    machine = first in ("api", "v1", "webhooks", "health")
    return not machine and "text/html" in request.headers.get("accept", "")


def error_response(status: int, code: str, message: str, path: str = "") -> JSONResponse:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if path.startswith("/v1/"):
        body.update(_client_error_fields(code, message))
    return JSONResponse(body, status_code=status)


def _client_error_fields(code: str, message: str) -> dict[str, str]:
    """`code` and `message` at the top level, where Segment's and RudderStack's clients read
    them: without them RudderStack's client fails on a KeyError and retries a 4xx that it
    should give up on, and Segment's reports the code as "unknown"."""
    return {"code": code, "message": message}
