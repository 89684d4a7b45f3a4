"""The dashboard: its users and their sessions, snoozed tasks, who changed an action, and an
index of when each account was evaluated.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("team_handle", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("user_name", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_web_sessions_user", "web_sessions", ["user_name"])
    op.create_index("ix_accounts_evaluated", "accounts", ["evaluated_at", "evaluated_seq", "id"])
    op.add_column("actions", sa.Column("snoozed_until", sa.BigInteger))
    op.add_column("actions", sa.Column("changed_by", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.drop_column("changed_by")
        batch.drop_column("snoozed_until")
    op.drop_index("ix_accounts_evaluated", "accounts")
    op.drop_index("ix_web_sessions_user", "web_sessions")
    op.drop_table("web_sessions")
    op.drop_table("users")
