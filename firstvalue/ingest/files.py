"""Bulk import of JSONL (one Segment-spec message a line) and CSV (one event a row).

Every line passes the validation and limits of HTTP ingest. A bad line is written to the reject
file with its line number and reason, and the rest of the file goes on. A line without a
`messageId` gets one derived from its content, so importing a file twice stores it once.

CSV columns (all optional but those the event type needs): `type` (default `track`),
`message_id`, `timestamp`, `user_id`, `anonymous_id`, `group_id`, `event`, `properties` and
`traits` (JSON objects), and `properties.NAME` / `traits.NAME` for single values. A single value
that reads as a JSON number, `true`, `false` or `null` is taken as that; anything else as text.
"""

from __future__ import annotations

import csv
import gc
import gzip
import io
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

import msgspec
import sqlalchemy as sa

from firstvalue.errors import ImportFileError
from firstvalue.ingest.messages import Accepted, Rejected, derive_message_id, validate_message
from firstvalue.ingest.pipeline import DUPLICATE, REJECTED, BulkLoad, store_messages
from firstvalue.ingest.service import store_accepted
from firstvalue.store import events as event_store
from firstvalue.store.database import Database

log = logging.getLogger(__name__)

# Lines per transaction. Each commit rewrites the index pages the chunk touched, and with ids
# in random order that is most of them: 10,000 lines a commit halve the rate of 100,000.
CHUNK_LINES = 100_000
ANALYZE_AFTER = 50_000  # events stored by one file import before PostgreSQL re-analyzes them
# A file of this many lines or more is loaded in bulk, unless the store holds more events.
BULK_MIN_LINES = 50_000
SAMPLE_BYTES = 1 << 20  # read to estimate a file's lines from its size
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)
_encode = msgspec.json.encode
# Bytes that are not UTF-8 come out of the "surrogateescape" decoder as these code points.
_UNDECODED = re.compile("[\udc80-\udcff]")


@dataclass
class ImportSummary:
    lines: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    in_bulk: list[str] = field(default_factory=list)  # the files loaded in bulk

    def as_json(self) -> dict[str, Any]:
        return {"lines": self.lines, "statuses": dict(self.statuses),
                "rejected": len(self.rejects), "bulk_files": self.in_bulk}


class Line(NamedTuple):  # a tuple: a bulk import makes one for every line
    number: int
    raw: bytes
    fallback_id: str | None = None
    problem: str | None = None  # set when the row could not even become a message


Judged = Accepted | Rejected | None  # what validation made of a line (None: not a message)


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in JSONL_SUFFIXES:
        return "jsonl"
    if last in CSV_SUFFIXES:
        return "csv"
    raise ImportFileError(
        f"cannot tell the format of {str(path)!r} from its name; name it .jsonl (one message a "
        "line) or .csv (one event a row), optionally with .gz")


