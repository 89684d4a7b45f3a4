"""What every CRM connector shares: the rows it is handed, the outcome of each, its errors."""

from __future__ import annotations

import functools
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
import msgspec

DELIVERED = "delivered"
FAILED = "failed"
DEAD = "dead"
TIMEOUT_SECONDS = 15


@dataclass(frozen=True)
class SyncRow:
    """A CRM record due to be written, as the sync hands it to a connector."""

    id: int
    record_type: str
    record_id: str
    account_id: str
    fields: dict[str, Any]
    remote_id: str | None


@dataclass(frozen=True)
class Outcome:
    """What became of one row: delivered (with the CRM's id for it), failed (will be retried)
    or dead (will not be, until a person retries it)."""

    row_id: int
    status: str
    error: str | None = None
    remote_id: str | None = None
    retry_after: float | None = None


class Connector(Protocol):
    name: str
    batch_size: int

    def push(self, rows: list[SyncRow]) -> list[Outcome]:
        """Write `rows` to the CRM; one outcome per row, in any order."""
        ...


class RateLimited(Exception):
    """Raised when the CRM answered 429: nothing more goes to it before `retry_after` seconds."""

    def __init__(self, retry_after: float, message: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RemoteError(Exception):
    """Raised when the CRM refused or failed a request. `permanent` when sending the same
    request again cannot succeed: a 4xx about the request itself, not 401 or 403 (a token to
    fix, after which the same request succeeds), nor 408 or 429."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = status is not None and 400 <= status < 500 \
            and status not in (401, 403, 408, 429)


def http_client() -> httpx.Client:
    """A client for one batch. The TLS context is built once and shared: building it (reading
    the CA bundle) costs more than a request to a CRM, and a batch goes out every few ticks."""
    return httpx.Client(verify=_tls_context())


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # what httpx.Client() builds each time by default


def send_json(client: httpx.Client, method: str, url: str, body: Any | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request with a JSON body; the status and decoded body of a 2xx answer. Raises
    RateLimited on 429 and RemoteError on anything else that is not 2xx.

    Error messages carry the CRM's own message, never the request's headers (the token)."""
    # Bytes go as they are: a signature may cover them.
    raw = body is None or isinstance(body, bytes)
    content = body if raw else msgspec.json.encode(body)
    try:
        response = client.request(method, url, content=content, timeout=TIMEOUT_SECONDS,
                                  headers={"content-type": "application/json",
                                           **(headers or {})})
    except httpx.HTTPError as exc:
        raise RemoteError(None, f"{method} {_path(url)}: unreachable ({type(exc).__name__})") \
            from None
    decoded = _decode(response.content)
    if response.status_code == 429:
        wait = retry_after_seconds(response.headers.get("retry-after"))
        raise RateLimited(wait if wait is not None else 10.0,
                          f"{method} {_path(url)}: 429 rate limited ({_message(decoded)})")
    if response.status_code >= 300:
        raise RemoteError(response.status_code, f"{method} {_path(url)}: "
                          f"{response.status_code} {_message(decoded)}")
    return response.status_code, decoded


def retry_after_seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds: a number of seconds or an HTTP date."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _decode(content: bytes) -> Any:
    try:
        return msgspec.json.decode(content) if content else None
    except msgspec.DecodeError:
        return None


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("category") or body)[:500]
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return "; ".join(f"{e.get('errorCode', '')} {e.get('message', '')}".strip()
                         for e in body)[:500]
    return "no message"


def _path(url: str) -> str:
    return httpx.URL(url).path
