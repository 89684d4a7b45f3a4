"""The fast paths of bulk import store exactly what the careful path of HTTP ingest stores.

A file import guesses that its ids are new and lets the unique index tell (rolling back to a
savepoint when one is stored after all), pauses the garbage collector, and on PostgreSQL stores
one chunk while it validates the next. None of that may change an outcome: statuses, rows,
attribution, held events, traits, conflicts.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from firstvalue.ingest import files
from firstvalue.ingest.files import ImportSummary, import_file
from firstvalue.ingest.messages import validate_message
from firstvalue.ingest.service import ingest_messages
from firstvalue.store import events as event_store
from firstvalue.store.database import open_database
from firstvalue.store.events import read_counter
from firstvalue.store.traits import plain_traits
from tests.conftest import encode, micros

NOW = micros("2026-11-10T12:00:00Z")


def group(mid: str, user: str, account: str, at: str, **traits: Any) -> dict[str, Any]:
    return {"type": "group", "messageId": mid, "userId": user, "groupId": account,
            "timestamp": at, "traits": traits}


def track(mid: str, user: str, name: str, at: str, account: str | None = None,
          **properties: Any) -> dict[str, Any]:
    message = {"type": "track", "messageId": mid, "userId": user, "event": name,
               "timestamp": at, "properties": properties}
    if account:
        message["context"] = {"groupId": account}
    return message


def identify(mid: str, user: str, at: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": mid, "userId": user, "timestamp": at,
            "traits": traits}


# Late group calls (re-attribution), a held event whose account appears later, duplicates
# inside the file and a conflicting redelivery.
MESSAGES = [
    group("g1", "u1", "acme", "2026-10-01T08:00:00Z", name="Acme", segment="mid_market"),
    identify("i1", "u1", "2026-10-01T08:01:00Z", role="champion"),
    track("t1", "u1", "Workspace Created", "2026-10-02T09:00:00Z"),
    track("t2", "u2", "Signed In", "2026-10-02T10:00:00Z"),
    track("t3", "u3", "Deal Closed Won", "2026-10-03T09:00:00Z", "globex", deal_id="d1"),
    track("t4", "u4", "Signed In", "2026-10-03T10:00:00Z", "initech"),
    track("t1", "u1", "Workspace Created", "2026-10-02T09:00:00Z"),
    group("g2", "u2", "acme", "2026-10-02T09:30:00Z"),
    track("t5", "u2", "Workflow Run", "2026-10-04T09:00:00Z", template="weekly"),
    track("t2", "u2", "Signed Out", "2026-10-02T10:00:00Z"),
    group("g3", "u4", "initech", "2026-10-05T08:00:00Z", segment="smb"),
    group("g4", "u1", "globex", "2026-10-06T08:00:00Z", tier=2),
    track("t6", "u1", "Signed In", "2026-10-07T08:00:00Z"),
    identify("i2", "u2", "2026-10-07T09:00:00Z", role="admin"),
]


def write_jsonl(path: Path, messages: list[dict[str, Any]]) -> Path:
    """One message a line, as the same bytes that `encode` gives the HTTP path."""
    path.write_bytes(b"".join(encode(m) + b"\n" for m in messages))
    return path


def snapshot(database) -> dict[str, Any]:
    """What the store holds, without the row ids that insertion order assigns."""
    with database.engine.connect() as conn:
        def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(tuple(row) for row in conn.execute(sa.text(sql)))

        return {
            "events": rows("SELECT message_id, type, name, account_id, group_id, user_id, ts, "
                           "received_at, attached_at, flags, properties FROM events"),
            "accounts": rows("SELECT id, traits, created_at, change_seq FROM accounts"),
            "contacts": rows("SELECT user_id, traits, updated_at FROM contacts"),
            "memberships": rows("SELECT message_id, user_id, account_id, ts FROM memberships"),
            "conflicts": read_counter(conn, "ingest_conflicts"),
        }


def import_lines(database, path: Path) -> ImportSummary:
    summary = ImportSummary()
    import_file(database, path, NOW, frozenset({"Deal Closed Won"}), summary)
    return summary


def test_a_file_import_stores_what_http_ingest_stores_chunk_for_chunk(sqlite_database,
                                                                        tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CHUNK_LINES", 4)
    path = write_jsonl(tmp_path / "events.jsonl", MESSAGES)
    careful = open_database(f"sqlite:///{tmp_path / 'careful.db'}")

    summary = import_lines(sqlite_database, path)
    statuses = []
    for start in range(0, len(MESSAGES), 4):
        part = [encode(m) for m in MESSAGES[start:start + 4]]
        statuses += [s.status for s in ingest_messages(careful, part, NOW,
                                                       frozenset({"Deal Closed Won"}),
                                                       from_file=True)]

    assert dict(summary.statuses) == {s: statuses.count(s) for s in set(statuses)}
    assert snapshot(sqlite_database) == snapshot(careful)
    careful.dispose()


def test_a_chunk_holding_a_stored_id_is_stored_as_if_nothing_had_been_guessed(database,
                                                                              tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(files, "CHUNK_LINES", 3)
    import_lines(database, write_jsonl(tmp_path / "first.jsonl", MESSAGES[:6]))
    before = snapshot(database)
    second = [track("t7", "u1", "Workflow Run", "2026-10-08T09:00:00Z"),
              track("t1", "u1", "Workspace Deleted", "2026-10-02T09:00:00Z"),
              group("g5", "u5", "acme", "2026-10-08T08:00:00Z", plan="pro")]

    summary = import_lines(database, write_jsonl(tmp_path / "second.jsonl", second))

    after = snapshot(database)
    assert dict(summary.statuses) == {"accepted": 2, "duplicate": 1}
    assert after["conflicts"] == before["conflicts"] + 1
    assert len(after["events"]) == len(before["events"]) + 2
    assert [e for e in after["events"] if e[0] == "t1"] == \
        [e for e in before["events"] if e[0] == "t1"]
    acme = next(a for a in after["accounts"] if a[0] == "acme")
    assert plain_traits(json.loads(acme[1]))["plan"] == "pro"
    assert ("g5", "u5", "acme", micros("2026-10-08T08:00:00Z")) in after["memberships"]


def test_importing_a_file_twice_changes_nothing_the_second_time(database, tmp_path,
                                                                monkeypatch):
    monkeypatch.setattr(files, "CHUNK_LINES", 5)
    path = write_jsonl(tmp_path / "events.jsonl", MESSAGES)
    import_lines(database, path)
    before = snapshot(database)

    summary = import_lines(database, path)

    after = snapshot(database)
    assert dict(summary.statuses) == {"duplicate": len(MESSAGES)}
    assert {k: v for k, v in after.items() if k not in ("accounts", "conflicts")} == \
        {k: v for k, v in before.items() if k not in ("accounts", "conflicts")}
    assert [a[:3] for a in after["accounts"]] == [a[:3] for a in before["accounts"]]


def test_a_nul_is_found_whether_or_not_the_bytes_look_escaped():
    escaped = encode({"type": "track", "userId": "a\x00b", "event": "X"})
    literal = b'{"type": "track", "userId": "a\\\\u0000b", "event": "X"}'

    assert "NUL" in validate_message(escaped, NOW).reason  # type: ignore[union-attr]
    assert validate_message(literal, NOW).actor == "a\\u0000b"  # type: ignore[union-attr]


# A bulk load: one transaction, the costly indexes dropped and built again, ids checked against
# a set. It must store what the chunked import stores.

def import_in_bulk(database, path: Path, bulk: bool | None = True) -> ImportSummary:
    summary = ImportSummary()
    import_file(database, path, NOW, frozenset({"Deal Closed Won"}), summary, bulk=bulk)
    return summary


def event_indexes(database) -> set[str]:
    with database.engine.connect() as conn:
        return {index["name"] for index in sa.inspect(conn).get_indexes("events")}


def test_a_bulk_load_stores_what_the_chunked_import_stores(database, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CHUNK_LINES", 4)  # duplicates and late groups across chunks
    path = write_jsonl(tmp_path / "events.jsonl", MESSAGES)
    chunked = open_database(f"sqlite:///{tmp_path / 'chunked.db'}")
    indexes = event_indexes(database)

    bulk_summary = import_in_bulk(database, path)
    chunked_summary = import_in_bulk(chunked, path, bulk=False)

    assert bulk_summary.statuses == chunked_summary.statuses
    assert bulk_summary.statuses["duplicate"] == 2
    stored, expected = snapshot(database), snapshot(chunked)
    # A bulk load counts each account's change once, not once a chunk.
    assert [a[:3] for a in stored.pop("accounts")] == [a[:3] for a in expected.pop("accounts")]
    assert stored == expected
    assert stored["conflicts"] == 1  # t2 came back as another event
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM accounts WHERE change_seq > "
                                    "evaluated_seq")).scalar() == 3
    assert event_indexes(database) == indexes
    chunked.dispose()


def test_a_bulk_load_into_a_store_checks_ids_against_it(database, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CHUNK_LINES", 3)
    import_in_bulk(database, write_jsonl(tmp_path / "first.jsonl", MESSAGES[:6]), bulk=False)
    before = snapshot(database)
    second = [track("t7", "u1", "Workflow Run", "2026-10-08T09:00:00Z"),
              track("t1", "u1", "Workspace Deleted", "2026-10-02T09:00:00Z"),
              track("t3", "u3", "Deal Closed Won", "2026-10-03T09:00:00Z", "globex",
                    deal_id="d1"),
              track("t7", "u1", "Workflow Run", "2026-10-08T09:00:00Z"),
              group("g5", "u5", "acme", "2026-10-08T08:00:00Z", plan="pro")]

    summary = import_in_bulk(database, write_jsonl(tmp_path / "second.jsonl", second))

    after = snapshot(database)
    assert dict(summary.statuses) == {"accepted": 2, "duplicate": 3}
    assert after["conflicts"] == before["conflicts"] + 1  # t1 differs; t3 and t7 do not
    assert len(after["events"]) == len(before["events"]) + 2
    assert [e for e in after["events"] if e[0] == "t1"] == \
        [e for e in before["events"] if e[0] == "t1"]
    # The unique index is back:
    with pytest.raises(sa.exc.IntegrityError), database.write() as conn:
        conn.execute(sa.text("INSERT INTO events (message_id, type, ts, received_at) "
                             "VALUES ('t7', 'track', 1, 1)"))


def test_a_bulk_load_that_fails_stores_nothing_and_keeps_the_indexes(database, tmp_path,
                                                                     monkeypatch):
    import_in_bulk(database, write_jsonl(tmp_path / "first.jsonl", MESSAGES[:3]), bulk=False)
    before, indexes = snapshot(database), event_indexes(database)
    monkeypatch.setattr(files, "CHUNK_LINES", 4)
    calls = []
    real = files.store_messages

    def failing_second_chunk(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the disk is full")
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "store_messages", failing_second_chunk)
    with pytest.raises(RuntimeError, match="disk is full"):
        import_in_bulk(database, write_jsonl(tmp_path / "all.jsonl", MESSAGES))

    assert snapshot(database) == before
    assert event_indexes(database) == indexes


def test_a_file_is_loaded_in_bulk_when_it_is_large_and_the_store_is_not(sqlite_database,
                                                                       tmp_path, monkeypatch):
    monkeypatch.setattr(files, "BULK_MIN_LINES", 10)
    small = write_jsonl(tmp_path / "small.jsonl", MESSAGES[:5])
    large = write_jsonl(tmp_path / "large.jsonl",
                        [track(f"x{n}", "u1", "Signed In", "2026-10-02T09:00:00Z")
                         for n in range(40)])
    gzipped = tmp_path / "large.jsonl.gz"
    gzipped.write_bytes(gzip.compress(large.read_bytes()))

    assert not files.bulk_fits(sqlite_database, small)  # under BULK_MIN_LINES
    assert files.bulk_fits(sqlite_database, large)
    assert files.bulk_fits(sqlite_database, gzipped)
    import_in_bulk(sqlite_database, large, bulk=False)
    assert files.bulk_fits(sqlite_database, large)  # as many lines as stored events
    import_in_bulk(sqlite_database, write_jsonl(
        tmp_path / "more.jsonl", [track(f"y{n}", "u1", "Signed In", "2026-10-02T09:00:00Z")
                                  for n in range(10)]), bulk=False)
    assert not files.bulk_fits(sqlite_database, large)  # the store holds more


def test_the_line_estimate_follows_the_file(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl",
                       [track(f"id-{n}", f"user-{n % 7}", "Signed In", "2026-10-02T09:00:00Z",
                              page="x" * (n % 50)) for n in range(20_000)])
    gzipped = tmp_path / "many.jsonl.gz"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))

    for estimated in (files._estimated_lines(path), files._estimated_lines(gzipped)):
        assert 19_000 <= estimated <= 21_000
    assert files._estimated_lines(write_jsonl(tmp_path / "empty.jsonl", [])) == 0


def test_the_line_estimate_of_odd_gzip_files_stays_near_their_lines(tmp_path):
    line = encode(track("a1", "u1", "Signed In", "2026-10-02T09:00:00Z")) + b"\n"
    many = [encode(track(f"id-{n}", "u1", "Signed In", "2026-10-02T09:00:00Z",
                         page="x" * (n % 50))) + b"\n" for n in range(60_000)]
    odd = {
        # gzip's trailer would say 4 GiB were added: the content is smaller than the file
        "tiny.jsonl.gz": (gzip.compress(line), 1),
        "zeros.jsonl.gz": (gzip.compress(line) + b"\0" * 16, 1),  # padding gzip reads past
        "padded.jsonl.gz": (gzip.compress(line * 3) + b"\0" * 5_000_000, 3),  # no content
        # two members, the last one tiny: the trailer speaks of the last one only
        "members.jsonl.gz": (gzip.compress(b"".join(many[:-2])) + gzip.compress(
            b"".join(many[-2:])), 60_000),
        "broken.jsonl.gz": (b"not gzip at all", 0),
    }
    for name, (content, lines) in odd.items():
        (tmp_path / name).write_bytes(content)
        assert abs(files._estimated_lines(tmp_path / name) - lines) <= lines * 0.1, name


def test_a_bulk_load_on_postgresql_goes_in_chunks_while_a_tick_reads_events(
        postgres_database, tmp_path, monkeypatch):
    monkeypatch.setattr(event_store, "TABLE_LOCK_SECONDS", 0.5)
    path = write_jsonl(tmp_path / "events.jsonl", MESSAGES)
    chunked = open_database(f"sqlite:///{tmp_path / 'chunked.db'}")
    reader = postgres_database.engine.connect()  # a tick's open transaction over events
    reader.execute(sa.text("SELECT COUNT(*) FROM events")).scalar()
    try:
        summary = import_in_bulk(postgres_database, path)
    finally:
        reader.close()

    assert summary.in_bulk == []
    assert summary.statuses == import_in_bulk(chunked, path, bulk=False).statuses
    assert snapshot(postgres_database) == snapshot(chunked)
    assert import_in_bulk(postgres_database, path).in_bulk == [str(path)]  # once it is free
    chunked.dispose()


def test_a_repeat_is_compared_with_the_event_that_stands_in_bulk_and_in_chunks(database,
                                                                              tmp_path):
    stored = track("x", "u1", "Signed In", "2026-10-02T09:00:00Z")
    changed = track("x", "u1", "Signed Out", "2026-10-02T09:00:00Z")
    import_in_bulk(database, write_jsonl(tmp_path / "first.jsonl", [stored]), bulk=False)
    again = write_jsonl(tmp_path / "again.jsonl", [changed, stored, changed])

    for bulk in (False, True):
        before = snapshot(database)["conflicts"]
        summary = import_in_bulk(database, again, bulk=bulk)
        assert dict(summary.statuses) == {"duplicate": 3}
        # Two redeliveries differ from the stored event; the faithful one is no conflict,
        # whichever copy came first in the file.
        assert snapshot(database)["conflicts"] == before + 2

    statuses = ingest_messages(database, [encode(changed), encode(stored)], NOW,
                               frozenset({"Deal Closed Won"}))
    assert [s.status for s in statuses] == ["duplicate", "duplicate"]
    assert snapshot(database)["conflicts"] == 5


def test_a_bulk_load_keeps_no_table_of_its_repeats(database, tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", MESSAGES)
    import_in_bulk(database, path)
    summary = import_in_bulk(database, path)  # all repeats

    assert dict(summary.statuses) == {"duplicate": len(MESSAGES)}
    assert snapshot(database)["conflicts"] == 2  # t2's changed copy, in each import
    with database.engine.connect() as conn:
        assert event_store.REPEATS_TABLE not in sa.inspect(conn).get_table_names()


def test_each_conflict_is_logged_once_in_bulk_and_in_chunks(database, tmp_path, caplog):
    stored = track("x", "u1", "Signed In", "2026-10-02T09:00:00Z")
    import_in_bulk(database, write_jsonl(tmp_path / "first.jsonl", [stored]), bulk=False)
    # In chunks the first attempt assumes new ids, meets `x` stored and starts again.
    again = write_jsonl(tmp_path / "again.jsonl",
                        [track("x", "u1", "Signed Out", "2026-10-02T09:00:00Z"),
                         track("y", "u1", "Signed In", "2026-10-02T09:00:00Z"),
                         track("y", "u1", "Signed Out", "2026-10-02T09:00:00Z")])

    for bulk in (False, True):
        caplog.clear()
        with caplog.at_level("WARNING", logger="firstvalue.ingest.pipeline"):
            import_in_bulk(database, again, bulk=bulk)
        logged = [r.getMessage() for r in caplog.records if "redelivered" in r.getMessage()]
        assert sorted(logged) == sorted(
            f"Event {mid} was redelivered with different content; the stored one stands."
            for mid in ("x", "y")), bulk


def test_a_load_with_many_conflicts_logs_ten_and_counts_the_rest(database, tmp_path, caplog):
    first = [track(f"c{n}", "u1", "Signed In", "2026-10-02T09:00:00Z") for n in range(25)]
    import_in_bulk(database, write_jsonl(tmp_path / "first.jsonl", first), bulk=False)
    changed = [track(f"c{n}", "u1", "Signed Out", "2026-10-02T09:00:00Z") for n in range(25)]

    with caplog.at_level("WARNING", logger="firstvalue.ingest.pipeline"):
        import_in_bulk(database, write_jsonl(tmp_path / "changed.jsonl", changed))

    messages = [r.getMessage() for r in caplog.records if "redelivered" in r.getMessage()]
    assert len(messages) == 11
    assert messages[-1].startswith("15 more events were redelivered")
    assert snapshot(database)["conflicts"] == 25


def test_a_damaged_gzip_that_falls_back_to_chunks_stores_nothing(postgres_database, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(event_store, "TABLE_LOCK_SECONDS", 0.2)
    monkeypatch.setattr(files, "CHUNK_LINES", 3)
    content = bytearray(gzip.compress(b"".join(encode(m) + b"\n" for m in MESSAGES),
                                      compresslevel=0))
    at = content.index(b'"t6"')
    content[at + 2] = ord("9")  # found only by the checksum at the end
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(bytes(content))
    reader = postgres_database.engine.connect()  # keeps the bulk load out: it goes in chunks
    reader.execute(sa.text("SELECT COUNT(*) FROM events")).scalar()
    try:
        with pytest.raises(files.ImportFileError, match="nothing of it was stored"):
            import_in_bulk(postgres_database, path)
    finally:
        reader.close()

    assert snapshot(postgres_database)["events"] == []
