"""Experiment assignments: which variant of which experiment each account was given, once.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment_assignments",
        sa.Column("experiment", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("variant", sa.Text, nullable=False),
        sa.Column("stratum", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("assigned_at", sa.BigInteger, nullable=False),
        sa.Column("playbook_version", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("experiment", "account_id"),
    )
    op.create_index("ix_experiment_assignments_slot", "experiment_assignments",
                    ["experiment", "stratum", "position"], unique=True)
    # Ticks and reads look an account's variants up by account.
    op.create_index("ix_experiment_assignments_account", "experiment_assignments",
                    ["account_id"])


def downgrade() -> None:
    op.drop_table("experiment_assignments")
