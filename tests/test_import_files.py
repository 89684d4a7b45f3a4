"""`firstvalue import`: JSONL and CSV files into the store, on SQLite and PostgreSQL alike.

Every line passes the validation of HTTP ingest; a bad line goes to the reject file with its
line number and reason while the rest of the file goes on, and a file imported twice is stored
once. The command runs through click's CliRunner against the `database` fixture's URL.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from firstvalue.cli.main import cli
from firstvalue.ingest import files
from firstvalue.store.database import open_database
from tests.conftest import micros

NOW = "2026-11-10T12:00:00+00:00"

GROUP = {"type": "group", "messageId": "g1", "userId": "u1", "groupId": "acme",
         "timestamp": "2026-10-19T08:00:00Z",
         "traits": {"name": "Acme", "segment": "mid_market", "timezone": "Europe/Berlin"}}
KICKOFF = {"type": "track", "messageId": "t1", "userId": "u1", "event": "Kickoff Completed",
           "timestamp": "2026-10-21T08:00:00Z", "context": {"groupId": "acme"}}
WORKFLOW = {"type": "track", "userId": "u1", "event": "Workflow Run",
            "timestamp": "2026-11-04T09:00:00Z", "properties": {"template": "weekly"}}


@pytest.fixture(autouse=True)
def close_cli_databases(monkeypatch):
    """Dispose of the stores the CLI opens: it leaves that to the end of its process, and a
    test run turns the unclosed PostgreSQL connections' warnings into errors."""
    opened = []

    def tracked(url, *args, **kwargs):
        database = open_database(url, *args, **kwargs)
        opened.append(database)
        return database

    monkeypatch.setattr("firstvalue.cli.main.open_database", tracked)
    yield
    for database in opened:
        database.dispose()


def invoke(*args: Any):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_import(database, *args: Any, now: str = NOW):
    """`firstvalue --db URL import --no-progress --now NOW ...`: the result of the CLI run."""
    return invoke("--db", database.url, "import", "--no-progress", "--now", now, *args)


def write_jsonl(path: Path, *lines: Any) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def stored(database) -> dict[str, dict[str, Any]]:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT message_id, type, name, account_id, group_id, user_id, ts, received_at, "
            "properties FROM events")).mappings().all()
    return {row["message_id"]: dict(row) for row in rows}


def count(database, table: str = "events") -> int:
    with database.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar()


