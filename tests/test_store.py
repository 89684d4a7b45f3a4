"""The store on SQLite and PostgreSQL: migrations, attribution, dirty tracking, versions."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from firstvalue.engine.compiled import compile_playbook
from firstvalue.ingest.service import ingest_messages
from firstvalue.playbook.loader import parse_playbook, read_default_text
from firstvalue.runtime.evaluation import stored_states, tick
from firstvalue.store.database import ManyRows, execute_many
from firstvalue.store.schema import in_schema_of, metadata
from tests.conftest import encode, micros

T0 = micros("2026-03-01T00:00:00Z")


def send(database, playbook, *messages, at=T0):
    return [s.status for s in ingest_messages(database, [encode(m) for m in messages], at,
                                              playbook.anchor_names)]


def group(mid, user, account, when, **traits):
    return {"type": "group", "messageId": mid, "userId": user, "groupId": account,
            "timestamp": when, "traits": traits}


def track(mid, user, name, when, account=None, **properties):
    message = {"type": "track", "messageId": mid, "userId": user, "event": name,
               "timestamp": when, "properties": properties}
    if account:
        message["context"] = {"groupId": account}
    return message


def account_of(database, message_id):
    with database.engine.connect() as conn:
        return conn.execute(sa.text("SELECT account_id FROM events WHERE message_id = :m"),
                            {"m": message_id}).scalar()


def test_the_migrations_build_exactly_the_schema_the_code_uses(database):
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_object": in_schema_of(conn.dialect.name)})
        differences = compare_metadata(context, metadata)
        indexes = {row[0] for row in conn.execute(sa.text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'events'"
            if conn.dialect.name == "postgresql" else
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"))}
    assert differences == []
    # The comparison leaves out each dialect's own indexes: check them by name.
    if database.is_sqlite:
        assert "ix_events_account_facts" in indexes and "ix_events_account_ts" not in indexes
    else:
        assert "ix_events_account_ts" in indexes and "ix_events_account_facts" not in indexes


def test_opening_twice_does_not_migrate_twice(database):
    from alembic.script import ScriptDirectory

    from firstvalue.store.database import alembic_config, open_database

    again = open_database(database.url)
    with again.engine.connect() as conn:
        (head,) = ScriptDirectory.from_config(alembic_config(conn)).get_heads()
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    again.dispose()
    assert version == head


@pytest.mark.postgres
def test_processes_opening_an_older_store_at_once_take_turns_to_migrate_it(
        postgres_database, monkeypatch):
    """Two processes open a store one version behind at once: the first migrates it, the
    second waits for it and finds nothing left to do (before, it migrated too and stopped
    with Alembic's "expected to match one row" error)."""
    import threading
    import time

    from alembic import command

    from firstvalue.store.database import alembic_config, open_database, upgrade

    with postgres_database.write() as conn:
        command.downgrade(alembic_config(conn), "0007")
    first, second = open_database(postgres_database.url, migrate=False), \
        open_database(postgres_database.url, migrate=False)
    migrating, upgrade_for_real = threading.Event(), command.upgrade

    def slow_first_upgrade(config, revision):
        upgrade_for_real(config, revision)
        if not migrating.is_set():
            migrating.set()
            time.sleep(1.5)  # the first process's migration, not committed yet

    monkeypatch.setattr(command, "upgrade", slow_first_upgrade)
    elsewhere = threading.Thread(target=upgrade, args=(first,))
    elsewhere.start()
    try:
        assert migrating.wait(30)
        upgrade(second)
    finally:
        elsewhere.join(timeout=60)
        first.dispose()
        second.dispose()
    with postgres_database.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0008"


@pytest.mark.postgres
def test_a_postgresql_url_naming_a_schema_that_is_not_there_says_how_to_make_it():
    from firstvalue.errors import StoreError
    from firstvalue.store.database import open_database
    from tests.conftest import PG_URL

    url = f"{PG_URL}?options=-csearch_path%3Dno_such_schema_here"
    with pytest.raises(StoreError) as raised:
        open_database(url)
    assert str(raised.value) == (
        f"cannot open the database {url!r}: no schema has been selected to create in; no "
        "schema of its search_path (no_such_schema_here) exists: create it first (CREATE "
        "SCHEMA name), or name an existing one in the URL (options=-csearch_path%3Dname)")


def test_an_event_belongs_to_the_group_membership_in_force_at_its_time(database, playbook):
    send(database, playbook,
         group("g1", "u1", "acme", "2026-02-01T00:00:00Z"),
         group("g2", "u1", "globex", "2026-02-10T00:00:00Z"),
         track("t1", "u1", "Signed In", "2026-02-05T00:00:00Z"),
         track("t2", "u1", "Signed In", "2026-02-15T00:00:00Z"),
         track("t3", "u1", "Signed In", "2026-01-15T00:00:00Z"))
    assert account_of(database, "t1") == "acme"
    assert account_of(database, "t2") == "globex"
    assert account_of(database, "t3") == "acme"  # before any group call: the first one


def test_a_late_group_call_moves_the_events_it_explains_and_marks_both_accounts(database,
                                                                                playbook):
    send(database, playbook, group("g1", "u1", "acme", "2026-02-01T00:00:00Z"),
         track("t1", "u1", "Signed In", "2026-02-15T00:00:00Z"))
    tick(database, playbook, T0)
    send(database, playbook, group("g2", "u1", "globex", "2026-02-10T00:00:00Z"))
    assert account_of(database, "t1") == "globex"
    with database.engine.connect() as conn:
        dirty = conn.execute(sa.text("SELECT id FROM accounts WHERE change_seq > evaluated_seq "
                                     "ORDER BY id")).scalars().all()
    assert dirty == ["acme", "globex"]


def test_an_explicit_group_id_wins_over_membership(database, playbook):
    send(database, playbook, group("g1", "u1", "acme", "2026-02-01T00:00:00Z"),
         group("g2", "u9", "globex", "2026-02-01T00:00:00Z"),
         track("t1", "u1", "Signed In", "2026-02-15T00:00:00Z", account="globex"))
    assert account_of(database, "t1") == "globex"


def test_an_anchor_event_creates_its_account(database, playbook):
    statuses = send(database, playbook,
                    track("t1", "u1", "Deal Closed Won", "2026-02-15T00:00:00Z", account="newco",
                          deal_id="d1"),
                    track("t2", "u1", "Signed In", "2026-02-15T00:00:00Z", account="other"))
    assert statuses == ["accepted", "pending_account"]
    assert account_of(database, "t1") == "newco"


def test_account_traits_merge_key_by_key_by_their_own_time(database, playbook):
    send(database, playbook,
         group("g2", "u1", "acme", "2026-02-10T00:00:00Z", segment="enterprise"),
         group("g1", "u1", "acme", "2026-02-01T00:00:00Z", segment="smb", name="Acme"))
    state = _evaluate(database, playbook)
    assert (state["segment"], state["name"], state["track"]) == ("enterprise", "Acme",
                                                                 "enterprise")


def test_tick_evaluates_only_changed_and_due_accounts(database, playbook):
    send(database, playbook, group("g1", "u1", "acme", "2026-02-01T00:00:00Z", timezone="UTC"),
         group("g2", "u2", "globex", "2026-02-01T00:00:00Z", timezone="UTC"))
    assert tick(database, playbook, T0).evaluated == 2
    assert tick(database, playbook, T0 + 1).evaluated == 0
    send(database, playbook, track("t1", "u1", "Signed In", "2026-02-20T00:00:00Z"))
    assert tick(database, playbook, T0 + 2).evaluated == 1


def test_a_new_playbook_version_re_evaluates_everything_and_is_recorded(database, playbook):
    send(database, playbook, group("g1", "u1", "acme", "2026-02-01T00:00:00Z"))
    tick(database, playbook, T0)
    changed = compile_playbook(parse_playbook(
        read_default_text().replace("end_day: 120", "end_day: 100"), "changed.yaml"))
    assert tick(database, changed, T0 + 1).evaluated == 1
    assert _evaluate(database, changed)["playbook_version"] == changed.version
    with database.engine.connect() as conn:
        versions = set(conn.execute(sa.text("SELECT version FROM playbook_versions")).scalars())
    assert versions == {playbook.version, changed.version}


def test_a_playbook_version_is_recorded_by_the_first_tick_that_commits(database, playbook,
                                                                        monkeypatch):
    """A tick rolled back after recording the playbook's text did not store it: the next
    tick records it (the process must not remember it as recorded)."""
    changed = compile_playbook(parse_playbook(
        read_default_text().replace("end_day: 120", "end_day: 101"), "rolled-back.yaml"))
    send(database, playbook, group("g1", "u1", "acme", "2026-02-01T00:00:00Z"))

    def broken_routing(*args):
        raise RuntimeError("routing failed")

    monkeypatch.setattr("firstvalue.runtime.evaluation.route_accounts", broken_routing)
    with pytest.raises(RuntimeError):
        tick(database, changed, T0)
    monkeypatch.undo()
    tick(database, changed, T0 + 1)
    with database.engine.connect() as conn:
        text = conn.execute(sa.text("SELECT text FROM playbook_versions WHERE version = :v"),
                            {"v": changed.version}).scalar()
    assert text == changed.loaded.text


def _evaluate(database, playbook) -> dict:
    tick(database, playbook, T0 + 10)
    return stored_states(database, ["acme"])["acme"]


def test_opening_a_migrated_store_does_not_wait_for_a_writer(sqlite_database):
    import time

    from firstvalue.store.database import open_database

    with sqlite_database.write():
        started = time.monotonic()
        again = open_database(sqlite_database.url)  # would block 30 s on the write lock
        with again.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM accounts")).scalar() == 0
        again.dispose()
    assert time.monotonic() - started < 5


def test_a_write_of_many_rows_stores_them_all_in_their_order_on_both_stores(database):
    # On PostgreSQL a ManyRows goes through a temporary table and one statement; on SQLite,
    # executemany. Both must store every row, big numbers kept, in the rows' order (the
    # first of a repeated key stands).
    write = ManyRows(
        "INSERT INTO counters (name, value) VALUES (:name, :value) ON CONFLICT (name) DO NOTHING",
        "INSERT INTO counters (name, value) SELECT name, value FROM {rows} "
        "ON CONFLICT (name) DO NOTHING",
        "name text, value bigint")
    rows = [{"name": f"n{i:04d}", "value": 2**40 + i, "extra": "ignored"}
            for i in range(2500, 0, -1)]
    rows.append({"name": "n2500", "value": 1})  # a repeat: the first one stands
    with database.write() as conn:
        execute_many(conn, write, rows)
        execute_many(conn, write, [])
    with database.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT name, value FROM counters ORDER BY name")).all()
    assert len(stored) == 2500
    assert stored[-1] == ("n2500", 2**40 + 2500)
    assert stored[0] == ("n0001", 2**40 + 1)
    update = ManyRows("UPDATE counters SET value = :value WHERE name = :name",
                      "UPDATE counters AS c SET value = r.value FROM {rows} WHERE c.name = r.name",
                      "name text, value bigint")
    with database.write() as conn:
        execute_many(conn, update, [{"name": "n0001", "value": -1},
                                    {"name": "n0002", "value": 7}])
    with database.engine.connect() as conn:
        assert dict(conn.execute(sa.text(
            "SELECT name, value FROM counters WHERE name IN ('n0001', 'n0002')")).all()) == {
            "n0001": -1, "n0002": 7}


@pytest.mark.postgres
def test_postgresql_compresses_stored_states_with_lz4(postgres_database):
    with postgres_database.engine.connect() as conn:
        available = conn.execute(sa.text(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
            "WHERE name = 'default_toast_compression'")).scalar()
        method = conn.execute(sa.text(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = 'accounts'::regclass AND attname = 'state'")).scalar()
    assert available, "Debian's PostgreSQL, as CI runs it, is built with lz4"
    assert method == "l"


def test_a_write_of_many_rows_with_one_column_works_on_both_stores(database):
    delete = ManyRows("DELETE FROM counters WHERE name = :name",
                      "DELETE FROM counters AS c USING {rows} WHERE c.name = r.name",
                      "name text")
    with database.write() as conn:
        conn.execute(sa.text("INSERT INTO counters (name, value) VALUES ('ab', 1), ('cd', 2)"))
    with database.write() as conn:
        execute_many(conn, delete, [{"name": "ab"}])
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM counters")).scalars().all() == ["cd"]


@pytest.mark.postgres
def test_many_writes_of_many_rows_in_one_transaction_hold_a_few_locks(postgres_database):
    # A tick of many accounts writes a few times a batch, all in one transaction: the
    # temporary table is made once, not once a write (whose locks would pile up until the
    # commit and exhaust PostgreSQL's lock table).
    write = ManyRows("UPDATE counters SET value = :value WHERE name = :name",
                     "UPDATE counters AS c SET value = r.value FROM {rows} WHERE c.name = r.name",
                     "name text, value bigint")
    with postgres_database.write() as conn:
        conn.execute(sa.text("INSERT INTO counters (name, value) VALUES ('n', 0)"))
        for value in range(1, 101):
            execute_many(conn, write, [{"name": "n", "value": value}])
        held = conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()")).scalar()
        assert conn.execute(sa.text("SELECT value FROM counters")).scalar() == 100
    assert held < 20, f"{held} locks held after 100 writes"


@pytest.mark.postgres
def test_a_role_that_may_not_create_temporary_tables_still_ticks(postgres_database, playbook):
    import uuid

    from firstvalue.store import database as store_database
    from firstvalue.store.database import open_database

    role = f"fv_notemp_{uuid.uuid4().hex[:8]}"
    schema = postgres_database.engine.url.query["options"].split("=")[-1]
    with postgres_database.write() as conn:
        name = conn.execute(sa.text("SELECT current_database()")).scalar()
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"GRANT ALL ON SCHEMA {schema} TO {role}"))
        conn.execute(sa.text(f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role}"))
        conn.execute(sa.text(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"))
    restricted = open_database(postgres_database.url.replace("postgres@", f"{role}@", 1),
                               migrate=False)
    try:
        with restricted.engine.connect() as conn:
            may = conn.execute(sa.text(
                "SELECT has_database_privilege(current_database(), 'TEMPORARY')")).scalar()
        if may:
            # PUBLIC may create temporary tables here: take it away for this test only.
            with postgres_database.write() as conn:
                conn.execute(sa.text(f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC'))
        try:
            # As if this process had found TEMPORARY granted before it was revoked: the first
            # write finds out, and the tick goes on row by row.
            store_database._TEMPORARY[str(restricted.engine.url)] = True
            send(restricted, playbook,
                 group("g1", "u1", "acme", "2026-02-01T00:00:00Z", timezone="UTC"))
            assert tick(restricted, playbook, T0).evaluated == 1
            assert stored_states(restricted, ["acme"])["acme"]["id"] == "acme"
        finally:
            if may:
                with postgres_database.write() as conn:
                    conn.execute(sa.text(f'GRANT TEMPORARY ON DATABASE "{name}" TO PUBLIC'))
            store_database._TEMPORARY.clear()
    finally:
        restricted.dispose()
        with postgres_database.write() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


def test_store_busy_knows_the_lock_error_from_the_drivers_own_cursor():
    import sqlite3

    from firstvalue.store.database import store_busy

    # Writes through the driver's cursor (execute_many, insert_events) raise the driver's
    # own error, not SQLAlchemy's: a locked store is still "busy", anything else is not.
    assert store_busy(sqlite3.OperationalError("database is locked"))
    assert not store_busy(sqlite3.OperationalError("no such table: events"))
    assert not store_busy(sqlite3.IntegrityError("database is locked"))


def test_sqlite_reads_a_few_accounts_open_tasks_through_the_account_index(sqlite_database):
    # Without statistics SQLite chose the status index for "this account's sent tasks" and
    # read every sent action of the store for each account: 10.5 s of the demo's 155.
    from firstvalue.runtime.evaluation import previous_owners

    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    sa.event.listen(sqlite_database.engine, "before_cursor_execute", record)
    with sqlite_database.engine.connect() as conn:
        previous_owners(conn, ["acme"])
        [(statement, parameters)] = [s for s in statements if "FROM actions" in s[0]]
        plan = " ".join(row[-1] for row in conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {statement}", parameters).all())
    sa.event.remove(sqlite_database.engine, "before_cursor_execute", record)
    assert "INDEX ix_actions_account" in plan and "ix_actions_status_next" not in plan


@pytest.mark.postgres
def test_a_postgresql_database_that_is_not_there_is_named_with_a_postgresql_fix():
    from firstvalue.errors import StoreError
    from firstvalue.store.database import open_database
    from tests.conftest import PG_URL

    url = PG_URL.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(StoreError) as raised:
        open_database(url)
    message = str(raised.value)
    assert message.startswith(f"cannot open the database {url!r}: ")
    assert 'database "no_such_database_here" does not exist' in message
    assert message.endswith("check that --db names an existing PostgreSQL database, user and "
                            "schema that this user may create tables in")
