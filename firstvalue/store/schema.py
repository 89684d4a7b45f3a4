"""The schema, in SQLAlchemy Core. The migrations in `migrations/versions` build the same tables.

Times are whole microseconds since the Unix epoch, UTC (`BigInteger`): the same on SQLite and
PostgreSQL, cheap to compare and to bulk-load. JSON documents are stored as text so that the
ingest path can write the bytes it received without re-encoding them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, Table, Text, text

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("message_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("name", Text),
    Column("account_id", Text),
    Column("group_id", Text),
    Column("user_id", Text),
    Column("anonymous_id", Text),
    Column("ts", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("attached_at", BigInteger),
    Column("flags", Integer, nullable=False, server_default=text("0")),
    Column("properties", Text, nullable=False, server_default=text("'{}'")),
    Index("ix_events_message_id", "message_id", unique=True),
    Index("ix_events_account_ts", "account_id", "ts"),
    # Only events attributed through the user's group membership can move when a new group
    # call arrives, and only held events wait for an account: partial indexes keep both small.
    Index("ix_events_member_user", "user_id", sqlite_where=text("group_id IS NULL"),
          postgresql_where=text("group_id IS NULL")),
    Index("ix_events_held_group", "group_id", sqlite_where=text("account_id IS NULL"),
          postgresql_where=text("account_id IS NULL")),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("traits", Text, nullable=False, server_default=text("'{}'")),
    Column("created_at", BigInteger, nullable=False),
    Column("change_seq", BigInteger, nullable=False, server_default=text("1")),
    Column("evaluated_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("next_wake_at", BigInteger),
    Column("evaluated_at", BigInteger),
    Column("playbook_version", Text),
    Column("state", Text),
    Index("ix_accounts_next_wake_at", "next_wake_at"),
)

contacts = Table(
    "contacts",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("traits", Text, nullable=False, server_default=text("'{}'")),
    Column("updated_at", BigInteger, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("message_id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Index("ix_memberships_user", "user_id"),
    Index("ix_memberships_account", "account_id"),
)

write_keys = Table(
    "write_keys",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

playbook_versions = Table(
    "playbook_versions",
    metadata,
    Column("version", Text, primary_key=True),
    Column("text", Text, nullable=False),
    Column("first_used_at", BigInteger, nullable=False),
)

actions = Table(
    "actions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("key", Text, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("run", Integer, nullable=False),
    Column("rule", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("recipient", Text),
    Column("contact", Text),
    Column("template", Text),
    Column("status", Text, nullable=False),
    Column("due_at", BigInteger, nullable=False),
    Column("not_before", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("sent_at", BigInteger),
    Column("resolved_at", BigInteger),
    Column("done_at", BigInteger),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("late", Integer, nullable=False, server_default=text("0")),
    Column("reason", Text, nullable=False),
    Column("error", Text),
    Column("facts", Text, nullable=False, server_default=text("'{}'")),
    Column("playbook_version", Text, nullable=False),
    Column("subject", Text),
    Column("body", Text),
    Index("ix_actions_key", "key", unique=True),
    Index("ix_actions_account", "account_id"),
    Index("ix_actions_status_next", "status", "next_attempt_at"),
)

stalls = Table(
    "stalls",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("account_id", Text, nullable=False),
    Column("run", Integer, nullable=False),
    Column("identity", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("milestone", Text),
    Column("diagnosis", Text, nullable=False),
    Column("opened_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger),
    Column("status", Text, nullable=False),
    Column("evidence", Text, nullable=False, server_default=text("'{}'")),
    Column("recorded_at", BigInteger, nullable=False),
    Column("retracted_at", BigInteger),
    Index("ix_stalls_identity", "account_id", "run", "identity", unique=True),
    Index("ix_stalls_status", "status"),
)

endpoints = Table(
    "endpoints",
    metadata,
    Column("name", Text, primary_key=True),
    Column("disabled_at", BigInteger),
    Column("reason", Text),
)

counters = Table(
    "counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# One row per account and experiment, written once: the variant, and the tier stratum and
# position in it that the permuted blocks drew the variant for.
experiment_assignments = Table(
    "experiment_assignments",
    metadata,
    Column("experiment", Text, primary_key=True),
    Column("account_id", Text, primary_key=True),
    Column("variant", Text, nullable=False),
    Column("stratum", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("run", Integer, nullable=False),
    Column("assigned_at", BigInteger, nullable=False),
    Column("playbook_version", Text, nullable=False),
    Index("ix_experiment_assignments_slot", "experiment", "stratum", "position", unique=True),
    Index("ix_experiment_assignments_account", "account_id"),
)