def read_rejects(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def summary(result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# -- JSONL ---------------------------------------------------------------------------------


def test_good_lines_are_stored_and_bad_ones_rejected_with_line_number_and_reason(
        database, tmp_path):
    path = write_jsonl(
        tmp_path / "events.jsonl",
        GROUP,                                                        # 1
        '{"type": "track", "messageId": "broken", ',                 # 2: malformed JSON
        {"type": "track", "messageId": "nameless", "userId": "u1"},   # 3: no event name
        {"type": "track", "messageId": "nobody", "event": "A"},      # 4: no user
        "",                                                           # 5: blank, skipped
        {**KICKOFF, "properties": {"notes": "x" * 33_000}, "messageId": "huge"},  # 6
        {**KICKOFF, "timestamp": "last tuesday", "messageId": "when"},  # 7: bad time
        KICKOFF,                                                      # 8
    )
    rejects = tmp_path / "rejects.jsonl"

    result = run_import(database, path, "--rejects", rejects)

    assert result.exit_code == 0, result.output
    assert set(stored(database)) == {"g1", "t1"}
    found = read_rejects(rejects)
    assert [(r["file"], r["line"]) for r in found] == [(str(path), n) for n in (2, 3, 4, 6, 7)]
    why = [r["reason"] for r in found]
    assert why[0].startswith("not a valid event: ")
    assert "no `event` name" in why[1]
    assert "neither `userId` nor `anonymousId`" in why[2]
    assert "over the limit of 32768 (32 KiB)" in why[3]
    assert "timestamp" in why[4]
    assert found[0]["text"] == '{"type": "track", "messageId": "broken",'
    assert len(found[3]["text"]) == 2000  # a long line is cut in the reject file
    assert "Imported 7 line(s)" in result.output
    assert "2 accepted, 5 rejected" in result.output
    assert str(rejects) in result.output


def test_json_summary_counts_lines_by_status_and_names_the_reject_file(database, tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", GROUP, KICKOFF, KICKOFF, "not json",
                       {**WORKFLOW, "context": {"groupId": "later"}})
    rejects = tmp_path / "rejects.jsonl"

    result = invoke("--db", database.url, "import", "--json", "--now", NOW,
                    "--rejects", rejects, path)

    assert summary(result) == {
        "lines": 5,
        "statuses": {"accepted": 2, "duplicate": 1, "rejected": 1, "pending_account": 1},
        "rejected": 1,
        "bulk_files": [],
        "rejects_file": str(rejects),
    }


def test_json_summary_without_rejects_writes_no_reject_file(database, tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", GROUP, KICKOFF)
    rejects = tmp_path / "rejects.jsonl"

    data = summary(run_import(database, "--json", "--rejects", rejects, path))

    assert data == {"lines": 2, "statuses": {"accepted": 2}, "rejected": 0, "bulk_files": [],
                    "rejects_file": None}
    assert not rejects.exists()


def test_importing_the_same_file_twice_stores_it_once(database, tmp_path):
    # WORKFLOW has no messageId: one is derived from the line itself.
    path = write_jsonl(tmp_path / "events.jsonl", GROUP, KICKOFF, WORKFLOW,
                       {**WORKFLOW, "timestamp": "2026-11-05T09:00:00Z"})

    first = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path))
    second = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path,
                                now="2026-11-11T12:00:00+00:00"))

    assert first["statuses"] == {"accepted": 4}
    assert second["statuses"] == {"duplicate": 4}
    assert count(database) == 4
    derived = [mid for mid in stored(database) if mid not in ("g1", "t1")]
    assert len(derived) == 2 and all(mid.startswith("fv-") for mid in derived)


def test_duplicate_lines_inside_one_file_are_stored_once(database, tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", GROUP, KICKOFF, KICKOFF, WORKFLOW, WORKFLOW)

    data = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path))

    assert data["statuses"] == {"accepted": 3, "duplicate": 2}
    assert count(database) == 3


def test_import_attributes_events_like_http_ingest(database, tmp_path):
    """Given, earlier in the file than the group call, a track naming no account (dated before
    its user's first group call) and a track naming the account, both land in the account."""
    early = {**WORKFLOW, "messageId": "wf", "timestamp": "2026-10-18T09:00:00Z"}
    named = {**WORKFLOW, "messageId": "named", "context": {"groupId": "acme"}}
    path = write_jsonl(tmp_path / "events.jsonl", early, named, GROUP,
                       {**WORKFLOW, "messageId": "held", "context": {"groupId": "unknown"}})

    data = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path))

    rows = stored(database)
    assert data["statuses"] == {"accepted": 3, "pending_account": 1}
    assert rows["wf"]["account_id"] == rows["named"]["account_id"] == "acme"
    assert rows["held"]["account_id"] is None
    assert count(database, "accounts") == 1


def test_import_dates_events_without_a_timestamp_at_now(database, tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl",
                       {"type": "track", "messageId": "m1", "userId": "u1", "event": "A"},
                       {"type": "track", "messageId": "m2", "userId": "u1", "event": "A",
                        "timestamp": "2026-11-11T00:00:00Z"})

    run_import(database, "--rejects", tmp_path / "r.jsonl", path)

    rows = stored(database)
    assert rows["m1"]["ts"] == rows["m1"]["received_at"] == micros(NOW)
    assert rows["m2"]["ts"] == micros(NOW)  # after --now: clamped to the arrival


