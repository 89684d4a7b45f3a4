"""Client clock correction: live ingest against the server's clock, history against its own."""

from __future__ import annotations

from firstvalue.ingest.messages import Accepted, validate_message
from tests.conftest import encode, micros

NOW = micros("2026-11-10T12:00:00Z")


def stamp(message: dict, from_file: bool) -> int:
    accepted = validate_message(encode(message), NOW, from_file=from_file)
    assert isinstance(accepted, Accepted), accepted
    return accepted.ts


def test_live_ingest_corrects_the_client_clock_against_the_servers():
    message = {"type": "track", "userId": "u", "event": "E", "messageId": "m",
               "timestamp": "2026-11-10T12:59:00Z", "sentAt": "2026-11-10T13:00:00Z"}
    assert stamp(message, from_file=False) == micros("2026-11-10T11:59:00Z")


def test_an_archived_line_is_corrected_against_its_own_received_at():
    message = {"type": "track", "userId": "u", "event": "E", "messageId": "m",
               "timestamp": "2026-01-05T10:59:00Z", "sentAt": "2026-01-05T11:00:00Z",
               "receivedAt": "2026-01-05T10:00:05Z"}
    assert stamp(message, from_file=True) == micros("2026-01-05T09:59:05Z")


def test_an_archived_line_without_received_at_keeps_its_timestamp():
    message = {"type": "track", "userId": "u", "event": "E", "messageId": "m",
               "timestamp": "2026-01-05T10:59:00Z", "sentAt": "2026-01-05T11:00:00Z"}
    assert stamp(message, from_file=True) == micros("2026-01-05T10:59:00Z")


def test_text_that_is_not_json_is_rejected_as_such_with_the_fix():
    for raw in (b'{"type": "track"', b"{nope", b""):
        judged = validate_message(raw, NOW)
        assert not isinstance(judged, Accepted)
        assert judged.reason.startswith("not a valid event: it is not valid JSON (")
        assert judged.reason.endswith("); send one JSON object per event")
    # Valid JSON of the wrong shape keeps the parser's own words.
    assert validate_message(b"[1, 2]", NOW).reason == \
        "not a valid event: Expected `object`, got `array`"
