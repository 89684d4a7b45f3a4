"""Verifying inbound webhook signatures over the raw body, one function per scheme.

Each returns nothing and raises SignatureError with a reason that names what was wrong, never
the secret or the expected signature. Schemes with a timestamp refuse one more than
TOLERANCE_SECONDS away from the server's clock, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

TOLERANCE_SECONDS = 5 * 60


class SignatureError(Exception):
    """Raised when a webhook's signature is missing, malformed, stale or does not match."""


def verify_standard_webhook(secret: str, headers: Mapping[str, str], body: bytes,
                            now_seconds: float) -> str:
    """Standard Webhooks (standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
    `webhook-signature` (space-separated `v1,BASE64`), HMAC-SHA256 over `id.timestamp.body`
    with the base64 key after `whsec_`. Returns the webhook id."""
    delivery = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not delivery or not stamp or not signatures:
        raise SignatureError("send the webhook-id, webhook-timestamp and webhook-signature "
                             "headers (Standard Webhooks)")
    _check_time(stamp, now_seconds)
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise SignatureError("the configured secret is not a whsec_ key") from None
    signed = f"{delivery}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [part.partition(",")[2] for part in signatures.split()
               if part.startswith("v1,")]
    if not any(same_text(expected, candidate) for candidate in offered):
        raise SignatureError("the webhook-signature does not match the body")
    return delivery


def verify_calendly(signing_key: str, header: str | None, body: bytes,
                    now_seconds: float) -> None:
    """Calendly (developer.calendly.com, "Webhook Signatures"): `Calendly-Webhook-Signature:
    t=UNIX,v1=HEX`, HMAC-SHA256 hex over `t.body` with the subscription's signing key."""
    parts = dict(part.strip().partition("=")[::2] for part in (header or "").split(","))
    stamp, signature = parts.get("t"), parts.get("v1")
    if not stamp or not signature:
        raise SignatureError("send the Calendly-Webhook-Signature header (t=...,v1=...)")
    _check_time(stamp, now_seconds)
    signed = f"{stamp}.".encode() + body
    expected = hmac.new(signing_key.encode(), signed, hashlib.sha256).hexdigest()
    if not same_text(expected, signature.lower()):
        raise SignatureError("the Calendly-Webhook-Signature does not match the body")


def verify_calcom(secret: str, header: str | None, body: bytes) -> None:
    """Cal.com (cal.com/docs, "Webhooks"): `X-Cal-Signature-256`, HMAC-SHA256 hex of the body
    with the webhook's secret. The scheme carries no timestamp."""
    if not header:
        raise SignatureError("send the X-Cal-Signature-256 header")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not same_text(expected, header.strip().lower().removeprefix("sha256=")):
        raise SignatureError("the X-Cal-Signature-256 does not match the body")


def same_text(expected: str, offered: str) -> bool:
    """Constant-time comparison of two texts. As bytes: `hmac.compare_digest` refuses text
    with characters outside ASCII, and a header can hold any (Starlette reads them as latin-1),
    so a junk signature must be a mismatch, not an error."""
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"),
                               offered.encode("utf-8", "surrogatepass"))


def _check_time(stamp: str, now_seconds: float) -> None:
    try:
        moment = int(stamp)
    except ValueError:
        raise SignatureError(f"the signature timestamp {stamp[:20]!r} is not a Unix time") \
            from None
    if abs(now_seconds - moment) > TOLERANCE_SECONDS:
        raise SignatureError(f"the signature timestamp {moment} is more than "
                             f"{TOLERANCE_SECONDS // 60} minutes from the server's clock; "
                             "a delayed or replayed request is refused")
