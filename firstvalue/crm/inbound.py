"""Inbound webhooks: each verified delivery becomes Segment-spec calls with stable messageIds,
stored through the ingest pipeline, so dedupe and held events work as for any other source.

A delivery is stored whole or not at all: its id goes into `inbound_webhooks` in the same
transaction as its events, and a replay of that id stores nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.ingest.messages import Accepted, Rejected, validate_message
from firstvalue.ingest.pipeline import store_messages
from firstvalue.store.database import Database, holds_nul

log = logging.getLogger(__name__)

def crm_actor(account_id: str) -> str:
    """The anonymousId of the calls made from an account's CRM deals: one per account, so
    that no single actor is a member of every account."""
    return "crm-" + hashlib.blake2b(account_id.encode(), digest_size=8).hexdigest()


class PayloadError(Exception):
    """Raised when a verified webhook's body cannot be mapped: it names the value and the fix."""


@dataclass(frozen=True)
class InboundResult:
    delivery_id: str
    duplicate: bool
    statuses: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id,
                "status": "duplicate" if self.duplicate else "accepted",
                "events": list(self.statuses)}


Mapper = Callable[[sa.Connection], list[dict[str, Any]]]


def store_delivery(database: Database, source: str, delivery_id: str, mapper: Mapper,
                   received_at: int, anchor_names: frozenset[str]) -> InboundResult:
    """Map and store one delivery in one transaction; a known delivery id stores nothing."""
    with database.write() as conn:
        # The delivery id is claimed first: of two copies arriving at once, the second waits
        # for the first's transaction on the unique index, then finds it taken (PostgreSQL).
        claimed = conn.execute(sa.text(
            "INSERT INTO inbound_webhooks (source, delivery_id, received_at, events) "
            "VALUES (:s, :d, :at, 0) ON CONFLICT (source, delivery_id) DO NOTHING"),
            {"s": source, "d": delivery_id, "at": received_at}).rowcount
        if not claimed:
            log.info("Webhook %s from %s was delivered before; it is ignored.", delivery_id,
                     source)
            return InboundResult(delivery_id, True, ())
        accepted = _validated(mapper(conn), received_at)
        conn.execute(sa.text(
            "UPDATE inbound_webhooks SET events = :n WHERE source = :s AND delivery_id = :d"),
            {"s": source, "d": delivery_id, "n": len(accepted)})
        statuses = store_messages(conn, accepted, anchor_names).statuses if accepted else []
    log.info("Webhook %s from %s stored %d event(s).", delivery_id, source, len(accepted))
    return InboundResult(delivery_id, False, tuple(statuses))


def _validated(messages: Sequence[dict[str, Any]], received_at: int) -> list[Accepted]:
    accepted = []
    for message in messages:
        judged = validate_message(msgspec.json.encode(message), received_at)
        if isinstance(judged, Rejected):
            raise PayloadError(f"{message.get('event') or message.get('type')}: {judged.reason}")
        accepted.append(judged)
    return accepted


def decode_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise PayloadError(f"the body is not JSON; send the {what} payload as JSON") from None
    if not isinstance(data, dict):
        raise PayloadError(f"the body is {type(data).__name__}, not an object; send the {what} "
                           "payload")
    # JSON carries a NUL only as the escape \u0000; no id, name or address holds one, and
    # PostgreSQL text cannot store one.
    if holds_nul(data, body):
        raise PayloadError("the payload holds a NUL character (\\u0000); remove it")
    return data


def text_field(data: dict[str, Any], name: str, where: str, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"`{where}{name}` is {value!r}; send it as a non-empty string")
    return value.strip()


def time_field(data: dict[str, Any], name: str, where: str,
               required: bool = True) -> str | None:
    """An ISO 8601 time with an offset, as text."""
    value = text_field(data, name, where, required)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise PayloadError(f"`{where}{name}` is {value!r}; send an ISO 8601 time with an "
                           "offset, e.g. 2026-03-01T10:00:00Z")
    return value


# CRM deals --------------------------------------------------------------------------------

DEAL_EVENTS = {"deal.closed_won": "Deal Closed Won", "deal.renewed": "Renewal Closed",
               "deal.expanded": "Expansion Closed", "account.churned": "Account Churned"}
