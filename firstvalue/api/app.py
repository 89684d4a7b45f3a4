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

from firstvalue.access import Principal, check_api_token, check_write_key
from firstvalue.clock import system_now, to_micros
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.ingest.messages import MAX_BATCH_BYTES, MAX_EVENT_BYTES, decode_batch
from firstvalue.ingest.pipeline import ACCEPTED, DUPLICATE, PENDING_ACCOUNT
from firstvalue.ingest.service import MessageStatus, ingest_messages
from firstvalue.runtime.evaluation import evaluate_accounts
from firstvalue.store.database import Database

log = logging.getLogger(__name__)

SINGLE_CALLS = {"track": "track", "identify": "identify", "group": "group",
                "t": "track", "i": "identify", "g": "group"}
STORED = {ACCEPTED, DUPLICATE, PENDING_ACCOUNT}
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


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
    app = FastAPI(title="firstvalue", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    context = AppContext(database, playbook, clock or (lambda: to_micros(system_now())))
    app.state.context = context

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(exc.status_code, code, message, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        return error_response(400, "invalid_request", problems, request.url.path)

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
        if not 1 <= limit <= 1000 or offset < 0:
            raise HTTPProblem(400, "invalid_page",
                              f"limit={limit}, offset={offset}: limit must be 1 to 1000 and "
                              "offset 0 or more")
        states = await run_in_threadpool(_account_page, context, limit, offset)
        return json_response({"accounts": states, "limit": limit, "offset": offset})

    # `path`: a groupId may hold a slash ("org/42"), which arrives decoded in the path.
    @app.get("/api/accounts/{account_id:path}")
    async def get_account(account_id: str, request: Request) -> Response:
        await _authenticate_api(request, context)
        states = await run_in_threadpool(
            evaluate_accounts, context.database, context.playbook, context.clock(),
            [account_id])
        if not states:
            raise HTTPProblem(404, "unknown_account", f"no account {account_id!r}")
        return json_response(states[0].as_json())

    return app


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
    fix = "send fewer or smaller properties" if what == "event" else "send smaller batches"
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
                          "send a bearer token made with `firstvalue tokens create`")
    return principal


def ingest_response(statuses: list[MessageStatus]) -> Response:
    results = [{"index": i, **status.as_json()} for i, status in enumerate(statuses)]
    stored = any(status.status in STORED for status in statuses)
    if stored:
        return json_response({"success": True, "results": results})
    body = {"success": False, **_client_error_fields(
        "all_rejected", "no event was stored; each one's reason is in `results`"),
        "results": results}
    return json_response(body, status=400)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


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