def test_line_numbers_and_attribution_hold_across_chunks(database, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CHUNK_LINES", 2)
    path = write_jsonl(tmp_path / "events.jsonl",
                       {**WORKFLOW, "messageId": "wf-1"}, "bad 2", "bad 3",
                       {**WORKFLOW, "messageId": "wf-4", "timestamp": "2026-11-05T09:00:00Z"},
                       GROUP, "bad 6")
    rejects = tmp_path / "rejects.jsonl"

    data = summary(run_import(database, "--json", "--rejects", rejects, path))

    assert data["lines"] == 6
    assert [r["line"] for r in read_rejects(rejects)] == [2, 3, 6]
    rows = stored(database)
    assert rows["wf-1"]["account_id"] == rows["wf-4"]["account_id"] == "acme"


def test_gzipped_jsonl_is_read(database, tmp_path):
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(gzip.compress((json.dumps(GROUP) + "\n" + json.dumps(KICKOFF)).encode()))

    data = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path))

    assert data["statuses"] == {"accepted": 2}
    assert set(stored(database)) == {"g1", "t1"}


# -- CSV -----------------------------------------------------------------------------------


CSV_HEADER = "type,message_id,timestamp,user_id,group_id,event,properties,properties.seats"


def write_csv(path: Path, *rows: str, header: str = CSV_HEADER, bom: bool = False) -> Path:
    text = "\r\n".join([header, *rows]) + "\r\n"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


def test_csv_rows_become_events_with_their_properties(database, tmp_path):
    path = write_csv(
        tmp_path / "events.csv",
        'group,g1,2026-10-19T08:00:00Z,u1,acme,,,',
        'track,t1,2026-10-21T08:00:00Z,u1,acme,Kickoff Completed,"{""host"": ""dana""}",',
        'track,,2026-10-22T07:00:00Z,u1,,Workspace Created,,12',
        bom=True)

    data = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path))

    assert data["statuses"] == {"accepted": 3}
    rows = stored(database)
    assert rows["t1"]["account_id"] == rows["t1"]["group_id"] == "acme"
    assert json.loads(rows["t1"]["properties"]) == {"host": "dana"}
    (workspace,) = [r for r in rows.values() if r["name"] == "Workspace Created"]
    assert json.loads(workspace["properties"]) == {"seats": 12}
    assert workspace["account_id"] == "acme"
    assert workspace["ts"] == micros("2026-10-22T07:00:00Z")


def test_csv_bad_rows_are_rejected_with_line_number_and_the_rest_goes_on(database, tmp_path):
    path = write_csv(
        tmp_path / "events.csv",
        'track,t1,2026-10-21T08:00:00Z,u1,acme,Kickoff Completed,,',      # line 2
        'track,t2,2026-10-22T07:00:00Z,u1,acme,Workspace Created,{oops,',  # 3: not JSON
        'track,t3,2026-10-22T07:00:00Z,u1,acme,Workspace Created,"[1]",',  # 4: not an object
        'track,t4,2026-10-22T07:00:00Z,u1,acme,,,',                        # 5: no event
        'track,t5,2026-10-22T07:00:00Z,u1,acme,A,,1,surplus',              # 6: a field too many
        'track,t6,2026-10-23T07:00:00Z,u1,acme,Integration Connected,,')  # 7
    rejects = tmp_path / "rejects.jsonl"

    data = summary(run_import(database, "--json", "--rejects", rejects, path))

    assert data["statuses"] == {"accepted": 2, "rejected": 4}
    assert set(stored(database)) == {"t1", "t6"}
    found = read_rejects(rejects)
    assert [r["line"] for r in found] == [3, 4, 5, 6]
    assert found[0]["reason"] == "invalid CSV row: column 'properties' is not JSON"
    assert found[1]["reason"] == "invalid CSV row: column 'properties' is not a JSON object"
    assert "no `event` name" in found[2]["reason"]
    assert found[3]["reason"].startswith("invalid CSV row: 9 fields where the header has 8")
    assert found[3]["text"] == "track,t5,2026-10-22T07:00:00Z,u1,acme,A,,1,surplus"


