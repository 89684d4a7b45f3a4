"""Shared fixtures: a fresh store on SQLite and on PostgreSQL, the default playbook, a clock.

Storage and engine tests take the `database` fixture and so run on both. Each PostgreSQL test
gets a schema of its own in the database named by FIRSTVALUE_TEST_PG, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import msgspec
import pytest
import sqlalchemy as sa

from firstvalue.clock import parse_instant, to_micros
from firstvalue.engine.compiled import CompiledPlaybook, compile_playbook
from firstvalue.playbook.loader import load_playbook
from firstvalue.store.database import Database, open_database

# The browser fixtures (Chromium, the served demo, dashboard users) live in a plugin of their own.
pytest_plugins = ["tests.browser_fixtures"]

PG_URL = os.environ.get("FIRSTVALUE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# A complete sales-to-CS handoff, as a `handoff` trait: accounts on the default playbook's gated
# tracks (mid-market, enterprise) carry it so that their customer-facing sequence runs.
HANDOFF = {"use_case": "lead_enrichment",
           "stakeholders": [{"name": "Kim", "role": "champion"}],
           "success_criteria": ["a first enriched lead"],
           "technical_requirements": {"crm": "salesforce"},
           "commitments": ["weekly check-ins"]}


def micros(text: str) -> int:
    return to_micros(parse_instant(text))


def encode(message: dict) -> bytes:
    return msgspec.json.encode(message)


@pytest.fixture(scope="session")
def playbook() -> CompiledPlaybook:
    return compile_playbook(load_playbook())


def _sqlite_database(tmp_path) -> Database:
    return open_database(f"sqlite:///{tmp_path / 'test.db'}")


@pytest.fixture
def sqlite_database(tmp_path) -> Iterator[Database]:
    database = _sqlite_database(tmp_path)
    yield database
    database.dispose()


@pytest.fixture
def postgres_database() -> Iterator[Database]:
    with fresh_postgres() as database:
        yield database


@contextmanager
def fresh_postgres() -> Iterator[Database]:
    """A migrated store in a schema of its own, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    database = open_database(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        yield database
    finally:
        database.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request, tmp_path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_database")
    else:
        yield request.getfixturevalue("postgres_database")


def at(text: str) -> datetime:
    return parse_instant(text)
