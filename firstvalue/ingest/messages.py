"""Decoding and validating Segment-spec messages, one at a time.

Each message is judged on its own: a bad one is rejected with a reason and never stops the rest.
The hot path decodes with msgspec and keeps `properties` as the raw JSON bytes it arrived as,
so nothing is parsed twice or re-encoded on the way into the store.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import msgspec

from firstvalue.clock import to_micros
from firstvalue.store.database import holds_nul

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_NAME_LENGTH = 200
MAX_ID_LENGTH = 200
SUPPORTED_TYPES = ("track", "identify", "group")

FLAG_CLAMPED = 1  # the timestamp was in the future after clock correction, so set to arrival


# gc=False: these hold only strings, numbers and times, never a cycle, so the collector need not
# track the millions of them a bulk import makes.
class Context(msgspec.Struct, gc=False):
    groupId: str | int | None = None
    traits: msgspec.Raw = msgspec.Raw(b"")  # RudderStack's identify puts the traits here


class Message(msgspec.Struct, gc=False):
    type: str | None = None
    messageId: str | None = None
    userId: str | int | None = None
    anonymousId: str | int | None = None
    event: str | None = None
    groupId: str | int | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    receivedAt: datetime | None = None  # only read from files: an archive's own arrival time
    properties: msgspec.Raw = msgspec.Raw(b"")  # empty: not given
    traits: msgspec.Raw = msgspec.Raw(b"")
    context: Context | None = None


class Batch(msgspec.Struct):
    batch: list[msgspec.Raw]
    sentAt: datetime | None = None


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """A valid message, normalised for the store (times in microseconds, UTC)."""

    message_id: str
    type: str
    name: str | None
    group_id: str | None
    actor: str | None
    anonymous_id: str | None
    ts: int
    received_at: int
    flags: int
    payload: str  # properties (track) or traits (identify, group), as JSON text


class Rejected(msgspec.Struct, frozen=True, gc=False):
    reason: str


_decode_message = msgspec.json.Decoder(Message).decode
_decode_batch = msgspec.json.Decoder(Batch).decode


def decode_batch(body: bytes) -> Batch:
    """The envelope of a `/v1/batch` body; raises msgspec.DecodeError when it is not one."""
    return _decode_batch(body)


def validate_message(raw: bytes, received_at: int, batch_sent_at: datetime | None = None,
                     implied_type: str | None = None, fallback_id: str | None = None,
                     from_file: bool = False) -> Accepted | Rejected:
    """Judge one message: the normalised event, or the reason it was rejected.

    `implied_type` is the call of a single-message endpoint (`/v1/track` implies `track`).
    `fallback_id` names a message that has no `messageId` (a file's line); without it, one is
    derived from the message's own bytes. A message `from_file` is history: its clock is
    corrected against the `receivedAt` it carries (as Segment's archives do), and not at all
    when it carries none, since the import's own time says nothing about when it was sent.
    """
    if len(raw) > MAX_EVENT_BYTES:
        return Rejected(f"event is {len(raw)} bytes, over the limit of {MAX_EVENT_BYTES} "
                        "(32 KiB); send fewer or smaller properties")
    try:
        message = _decode_message(raw)
    except msgspec.DecodeError as exc:
        return Rejected(f"not a valid event: {_explain_decode_error(exc)}")
    except RecursionError:
        return Rejected("the event is nested too deeply; keep properties a few levels deep")
    return _validate(message, raw, received_at, batch_sent_at, implied_type, fallback_id,
                     from_file)


def _validate(message: Message, raw: bytes, received_at: int, batch_sent_at: datetime | None,
              implied_type: str | None, fallback_id: str | None,
              from_file: bool) -> Accepted | Rejected:
    kind = message.type or implied_type
    if kind is None:
        return Rejected("event has no `type`; set it to track, identify or group")
    if implied_type is not None and kind != implied_type:
        return Rejected(f"type {kind!r} sent to the {implied_type} endpoint; send it to /v1/"
                        f"{kind} or /v1/batch")
    if kind not in SUPPORTED_TYPES:
        return Rejected(f"type {kind!r} is not supported; send track, identify or group")

    user_id = _as_id(message.userId)
    anonymous_id = _as_id(message.anonymousId)
    if user_id is None and anonymous_id is None:
        return Rejected("event has neither `userId` nor `anonymousId`; set one of them")
    if len(user_id or "") > MAX_ID_LENGTH or len(anonymous_id or "") > MAX_ID_LENGTH:
        return Rejected(f"userId or anonymousId is longer than {MAX_ID_LENGTH} characters")

    name = None
    group_id = None
    payload_raw = message.properties
    if kind == "track":
        name = message.event
        if not isinstance(name, str) or not name.strip():
            return Rejected("track event has no `event` name; set it, e.g. 'Workflow Run'")
        if len(name) > MAX_NAME_LENGTH:
            return Rejected(f"event name is {len(name)} characters, over {MAX_NAME_LENGTH}")
        group_id = _as_id(message.context.groupId) if message.context else None
        group_id = group_id or _as_id(message.groupId)
    else:
        payload_raw = message.traits
        if kind == "identify" and not bytes(payload_raw) and message.context is not None:
            payload_raw = message.context.traits
        if kind == "group":
            group_id = _as_id(message.groupId)
            if group_id is None:
                return Rejected("group call has no `groupId`; set it to the account's id")
    if group_id is not None and len(group_id) > MAX_ID_LENGTH:
        return Rejected(f"groupId is longer than {MAX_ID_LENGTH} characters")

    payload = _object_text(payload_raw, read_whole=kind != "track")
    if payload is None:
        field = "properties" if kind == "track" else "traits"
        return Rejected(f"`{field}` must be a JSON object in UTF-8, with numbers a float can "
                        "hold, a few levels deep")

    message_id = message.messageId
    # JSON can only carry a NUL as the escape \u0000: without one in the bytes, skip the check.
    # Traits and properties count too: their values reach text columns (an owner, a rendered
    # email), and PostgreSQL cannot store a NUL there.
    if b"\\u0000" in raw and (holds_nul([name, group_id, user_id, anonymous_id, message_id])
                               or _payload_holds_nul(payload)):
        return Rejected("a name, id, trait or property holds a NUL character (\\u0000); "
                        "remove it")
    if message_id is not None and (not isinstance(message_id, str) or not message_id):
        return Rejected("`messageId` must be a non-empty string")
    if message_id is not None and len(message_id) > MAX_ID_LENGTH:
        return Rejected(f"messageId is longer than {MAX_ID_LENGTH} characters")
    if message_id is None:
        message_id = fallback_id or derive_message_id(raw)

    timing = _event_time(message, received_at, batch_sent_at, from_file)
    if isinstance(timing, Rejected):
        return timing
    ts, flags = timing
    actor = user_id if user_id is not None else f"anonymous:{anonymous_id}"
    return Accepted(message_id, kind, name, group_id, actor, anonymous_id, ts, received_at,
                    flags, payload)


def _event_time(message: Message, received_at: int, batch_sent_at: datetime | None,
                from_file: bool) -> tuple[int, int] | Rejected:
    stamp = message.timestamp or message.originalTimestamp
    if stamp is None:
        return received_at, 0
    if stamp.tzinfo is None:
        return Rejected(f"timestamp {stamp.isoformat()!r} has no UTC offset; add Z or +01:00")
    ts = to_micros(stamp)
    if ts < 0:
        return Rejected(f"timestamp {stamp.isoformat()!r} is before 1970; send the event's real "
                        "time")

    sent_at = message.sentAt or batch_sent_at
    arrival = received_at
    if from_file:
        archived = message.receivedAt
        sent_at = sent_at if archived is not None and archived.tzinfo is not None else None
        arrival = to_micros(archived) if sent_at is not None else received_at  # type: ignore[arg-type]
    if sent_at is not None and sent_at.tzinfo is not None:
        # Correct the client's clock as Segment does: what the client saw as "how long ago"
        # is kept, measured back from when the server received it.
        ts = arrival - (to_micros(sent_at) - ts)
        if ts < 0:
            return Rejected(f"sentAt {sent_at.isoformat()!r} is so far from the server's clock "
                            "that the corrected timestamp falls before 1970; check the "
                            "client's clock")
    if ts > received_at:
        return received_at, FLAG_CLAMPED
    return ts, 0


def _payload_holds_nul(payload: str) -> bool:
    if "\\u0000" not in payload:
        return False  # spares the decode
    try:
        return holds_nul(msgspec.json.decode(payload))
    except (msgspec.DecodeError, RecursionError):
        # Properties too deep to read: a `\u0000` in them cannot be told from text, so the
        # event is refused rather than stored unchecked (its reason names the NUL).
        return True


def _as_id(value: str | int | None) -> str | None:
    if value.__class__ is str:  # the common case, first
        return value.strip() or None  # type: ignore[union-attr]
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _object_text(raw: msgspec.Raw, read_whole: bool = False) -> str | None:
    """The JSON object's text; None when it is not an object, or (for traits, which are read
    at once) not an object firstvalue can read: bad UTF-8, numbers out of range, too deep."""
    data = bytes(raw)
    if data in (b"", b"null"):
        return "{}"
    if data[:1] != b"{":
        return None
    try:
        text = data.decode("utf-8")
        if read_whole:
            msgspec.json.decode(data)
    except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        return None
    return text


def derive_message_id(raw: bytes) -> str:
    """A stable id for a message that came without one: the same bytes give the same id."""
    return "fv-" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def _explain_decode_error(exc: msgspec.DecodeError) -> str:
    text = str(exc)
    if text.startswith("Invalid RFC3339"):
        return text + "; write times as ISO 8601 with an offset, e.g. 2026-03-01T09:00:00Z"
    if text.startswith(("Input data was truncated", "JSON is malformed", "Input data was empty")):
        # The parser's words for text that is not JSON at all (cut short, a stray character).
        return f"it is not valid JSON ({text}); send one JSON object per event"
    return text
