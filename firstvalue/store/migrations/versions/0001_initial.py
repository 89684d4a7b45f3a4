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
        "counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for name in ("counters", "playbook_versions", "api_tokens", "write_keys", "memberships",
                 "contacts", "accounts", "events"):
        op.drop_table(name)