def import_file(database: Database, path: Path, received_at: int, anchor_names: frozenset[str],
                summary: ImportSummary, on_progress: Callable[[int], None] | None = None,
                bulk: bool | None = None) -> None:
    """Import one file into the store, adding its outcome to `summary`.

    `bulk` loads it in one transaction with the events table's costly indexes dropped until
    the end (`BulkLoad`); None decides by the file's size against the store's (`bulk_fits`).
    Otherwise each chunk of lines is a transaction of its own.
    """
    kind = file_format(path)
    if not path.is_file():
        raise ImportFileError(f"no such file: {str(path)!r}")
    if bulk is None:
        bulk = bulk_fits(database, path)
    accepted = summary.statuses["accepted"]
    try:
        _import_lines(database, path, kind, received_at, anchor_names, summary, on_progress,
                      bulk)
    except (zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise ImportFileError(
            f"{str(path)!r} is not a whole gzip file ({exc}); nothing of it was stored. Check "
            "it with `gzip -t`, and import it again once it is whole") from None
    if not database.is_sqlite and summary.statuses["accepted"] - accepted >= ANALYZE_AFTER:
        analyze_events(database)


def _check_gzip(path: Path) -> None:
    """Read a gzipped file through, so that damage shows before anything is stored."""
    if _gzipped(path):
        with _open(path) as stream:
            while stream.read(1 << 20):
                pass


def _import_lines(database: Database, path: Path, kind: str, received_at: int,
                  anchor_names: frozenset[str], summary: ImportSummary,
                  on_progress: Callable[[int], None] | None, bulk: bool) -> None:
    with _open(path) as stream, _collector_paused():
        lines = _jsonl_lines(stream) if kind == "jsonl" else _csv_lines(stream, path)
        chunks = _chunks(lines)
        if bulk:
            bulk = _load_in_bulk(database, path, chunks, received_at, anchor_names, summary,
                                 on_progress)
        if not bulk:
            # gzip finds some damage only at the end of the file (its checksum), when chunks
            # read before would be stored already: the file is read through first. (A bulk
            # load rolls back whatever it read.)
            _check_gzip(path)
            save = partial(_save_chunk, database, anchor_names, _Guess())
            _store_all(database, chunks, received_at,
                       partial(_store_chunk, save, path, summary, on_progress))


def _load_in_bulk(database: Database, path: Path, chunks: Iterator[list[Line]],
                  received_at: int, anchor_names: frozenset[str], summary: ImportSummary,
                  on_progress: Callable[[int], None] | None) -> bool:
    """Store the file as one `BulkLoad`; False, having read nothing, when PostgreSQL's events
    table stays in use (a tick, another import), so that it goes in chunks instead."""
    try:
        with database.write() as conn:
            load = BulkLoad.begin(conn)
            save = partial(_save_in_load, conn, anchor_names, load)
            _store_all(database, chunks, received_at,
                       partial(_store_chunk, save, path, summary, on_progress))
            load.finish(conn)
    except event_store.TableInUse:
        log.warning("The events table is in use (a tick or another import); %s is imported "
                    "in chunks instead of in bulk.", path.name)
        return False
    summary.in_bulk.append(str(path))
    return True


def bulk_fits(database: Database, path: Path) -> bool:
    """Whether `path` is best loaded in bulk: it holds at least `BULK_MIN_LINES` lines, and
    no fewer than the store holds events (building the indexes again reads every event)."""
    lines = _estimated_lines(path)
    if lines < BULK_MIN_LINES:
        return False
    with database.engine.connect() as conn:
        return lines >= event_store.events_upper_bound(conn)


def _estimated_lines(path: Path) -> int:
    """The file's lines, estimated from its size and its first MiB: the lines in it, scaled by
    how much of the file it took (of a gzipped file, how many compressed bytes). A file that
    fits in the sample is counted exactly; an unreadable one counts 0 (its import says why)."""
    with path.open("rb") as raw:
        try:
            if _gzipped(path):
                sample, consumed, ended = _gzip_sample(raw)
            else:
                sample = raw.read(SAMPLE_BYTES)
                consumed, ended = len(sample), False
        except (zlib.error, OSError):
            return 0
        whole = ended or not raw.read(1)
    lines = sample.count(b"\n") + (bool(sample) and not sample.endswith(b"\n"))
    if whole or not sample:
        return lines
    return lines * path.stat().st_size // max(consumed, 1)


def _gzip_sample(raw: IO[bytes]) -> tuple[bytes, int, bool]:
    """The first `SAMPLE_BYTES` of a gzipped file's content (all its members, in order), the
    compressed bytes they took, and whether the content ended there (what follows the last
    member, such as zeros gzip pads with, is no content)."""
    parts: list[bytes] = []
    got = consumed = 0
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while got < SAMPLE_BYTES:
        piece = raw.read(4096)
        if not piece:
            break
        consumed += len(piece)
        while piece and got < SAMPLE_BYTES:
            try:
                data = inflate.decompress(piece, SAMPLE_BYTES - got)
            except zlib.error:
                if got:  # what follows the members (gzip allows zeros there) ends the content
                    return b"".join(parts), consumed, True
                raise
            parts.append(data)
            got += len(data)
            if inflate.eof:  # the next member, if any, starts in what is left
                piece = inflate.unused_data
                inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                piece = inflate.unconsumed_tail
        consumed -= len(piece)  # read, but not needed for the sample
        if piece:
            break
    return b"".join(parts), consumed, False


def _store_all(database: Database, chunks: Iterator[list[Line]], received_at: int,
               store: Callable[[list[Line], list[Judged]], None]) -> None:
    if database.is_sqlite:
        for chunk in chunks:
            store(chunk, _judge(chunk, received_at))
    else:
        _store_while_judging(chunks, received_at, store)


def analyze_events(database: Database) -> None:
    """Bring PostgreSQL's statistics of the events table up to date after a bulk load, as its
    manual advises: until autovacuum gets to it (never, where it is off), the planner goes by
    the table as it was and reads a tick's few accounts' events with a scan of the whole
    table (measured: 118 ms where the index takes 32 ms, for 100 accounts of a million
    events). SQLite plans from its indexes without statistics."""
    with database.engine.connect() as conn:
        conn.execute(sa.text("ANALYZE events"))
        conn.commit()


def _chunks(lines: Iterator[Line]) -> Iterator[list[Line]]:
    chunk: list[Line] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _store_while_judging(chunks: Iterator[list[Line]], received_at: int,
                         store: Callable[[list[Line], list[Judged]], None]) -> None:
    """Store each chunk in a thread while this one validates the next.

    PostgreSQL spends about as long on a chunk's inserts as Python on its validation, and a
    thread waiting for the server does not hold the GIL, so the two overlap. Chunks are still
    stored one at a time and in order, each in its own transaction; an error in one stops the
    import there. (SQLite's writer needs the GIL for every row, so there this gains nothing.)
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="firstvalue-import") as writer:
        pending: Future[None] | None = None
        for chunk in chunks:
            judged = _judge(chunk, received_at)
            if pending is not None:
                pending.result()
            pending = writer.submit(store, chunk, judged)
        if pending is not None:
            pending.result()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a file is imported.

    A chunk makes a few objects per line that live until the chunk is stored, and the collector
    would walk them again and again (a fifth of the import's time, measured). The import makes
    no reference cycles of its own; whatever others make is collected once it is done.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _judge(chunk: list[Line], received_at: int) -> list[Judged]:
    """Each line validated (None for a row that could not even become a message)."""
    return [None if line.problem else validate_message(line.raw, received_at,
                                                       fallback_id=line.fallback_id,
                                                       from_file=True)
            for line in chunk]


@dataclass
class _Guess:
    """Whether the next chunk is likely all new: yes until a chunk held a duplicate.

    A guess only decides how the chunk is stored (see `store_messages`), never what becomes of
    it; a file imported a second time is all duplicates, and trying first costs a chunk.
    """

    all_new: bool = True


def _save_chunk(database: Database, anchor_names: frozenset[str], guess: _Guess,
                judged: list[Judged]) -> list[str]:
    """Store a chunk's accepted messages in a transaction of their own; their statuses."""
    stored = store_accepted(database, judged, anchor_names, assume_new=guess.all_new)
    guess.all_new = DUPLICATE not in stored
    return stored


def _save_in_load(conn: sa.Connection, anchor_names: frozenset[str], load: BulkLoad,
                  judged: list[Judged]) -> list[str]:
    """Store a chunk's accepted messages in the bulk load's transaction; their statuses."""
    accepted = [item for item in judged if item.__class__ is Accepted]
    if not accepted:
        return []
    return store_messages(conn, accepted, anchor_names,  # type: ignore[arg-type]
                          bulk=load).statuses


def _store_chunk(save: Callable[[list[Judged]], list[str]], path: Path, summary: ImportSummary,
                 on_progress: Callable[[int], None] | None, chunk: list[Line],
                 judged: list[Judged]) -> None:
    """Store one chunk (the path of HTTP ingest, without building an HTTP status for every
    line) and add its outcome to `summary`."""
    statuses = save(judged)  # those of the accepted lines, in order
    summary.lines += len(chunk)
    summary.statuses.update(statuses)
    if len(statuses) < len(chunk):
        for line, item in zip(chunk, judged, strict=True):
            if item.__class__ is Accepted:
                continue
            summary.statuses[REJECTED] += 1
            reason = item.reason if isinstance(item, Rejected) else line.problem
            summary.rejects.append({"file": str(path), "line": line.number, "reason": reason,
                                    "text": line.raw[:2000].decode("utf-8", "replace")})
    if on_progress:
        on_progress(sum(len(line.raw) + 1 for line in chunk))


def _open(path: Path) -> IO[bytes]:
    if _gzipped(path):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _gzipped(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _jsonl_lines(stream: IO[bytes]) -> Iterator[Line]:
    make = Line._make  # builds the tuple directly, a third of the cost of Line(...)
    for number, line in enumerate(stream, start=1):
        line = line.strip()
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, as CSV allows
        if line:
            # A message without an id gets one derived from the line's bytes (in validation):
            # the same file imported twice gives the same ids.
            yield make((number, line, None, None))


def _csv_lines(stream: IO[bytes], path: Path) -> Iterator[Line]:
    # Bytes that are not UTF-8 are kept (as surrogates) rather than fatal, so that such a row
    # is rejected on its own and the rest of the file goes on.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield from _csv_rows(text, path)
    finally:
        text.detach()  # the caller closes the stream; the wrapper must not outlive it open


def _csv_rows(text: IO[str], path: Path) -> Iterator[Line]:
    reader = csv.DictReader(text)
    if not reader.fieldnames:
        return
    known = {"type", "message_id", "timestamp", "user_id", "anonymous_id", "group_id", "event",
             "properties", "traits"}
    unknown = [name for name in reader.fieldnames
               if name not in known and not name.startswith(("properties.", "traits."))]
    if unknown:
        raise ImportFileError(
            f"{str(path)!r} has unknown CSV column(s) {', '.join(unknown)}; use type, "
            "message_id, timestamp, user_id, anonymous_id, group_id, event, properties, traits, "
            "properties.NAME or traits.NAME")
    columns = len(reader.fieldnames)
    for row in reader:
        number = reader.line_num
        # DictReader puts the fields past the header's in a list under the key None.
        extra = cast("list[str] | None", row.pop(None, None))
        problem = _row_problem(row, extra, columns)
        if problem is not None:
            yield Line(number, _row_bytes(row, extra), problem=f"invalid CSV row: {problem}")
            continue
        raw_row = _encode(row)
        try:
            message = _message_from_row(row)
        except ValueError as exc:
            yield Line(number, raw_row, problem=f"invalid CSV row: {exc}")
            continue
        fallback = None if message.get("messageId") else derive_message_id(raw_row)
        yield Line(number, _encode(message), fallback)


def _row_problem(row: dict[str, str | None], extra: list[str] | None,
                 columns: int) -> str | None:
    """What makes a row unreadable before it is even a message, if anything."""
    if extra:
        return (f"{columns + len(extra)} fields where the header has {columns}; quote values "
                "that hold a comma")
    for column, value in row.items():
        if value and _UNDECODED.search(value):
            return f"column {column!r} is not UTF-8 text; save the file as UTF-8"
    return None


def _row_bytes(row: dict[str, str | None], extra: list[str] | None) -> bytes:
    """The row as the file had it, near enough to find it there (for the reject file)."""
    values = [value or "" for value in row.values()] + list(extra or ())
    return ",".join(values).encode("utf-8", "surrogateescape")


def _message_from_row(row: dict[str, str | None]) -> dict[str, Any]:
    kind = (row.get("type") or "track").strip()
    message: dict[str, Any] = {"type": kind}
    for column, key in (("message_id", "messageId"), ("timestamp", "timestamp"),
                        ("user_id", "userId"), ("anonymous_id", "anonymousId"),
                        ("event", "event")):
        value = row.get(column)
        if value:
            message[key] = value
    group_id = row.get("group_id")
    if group_id:
        if kind == "group":
            message["groupId"] = group_id
        else:
            message["context"] = {"groupId": group_id}

    payload_key = "properties" if kind == "track" else "traits"
    payload: dict[str, Any] = {}
    whole = row.get(payload_key)
    if whole:
        try:
            payload = json.loads(whole)
        except json.JSONDecodeError:
            raise ValueError(f"column {payload_key!r} is not JSON") from None
        if not isinstance(payload, dict):
            raise ValueError(f"column {payload_key!r} is not a JSON object")
    prefix = payload_key + "."
    for column, value in row.items():
        if column and column.startswith(prefix) and value not in (None, ""):
            payload[column[len(prefix):]] = _cell_value(value)
    message[payload_key] = payload
    return message


def _cell_value(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | bool) or value is None else text