def test_csv_row_that_is_not_utf8_is_rejected_and_the_rest_goes_on(database, tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(b"type,message_id,user_id,event\r\n"
                     b"track,t1,u1,Signed In\r\n"
                     b"track,t2,u\xff1,Signed In\r\n"
                     b"track,t3,u1,Signed In\r\n")
    rejects = tmp_path / "rejects.jsonl"

    data = summary(run_import(database, "--json", "--rejects", rejects, path))

    assert data["statuses"] == {"pending_account": 2, "rejected": 1}
    assert set(stored(database)) == {"t1", "t3"}
    (found,) = read_rejects(rejects)
    assert found["line"] == 3
    assert found["reason"] == ("invalid CSV row: column 'user_id' is not UTF-8 text; save the "
                               "file as UTF-8")


def test_csv_rows_without_message_id_are_stored_once_over_two_imports(database, tmp_path):
    path = write_csv(tmp_path / "events.csv",
                     'track,,2026-10-22T07:00:00Z,u1,acme,Workspace Created,,',
                     'track,,2026-10-23T07:00:00Z,u1,acme,Workspace Created,,',
                     'track,,2026-10-23T07:00:00Z,u1,acme,Workspace Created,,')  # same as row 3

    first = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path))
    second = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path))

    assert first["statuses"] == {"pending_account": 2, "duplicate": 1}
    assert second["statuses"] == {"duplicate": 3}
    assert count(database) == 2


def test_gzipped_csv_is_read(database, tmp_path):
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(
        f"{CSV_HEADER}\ntrack,t1,2026-10-21T08:00:00Z,u1,acme,Kickoff Completed,,\n".encode()))

    data = summary(run_import(database, "--json", "--rejects", tmp_path / "r.jsonl", path))

    assert data["statuses"] == {"accepted": 1}


def test_csv_with_an_unknown_column_is_refused_naming_it(database, tmp_path):
    path = write_csv(tmp_path / "events.csv", "u1,Signed In", header="user_id,evnt")

    result = run_import(database, "--rejects", tmp_path / "r.jsonl", path)

    assert result.exit_code == 2
    assert "unknown CSV column(s) evnt" in result.output
    assert count(database) == 0


# -- refusing files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["events.txt", "events.gz", "events"])
def test_file_of_unknown_format_is_refused_with_exit_code_2_and_nothing_is_stored(
        database, tmp_path, name):
    good = write_jsonl(tmp_path / "good.jsonl", GROUP, KICKOFF)
    unknown = write_jsonl(tmp_path / name, GROUP)

    result = run_import(database, "--rejects", tmp_path / "r.jsonl", good, unknown)

    assert result.exit_code == 2
    assert result.output == (
        f"Error: cannot tell the format of {str(unknown)!r} from its name; name it .jsonl (one "
        "message a line) or .csv (one event a row), optionally with .gz\n")
    assert count(database) == 0
    assert count(database, "accounts") == 0


