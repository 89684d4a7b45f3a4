"""Calendar bookings (Calendly and Cal.com webhooks) as kickoff and call events.

A booking whose event type is named like a kickoff (FIRSTVALUE_KICKOFF_MATCH) gives `Kickoff
Scheduled`; every booking, kickoffs included, gives `Call Scheduled`, so that the missed-calls
stall rule sees all meetings. A cancellation gives `Call Cancelled`, at the time it was made:
the engine counts a cancellation followed within 24 hours by a new booking as one reschedule,
and one without a rebooking as a missed call. A vendor's own reschedule gives `Call
Rescheduled` (never a cancellation too, so it counts once), a no-show `Call Missed`, and a
meeting that ended (Cal.com's MEETING_ENDED) `Kickoff Completed` or `Call Completed`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa

from firstvalue.crm.contacts import contact_ids
from firstvalue.crm.inbound import PayloadError, text_field, time_field
from firstvalue.settings import get_setting

KICKOFF = "kickoff"
CALL = "call"


class UnknownBooking(PayloadError):
    """Raised when a no-show names a booking not seen yet: the vendor is asked to retry."""


def meeting_kind(*names: Any) -> str:
    word = (get_setting("kickoff_match") or "kickoff").lower()
    return KICKOFF if any(isinstance(n, str) and word in n.lower() for n in names) else CALL


def _track(message_id: str, user_id: str, event: str, when: str, account_id: str | None,
           **properties: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "messageId": message_id, "userId": user_id,
                               "event": event, "timestamp": when,
                               "properties": {k: v for k, v in properties.items()
                                              if v is not None}}
    if account_id:
        message["context"] = {"groupId": account_id}
    return message


def _booked(prefix: str, user_id: str, kind: str, when: str, call_id: str, start: str | None,
            account_id: str | None) -> list[dict[str, Any]]:
    messages = [_track(f"{prefix}:call_scheduled", user_id, "Call Scheduled", when, account_id,
                       call_id=call_id, start_time=start, meeting=kind)]
    if kind == KICKOFF:
        messages.insert(0, _track(f"{prefix}:kickoff_scheduled", user_id, "Kickoff Scheduled",
                                  when, account_id, call_id=call_id, start_time=start))
    return messages


def _remember(conn: sa.Connection, source: str, booking_id: str, user_id: str, kind: str,
              start: str | None, now: int, account_id: str | None = None) -> None:
    conn.execute(sa.text(
        "INSERT INTO calendar_bookings (source, booking_id, user_id, meeting, start_time, "
        "account_id, seen_at) VALUES (:s, :b, :u, :m, :t, :a, :now) ON CONFLICT (source, "
        "booking_id) DO UPDATE SET start_time = :t, account_id = COALESCE(:a, "
        "calendar_bookings.account_id)"),
        {"s": source, "b": booking_id, "u": user_id, "m": kind, "t": start, "a": account_id,
         "now": now})


def _booking(conn: sa.Connection, source: str, booking_id: str) -> Any:
    return conn.execute(sa.text(
        "SELECT user_id, meeting, start_time, account_id FROM calendar_bookings WHERE "
        "source = :s AND booking_id = :b"), {"s": source, "b": booking_id}).first()


# Calendly: developer.calendly.com, "Webhook payload" (invitee.created, invitee.canceled,
# invitee_no_show.created; a reschedule is a cancellation with `rescheduled: true` plus a
# new invitee.created).

CALENDLY_EVENTS = ("invitee.created", "invitee.canceled", "invitee_no_show.created")


def calendly_delivery_id(envelope: dict[str, Any]) -> str:
    payload = envelope.get("payload") if isinstance(envelope.get("payload"), dict) else {}
    uri = payload.get("invitee") or payload.get("uri")
    if envelope.get("event") not in CALENDLY_EVENTS:
        raise PayloadError(f"`event` is {envelope.get('event')!r}; firstvalue reads "
                           f"{', '.join(CALENDLY_EVENTS)}")
    if not isinstance(uri, str) or not uri:
        raise PayloadError("`payload.uri` is missing; send Calendly's webhook payload as is")
    return f"{envelope['event']}:{_short(uri)}"


def calendly_messages(conn: sa.Connection, envelope: dict[str, Any],
                      now: int) -> list[dict[str, Any]]:
    event = envelope["event"]
    payload = envelope["payload"]
    if event == "invitee_no_show.created":
        invitee = text_field(payload, "invitee", "payload.") or ""
        booking = _booking(conn, "calendly", invitee)
        if booking is None:
            raise UnknownBooking(f"no booking {invitee!r} was seen yet; send its "
                                 "invitee.created first (Calendly retries this one)")
        when = booking.start_time or time_field(payload, "created_at", "payload.")
        return [_track(f"calendly:{invitee}:no_show", booking.user_id, "Call Missed", when,
                       None, call_id=invitee, meeting=booking.meeting)]

    uri = text_field(payload, "uri", "payload.") or ""
    email = text_field(payload, "email", "payload.") or ""
    scheduled = payload.get("scheduled_event")
    if not isinstance(scheduled, dict):
        raise PayloadError("`payload.scheduled_event` is missing; send Calendly's payload as is")
    start = time_field(scheduled, "start_time", "payload.scheduled_event.")
    kind = meeting_kind(scheduled.get("name"))
    user_id = contact_ids(conn, {email})[email.lower()]
    prefix = f"calendly:{uri}"
    if event == "invitee.created":
        when = time_field(payload, "created_at", "payload.") or ""
        _remember(conn, "calendly", uri, user_id, kind, start, now)
        return _booked(prefix, user_id, kind, when, uri, start, None)

    cancellation = payload.get("cancellation") if isinstance(payload.get("cancellation"),
                                                             dict) else {}
    when = (time_field(cancellation, "created_at", "payload.cancellation.", required=False)
            or time_field(payload, "updated_at", "payload."))
    name = "Call Rescheduled" if payload.get("rescheduled") is True else "Call Cancelled"
    return [_track(f"{prefix}:canceled", user_id, name, when or "", None, call_id=uri,
                   start_time=start, meeting=kind)]


# Cal.com: cal.com/docs, "Webhooks" (triggerEvent BOOKING_CREATED, BOOKING_RESCHEDULED,
# BOOKING_CANCELLED, BOOKING_NO_SHOW_UPDATED, MEETING_ENDED; payload with uid, startTime,
# endTime, attendees, rescheduleUid, metadata).

CALCOM_EVENTS = ("BOOKING_CREATED", "BOOKING_RESCHEDULED", "BOOKING_CANCELLED",
                 "BOOKING_NO_SHOW_UPDATED", "MEETING_ENDED")


def calcom_delivery_id(envelope: dict[str, Any]) -> str:
    trigger = envelope.get("triggerEvent")
    payload = envelope.get("payload") if isinstance(envelope.get("payload"), dict) else {}
    uid = payload.get("uid") or payload.get("bookingUid")
    if trigger not in CALCOM_EVENTS:
        raise PayloadError(f"`triggerEvent` is {trigger!r}; firstvalue reads "
                           f"{', '.join(CALCOM_EVENTS)}")
    if not isinstance(uid, str) or not uid:
        raise PayloadError("`payload.uid` is missing; send Cal.com's webhook payload as is")
    if trigger == "BOOKING_NO_SHOW_UPDATED":
        # One booking gets many no-show updates (one per attendee marked, or unmarked): each
        # is its own delivery, told apart by its content. Its events keep their own ids.
        digest = hashlib.sha256(json.dumps(envelope, sort_keys=True, default=str)
                                .encode()).hexdigest()[:32]
        return f"{trigger}:{_short(uid)}:{digest}"
    return f"{trigger}:{_short(uid)}"


def _short(value: str) -> str:
    """An id that fits the delivery index whatever its length: long ones by their hash."""
    if len(value) <= 150:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def calcom_messages(conn: sa.Connection, envelope: dict[str, Any],
                    now: int) -> list[dict[str, Any]]:
    trigger = envelope["triggerEvent"]
    payload = envelope["payload"]
    if trigger == "BOOKING_NO_SHOW_UPDATED":
        return _calcom_no_shows(conn, payload)

    uid = text_field(payload, "uid", "payload.") or ""
    attendees = _attendee_ids(conn, payload)
    start = time_field(payload, "startTime", "payload.")
    kind = meeting_kind(payload.get("title"), payload.get("eventTitle"), payload.get("type"))
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    account = metadata.get("firstvalue_account_id")
    account = account if isinstance(account, str) and account else None
    when = time_field(envelope, "createdAt", "")
    prefix = f"calcom:{uid}"
    messages: list[dict[str, Any]] = []
    for user_id in attendees:
        if trigger == "BOOKING_CREATED":
            _remember(conn, "calcom", uid, user_id, kind, start, now, account)
            messages += _booked(f"{prefix}:{user_id}", user_id, kind, when or "", uid, start,
                                account)
        elif trigger == "BOOKING_RESCHEDULED":
            _remember(conn, "calcom", uid, user_id, kind, start, now, account)
            old = payload.get("rescheduleUid") if isinstance(payload.get("rescheduleUid"),
                                                             str) else None
            messages.append(_track(f"{prefix}:{user_id}:rescheduled", user_id,
                                   "Call Rescheduled", when or "", account, call_id=old or uid,
                                   start_time=payload.get("rescheduleStartTime"), meeting=kind))
            messages += _booked(f"{prefix}:{user_id}", user_id, kind, when or "", uid, start,
                                account)
        elif trigger == "BOOKING_CANCELLED":
            messages.append(_track(f"{prefix}:{user_id}:cancelled", user_id, "Call Cancelled",
                                   when or "", account, call_id=uid, start_time=start,
                                   meeting=kind))
        else:  # MEETING_ENDED
            ended = time_field(payload, "endTime", "payload.") or ""
            messages.append(_track(f"{prefix}:{user_id}:completed", user_id, "Call Completed",
                                   ended, account, call_id=uid, attendees=[user_id],
                                   meeting=kind))
            if kind == KICKOFF:
                messages.append(_track(f"{prefix}:{user_id}:kickoff_completed", user_id,
                                       "Kickoff Completed", ended, account, call_id=uid))
    return messages


def _attendee_ids(conn: sa.Connection, payload: dict[str, Any]) -> list[str]:
    attendees = payload.get("attendees")
    if not isinstance(attendees, list) or not attendees:
        raise PayloadError("`payload.attendees` is missing or empty; send Cal.com's payload "
                           "as is")
    emails = []
    for index, attendee in enumerate(attendees):
        if not isinstance(attendee, dict):
            raise PayloadError(f"`payload.attendees[{index}]` is not an object")
        emails.append(text_field(attendee, "email", f"payload.attendees[{index}].") or "")
    ids = contact_ids(conn, set(emails))
    return sorted({ids[email.lower()] for email in emails})


def _calcom_no_shows(conn: sa.Connection, payload: dict[str, Any]) -> list[dict[str, Any]]:
    uid = text_field(payload, "bookingUid", "payload.") or ""
    booking = _booking(conn, "calcom", uid)
    if booking is None:
        raise UnknownBooking(f"no booking {uid!r} was seen yet; send its BOOKING_CREATED first")
    attendees = payload.get("attendees")
    if not isinstance(attendees, list):
        raise PayloadError("`payload.attendees` must be a list of attendees with `email` and "
                           "`noShow`; send Cal.com's payload as is")
    missed = []
    for index, attendee in enumerate(attendees):
        if not isinstance(attendee, dict):
            raise PayloadError(f"`payload.attendees[{index}]` is not an object")
        email = text_field(attendee, "email", f"payload.attendees[{index}].")
        if attendee.get("noShow") is True and email:
            missed.append(email)
    ids = contact_ids(conn, set(missed))
    when = booking.start_time
    return [_track(f"calcom:{uid}:{user_id}:no_show", user_id, "Call Missed", when,
                   booking.account_id, call_id=uid, meeting=booking.meeting)
            for user_id in sorted(ids.values())]
