"""Channels: how one action reaches the world. Each delivery is idempotent on the receiving end.

An email carries a Message-ID derived from the action's key; a webhook carries the key as its
`webhook-id`; a Slack message carries the key in its metadata text. A delivery repeated after a
crash is therefore recognisable as the same one by whoever receives it.
"""

from __future__ import annotations

import hashlib
import smtplib
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgspec

from firstvalue.settings import get_setting


class DeliveryError(Exception):
    """A delivery that did not happen; `retry_after`, `gone` and `unset` say what next.

    `unset` means the channel is not configured: the action waits for it without using up
    its attempts.
    """

    def __init__(self, message: str, retry_after: float | None = None, gone: bool = False,
                 unset: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.gone = gone
        self.unset = unset


@dataclass(frozen=True)
class Outgoing:
    """A rendered action, ready to go."""

    key: str
    kind: str
    address: str | None
    subject: str | None
    body: str
    payload: dict[str, Any]
    internal: bool = False  # to the account team (owner, manager), not to the customer
    address_source: str = "the contact's `email` trait"


def message_id_for(key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@firstvalue>"


def send_email(outgoing: Outgoing) -> None:
    host = get_setting("smtp_host")
    if not host:
        raise DeliveryError("no SMTP server is set; set FIRSTVALUE_SMTP_HOST", retry_after=3600,
                            unset=True)
    if not outgoing.address:
        raise DeliveryError(f"the recipient has no email address ({outgoing.address_source})",
                            gone=True)
    try:
        port = int(get_setting("smtp_port") or 25)
    except ValueError:
        raise DeliveryError(f"FIRSTVALUE_SMTP_PORT={get_setting('smtp_port')!r} is not a port "
                            "number; set it to e.g. 25 or 587", retry_after=3600,
                            unset=True) from None
    address = outgoing.address.strip()
    if any(c in address for c in "\r\n\x00,;") or "@" not in address:
        raise DeliveryError(f"the recipient address is not one email address "
                            f"({outgoing.address_source})", gone=True)
    message = EmailMessage()
    message["From"] = get_setting("smtp_from") or "onboarding@firstvalue.invalid"
    message["To"] = address
    message["Subject"] = outgoing.subject or f"firstvalue: {outgoing.payload.get('rule')}"
    message["Message-ID"] = message_id_for(outgoing.key)
    message["X-Firstvalue-Action"] = outgoing.key
    message.set_content(outgoing.body)
    try:
        with smtplib.SMTP(host, port, timeout=15) as smtp:
            user = get_setting("smtp_user")
            if user:
                smtp.login(user, get_setting("smtp_password") or "")
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        raise DeliveryError(f"SMTP server refused the recipient ({codes})",
                            gone=all(500 <= code < 600 for code in codes)) from None
    except smtplib.SMTPResponseException as exc:
        permanent = 500 <= exc.smtp_code < 600
        raise DeliveryError(f"SMTP server answered {exc.smtp_code}", gone=permanent) from None
    except (TimeoutError, OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP server unreachable: {type(exc).__name__}") from None


def post_json(url: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        response = httpx.post(url, content=body, headers={"content-type": "application/json",
                                                          **headers}, timeout=15)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"receiver unreachable: {type(exc).__name__}") from None
    if response.status_code < 300:
        return
    if response.status_code == 410:
        raise DeliveryError("the receiver answered 410 Gone", gone=True)
    retry_after = _retry_after(response.headers.get("retry-after"))
    raise DeliveryError(f"the receiver answered {response.status_code}",
                        retry_after=retry_after)


def send_slack(outgoing: Outgoing) -> None:
    url = get_setting("slack_webhook_url")
    if not url:
        raise DeliveryError("no Slack webhook is set", retry_after=3600, unset=True)
    body = msgspec.json.encode({"text": outgoing.body,
                                "blocks": [{"type": "section",
                                            "text": {"type": "mrkdwn", "text": outgoing.body}},
                                           {"type": "context", "elements": [
                                               {"type": "plain_text",
                                                "text": f"firstvalue {outgoing.key}"}]}]})
    post_json(url, body, {})


def send_webhook(outgoing: Outgoing) -> None:
    from standardwebhooks import Webhook

    url = get_setting("webhook_url")
    secret = get_setting("webhook_secret")
    if not url or not secret:
        raise DeliveryError("no webhook receiver is set; set FIRSTVALUE_WEBHOOK_URL and "
                            "FIRSTVALUE_WEBHOOK_SECRET", retry_after=3600, unset=True)
    body = msgspec.json.encode(outgoing.payload)
    timestamp = time.time()
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(timestamp, UTC)
    signature = Webhook(secret).sign(outgoing.key, moment, body.decode())
    post_json(url, body, {"webhook-id": outgoing.key,
                          "webhook-timestamp": str(int(timestamp)),
                          "webhook-signature": signature})


def slack_is_set_up() -> bool:
    return bool(get_setting("slack_webhook_url"))


def _retry_after(header: str | None) -> float | None:
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


def unset_channels() -> list[str]:
    """The channels `serve` and `dispatch` cannot deliver on yet, each with what sets it up.
    Their actions stay pending (without using up attempts) until it is done."""
    missing = []
    if not get_setting("smtp_host"):
        missing.append("email: set FIRSTVALUE_SMTP_HOST")
    if not slack_is_set_up():
        missing.append("Slack: set FIRSTVALUE_SLACK_WEBHOOK_URL (owner alerts go by email "
                       "meanwhile)")
    if not (get_setting("webhook_url") and get_setting("webhook_secret")):
        missing.append("webhooks: set FIRSTVALUE_WEBHOOK_URL and FIRSTVALUE_WEBHOOK_SECRET")
    return missing