ACCOUNT_TRAITS = ("name", "segment", "tier", "timezone", "country", "owner", "owner_email")


def crm_messages(payload: dict[str, Any], delivery_id: str) -> list[dict[str, Any]]:
    """The Segment calls of one CRM webhook (docs/integrations.md, "CRM webhooks")."""
    kind = payload.get("type")
    if kind not in DEAL_EVENTS:
        raise PayloadError(f"`type` is {kind!r}; send one of {', '.join(DEAL_EVENTS)}")
    account_id = text_field(payload, "account_id", "")
    occurred_at = time_field(payload, "occurred_at", "")
    deal = payload.get("deal") or {}
    account = payload.get("account") or {}
    handoff = payload.get("handoff")
    if not isinstance(deal, dict) or not isinstance(account, dict):
        raise PayloadError("`deal` and `account` must be objects when present")
    if handoff is not None and not isinstance(handoff, dict):
        raise PayloadError(f"`handoff` is {type(handoff).__name__}; send an object or leave "
                           "it out")

    properties: dict[str, Any] = {}
    deal_id = text_field(deal, "id", "deal.", required=kind != "account.churned")
    if deal_id:
        properties["deal_id"] = deal_id
    for name in ("arr", "amount"):
        if deal.get(name) is not None:
            properties[name] = _number(deal[name], f"deal.{name}")
    if kind == "deal.expanded" and "amount" not in properties:
        raise PayloadError("`deal.amount` is missing; an expansion needs its amount")
    for name in ("plan", "ae", "reason"):
        if isinstance(deal.get(name), str):
            properties[name] = deal[name]
    when = occurred_at
    if kind == "deal.closed_won":
        when = time_field(deal, "contract_signed_at", "deal.", required=False) or occurred_at

    traits = {k: account[k] for k in ACCOUNT_TRAITS if account.get(k) is not None}
    if kind == "deal.closed_won":
        traits.update({k: properties[k] for k in ("arr", "plan", "ae") if k in properties})
        if handoff:
            traits["handoff"] = handoff  # kept as a trait until the handoff record exists
    messages = []
    if traits:
        messages.append({"type": "group", "messageId": f"crm:{delivery_id}:group",
                         "anonymousId": crm_actor(account_id), "groupId": account_id,
                         "timestamp": occurred_at, "traits": traits})
    messages.append({"type": "track", "messageId": f"crm:{delivery_id}:track",
                     "anonymousId": crm_actor(account_id), "event": DEAL_EVENTS[kind],
                     "timestamp": when, "properties": properties,
                     "context": {"groupId": account_id}})
    return messages


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"`{where}` is {value!r}; send a number, e.g. 36000")
    return value


# Email engagement -------------------------------------------------------------------------

EMAIL_EVENTS = {"email.opened": "Email Opened", "email.clicked": "Email Clicked",
                "email.replied": "Email Replied"}


def email_messages(conn: sa.Connection, payload: dict[str, Any],
                   delivery_id: str) -> list[dict[str, Any]]:
    """One `Email Opened/Clicked/Replied` by the contact the recipient address belongs to."""
    from firstvalue.crm.contacts import contact_ids

    kind = payload.get("type")
    if kind not in EMAIL_EVENTS:
        raise PayloadError(f"`type` is {kind!r}; send one of {', '.join(EMAIL_EVENTS)}")
    recipient = text_field(payload, "recipient", "") or ""
    occurred_at = time_field(payload, "occurred_at", "")
    user_id = contact_ids(conn, {recipient})[recipient.strip().lower()]
    properties = {k: payload[k] for k in ("message_id", "campaign", "url")
                  if isinstance(payload.get(k), str)}
    message: dict[str, Any] = {"type": "track", "messageId": f"email:{delivery_id}",
                               "userId": user_id, "event": EMAIL_EVENTS[kind],
                               "timestamp": occurred_at, "properties": properties}
    if isinstance(payload.get("account_id"), str) and payload["account_id"]:
        message["context"] = {"groupId": payload["account_id"]}
    return [message]