def test_missing_file_is_refused_with_exit_code_2_before_anything_is_stored(
        database, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", GROUP, KICKOFF)
    missing = tmp_path / "missing.jsonl"

    result = run_import(database, "--rejects", tmp_path / "r.jsonl", good, missing)

    assert result.exit_code == 2
    assert result.output == f"Error: no such file: {str(missing)!r}\n"
    assert count(database) == 0


def test_several_files_are_imported_into_one_summary(database, tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", GROUP, "bad")
    csv_file = write_csv(tmp_path / "b.csv",
                         "track,t1,2026-10-21T08:00:00Z,u1,acme,Kickoff Completed,,")
    rejects = tmp_path / "rejects.jsonl"

    data = summary(run_import(database, "--json", "--rejects", rejects, jsonl, csv_file))

    assert data["lines"] == 3
    assert data["statuses"] == {"accepted": 2, "rejected": 1}
    assert [(r["file"], r["line"]) for r in read_rejects(rejects)] == [(str(jsonl), 2)]


def test_progress_bar_run_imports_the_same(database, tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", GROUP, KICKOFF)

    result = invoke("--db", database.url, "import", "--now", NOW,
                    "--rejects", tmp_path / "r.jsonl", path)

    assert result.exit_code == 0, result.output
    assert "Imported 2 line(s)" in result.output
    assert count(database) == 2


def test_bulk_and_no_bulk_choose_how_the_file_is_stored(database, tmp_path, monkeypatch):
    from firstvalue.ingest import files, pipeline

    monkeypatch.setattr(files, "BULK_MIN_LINES", 2)  # every file here would go in bulk
    loads = []
    begin = pipeline.BulkLoad.begin
    monkeypatch.setattr(pipeline.BulkLoad, "begin",
                        classmethod(lambda cls, conn: loads.append(1) or begin(conn)))
    lines = [{"type": "track", "userId": "u1", "event": "Signed In", "messageId": f"m{n}",
              "timestamp": "2026-01-05T10:00:00Z"} for n in range(4)]

    first = summary(run_import(database, "--no-bulk", "--json",
                               write_jsonl(tmp_path / "a.jsonl", *lines[:2])))
    assert loads == []
    second = summary(run_import(database, "--bulk", "--json",
                                write_jsonl(tmp_path / "b.jsonl", *lines)))
    assert loads == [1]
    third = summary(run_import(database, "--json", write_jsonl(tmp_path / "c.jsonl", *lines)))
    assert loads == [1, 1]  # by default: 4 lines, no fewer than the store's 4 events

    assert first["statuses"] == {"pending_account": 2}
    assert second["statuses"] == {"duplicate": 2, "pending_account": 2}
    assert third["statuses"] == {"duplicate": 4}
    assert (first["bulk_files"], second["bulk_files"]) == ([], [str(tmp_path / "b.jsonl")])
    text = run_import(database, "--bulk", tmp_path / "c.jsonl")
    assert f"Loaded in bulk (one transaction, indexes built again): {tmp_path / 'c.jsonl'}." \
        in text.output
    assert count(database) == 4


@pytest.mark.parametrize("bulk", ["--bulk", "--no-bulk"])
def test_a_damaged_gzip_file_stops_with_a_clear_error(database, tmp_path, bulk):
    import gzip

    good = b"".join(json.dumps({"type": "track", "userId": "u1", "event": "Signed In",
                                "messageId": f"m{n}", "timestamp": "2026-01-05T10:00:00Z"}
                               ).encode() + b"\n" for n in range(50))
    whole = gzip.compress(good)
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(whole[:len(whole) // 2])  # cut off half way

    result = run_import(database, bulk, damaged)

    assert result.exit_code == 2
    assert "is not a whole gzip file" in result.output and "gzip -t" in result.output
    assert "Traceback" not in result.output
    assert count(database) == 0  # in bulk nothing; in chunks, no chunk of 100,000 was whole


def test_a_gzip_damaged_inside_stores_nothing_in_chunks_either(database, tmp_path,
                                                                monkeypatch):
    """gzip finds a changed byte only by its checksum at the end; the import reads the file
    through before storing a chunk of it."""
    import gzip

    from firstvalue.ingest import files

    monkeypatch.setattr(files, "CHUNK_LINES", 10)  # chunks stored before the end is read

    good = b"".join(json.dumps({"type": "track", "userId": "u1", "event": "Signed In",
                                "messageId": f"m{n}", "timestamp": "2026-01-05T10:00:00Z"}
                               ).encode() + b"\n" for n in range(50))
    stored = bytearray(gzip.compress(good, compresslevel=0))  # the lines stand in it as text
    at = stored.index(b'"m7"')
    stored[at + 2] = ord("9")  # m7 becomes m9: still JSON, but not what was compressed
    damaged = tmp_path / "flipped.jsonl.gz"
    damaged.write_bytes(bytes(stored))

    result = run_import(database, "--no-bulk", damaged)

    assert result.exit_code == 2
    assert "nothing of it was stored" in result.output
    assert "Before the error" not in result.output  # no file came before it
    assert count(database) == 0


def test_what_was_imported_before_an_error_is_reported_and_its_rejects_written(database,
                                                                                tmp_path):
    import gzip

    first = write_jsonl(tmp_path / "first.jsonl", GROUP, "not json")
    damaged = tmp_path / "second.jsonl.gz"
    damaged.write_bytes(gzip.compress(b'{"type": "track"}\n')[:-6])
    rejects = tmp_path / "rejects.jsonl"

    result = run_import(database, "--rejects", rejects, first, damaged)

    assert result.exit_code == 2
    assert "Before the error: Imported 2 line(s)" in result.output
    assert [r["line"] for r in read_rejects(rejects)] == [2]
    assert count(database) == 1
