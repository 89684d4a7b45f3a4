"""The team roster, account assignments (tier routing), and who an internal action went to.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "team_members",
        sa.Column("handle", sa.Text, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("timezone", sa.Text, nullable=False, server_default=sa.text("'UTC'")),
        sa.Column("away_from", sa.BigInteger),
        sa.Column("away_until", sa.BigInteger),
        sa.Column("cover", sa.Text),
        sa.Column("last_assigned_at", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "assignments",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("tier", sa.Integer),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("owner", sa.Text),
        sa.Column("assigned_at", sa.BigInteger),
        sa.Column("waiting_since", sa.BigInteger),
        sa.Column("released_at", sa.BigInteger),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_assignments_owner", "assignments", ["owner"])
    op.add_column("actions", sa.Column("assignee", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.drop_column("assignee")
    op.drop_table("assignments")
    op.drop_table("team_members")
