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
    # On SQLite, migration 0002 replaces this index with `ix_events_account_facts`, which
    # covers every column the engine reads (see `DIALECT_INDEXES`).
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
    # The dashboard's portfolio asks every request which accounts were evaluated since: a scan
    # of this small index instead of the table, whose rows hold the whole stored state.
    Index("ix_accounts_evaluated", "evaluated_at", "evaluated_seq", "id"),
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
    Column("assignee", Text),  # for internal actions: the address it went to
    Column("snoozed_until", BigInteger),  # a task put off from the work queue until then
    Column("changed_by", Text),  # the dashboard user who sent it early or cancelled it
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

# CRM sync (firstvalue/crm): one row per connector and CRM record the engine writes, holding
# the fields it wants there (`desired`) and the fields last delivered (`pushed`), so that a
# sync with nothing changed sends nothing.
crm_sync = Table(
    "crm_sync",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("connector", Text, nullable=False),
    Column("record_type", Text, nullable=False),
    Column("record_id", Text, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("desired", Text, nullable=False),
    Column("pushed", Text),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", BigInteger),
    Column("error", Text),
    Column("remote_id", Text),
    Column("changed_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger),
    Index("ix_crm_sync_record", "connector", "record_type", "record_id", unique=True),
    Index("ix_crm_sync_due", "connector", "status", "next_attempt_at"),
)

crm_cursors = Table(
    "crm_cursors",
    metadata,
    Column("connector", Text, primary_key=True),
    Column("evaluated_at", BigInteger, nullable=False),
)

# Inbound webhook deliveries, by the id their scheme gives them: a replay is recognised and
# stored nothing a second time.
inbound_webhooks = Table(
    "inbound_webhooks",
    metadata,
    Column("source", Text, nullable=False),
    Column("delivery_id", Text, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("events", Integer, nullable=False),
    Index("ix_inbound_webhooks_delivery", "source", "delivery_id", unique=True),
)

# Calendar bookings seen, so that a later no-show or cancellation naming only the booking
# finds the contact and the kind of meeting it was.
calendar_bookings = Table(
    "calendar_bookings",
    metadata,
    Column("source", Text, nullable=False),
    Column("booking_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("meeting", Text, nullable=False),
    Column("start_time", Text),
    Column("account_id", Text),  # the account the booking named (Cal.com metadata), if any
    Column("seen_at", BigInteger, nullable=False),
    Index("ix_calendar_bookings_booking", "source", "booking_id", unique=True),
)


team_members = Table(
    "team_members",
    metadata,
    Column("handle", Text, primary_key=True),
    Column("name", Text),
    Column("email", Text, nullable=False),
    Column("role", Text, nullable=False),  # csm, implementation_manager or team_lead
    Column("capacity", Integer, nullable=False, server_default=text("0")),
    Column("timezone", Text, nullable=False, server_default=text("'UTC'")),
    Column("away_from", BigInteger),
    Column("away_until", BigInteger),
    Column("cover", Text),  # the handle of who takes their new tasks and alerts meanwhile
    Column("last_assigned_at", BigInteger),
    Column("created_at", BigInteger, nullable=False),
)

assignments = Table(
    "assignments",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("tier", Integer),
    Column("model", Text, nullable=False),  # dedicated, pooled or none
    Column("status", Text, nullable=False),  # assigned, waiting (no capacity) or self_serve
    Column("owner", Text),  # a team member's handle
    Column("assigned_at", BigInteger),
    Column("waiting_since", BigInteger),
    Column("released_at", BigInteger),  # the run ended: no longer counts towards the load
    Column("reason", Text, nullable=False),
    Index("ix_assignments_owner", "owner"),
)

# Dashboard users (firstvalue/web): a login with a role, the password hashed with scrypt, and
# optionally the team member they are, whose work queue is theirs.
users = Table(
    "users",
    metadata,
    Column("name", Text, primary_key=True),
    Column("role", Text, nullable=False),  # admin, csm or viewer
    Column("password_hash", Text, nullable=False),
    Column("team_handle", Text),
    Column("created_at", BigInteger, nullable=False),
)

# A login's session, by the SHA-256 of the cookie's token (the token itself is never stored).
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", Text, primary_key=True),
    Column("user_name", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_web_sessions_user", "user_name"),
)

handoffs = Table(
    "handoffs",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("record", Text, nullable=False),  # the fields as submitted, JSON
    Column("missing", Text, nullable=False),  # the required fields still missing, JSON list
    Column("completed_at", BigInteger),  # when it first had every required field
    Column("submitted_at", BigInteger, nullable=False),  # the latest submission
    Column("submitted_by", Text),  # the token's name or the import file
)

# Indexes that exist on one dialect only, by the dialect they are on. The metadata above holds
# what both share plus PostgreSQL's; `in_schema_of` tells a schema comparison which is which.
SQLITE_ONLY_INDEXES = frozenset({"ix_events_account_facts"})
NOT_ON_SQLITE_INDEXES = frozenset({"ix_events_account_ts"})


def in_schema_of(dialect: str):  # type: ignore[no-untyped-def]
    """An Alembic `include_object` hook that leaves the other dialect's indexes out."""

    def include(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
        if type_ != "index":
            return True
        if dialect == "sqlite":
            return name not in SQLITE_ONLY_INDEXES and name not in NOT_ON_SQLITE_INDEXES
        return name not in SQLITE_ONLY_INDEXES

    return include

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
