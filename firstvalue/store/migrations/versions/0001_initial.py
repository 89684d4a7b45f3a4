"""The initial schema: events, accounts, contacts, memberships, keys, tokens, playbooks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("account_id", sa.Text),
        sa.Column("group_id", sa.Text),
        sa.Column("user_id", sa.Text),
        sa.Column("anonymous_id", sa.Text),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("attached_at", sa.BigInteger),
        sa.Column("flags", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("properties", sa.Text, nullable=False, server_default=sa.text("'{}'")),
    )
    op.create_index("ix_events_message_id", "events", ["message_id"], unique=True)
    op.create_index("ix_events_account_ts", "events", ["account_id", "ts"])
    op.create_index("ix_events_member_user", "events", ["user_id"],
                    sqlite_where=sa.text("group_id IS NULL"),
                    postgresql_where=sa.text("group_id IS NULL"))
    op.create_index("ix_events_held_group", "events", ["group_id"],
                    sqlite_where=sa.text("account_id IS NULL"),
                    postgresql_where=sa.text("account_id IS NULL"))

    op.create_table(
        "accounts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("traits", sa.Text, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("change_seq", sa.BigInteger, nullable=False, server_default=sa.text("1")),
        sa.Column("evaluated_seq", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("next_wake_at", sa.BigInteger),
        sa.Column("evaluated_at", sa.BigInteger),
        sa.Column("playbook_version", sa.Text),
        sa.Column("state", sa.Text),
    )
    op.create_index("ix_accounts_next_wake_at", "accounts", ["next_wake_at"])

    op.create_table(
        "contacts",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("traits", sa.Text, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "memberships",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_memberships_user", "memberships", ["user_id"])
    op.create_index("ix_memberships_account", "memberships", ["account_id"])

    for name, secret in (("write_keys", "key_hash"), ("api_tokens", "token_hash")):
        columns = [
            sa.Column("id", ID, primary_key=True, autoincrement=True),
            sa.Column(secret, sa.Text, nullable=False, unique=True),
        ]
        if name == "api_tokens":
            columns.append(sa.Column("role", sa.Text, nullable=False))
        columns += [sa.Column("name", sa.Text, nullable=False),
                    sa.Column("created_at", sa.BigInteger, nullable=False)]
        op.create_table(name, *columns)

    op.create_table(
        "playbook_versions",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("first_used_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "actions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text),
        sa.Column("contact", sa.Text),
        sa.Column("template", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("due_at", sa.BigInteger, nullable=False),
        sa.Column("not_before", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("sent_at", sa.BigInteger),
        sa.Column("resolved_at", sa.BigInteger),
        sa.Column("done_at", sa.BigInteger),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("late", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("facts", sa.Text, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("playbook_version", sa.Text, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("body", sa.Text),
    )
    op.create_index("ix_actions_key", "actions", ["key"], unique=True)
    op.create_index("ix_actions_account", "actions", ["account_id"])
    op.create_index("ix_actions_status_next", "actions", ["status", "next_attempt_at"])
    op.create_table(
        "stalls",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("identity", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("milestone", sa.Text),
        sa.Column("diagnosis", sa.Text, nullable=False),
        sa.Column("opened_at", sa.BigInteger, nullable=False),
        sa.Column("closed_at", sa.BigInteger),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
        sa.Column("retracted_at", sa.BigInteger),
    )
    op.create_index("ix_stalls_identity", "stalls", ["account_id", "run", "identity"],
                    unique=True)
    op.create_index("ix_stalls_status", "stalls", ["status"])
    op.create_table(
        "endpoints",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("disabled_at", sa.BigInteger),
        sa.Column("reason", sa.Text),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for name in ("counters", "endpoints", "stalls", "actions", "playbook_versions", "api_tokens",
                 "write_keys", "memberships", "contacts", "accounts", "events"):
        op.drop_table(name)
