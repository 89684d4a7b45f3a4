"""The sales-to-CS handoff record.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handoffs",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("missing", sa.Text, nullable=False),
        sa.Column("completed_at", sa.BigInteger),
        sa.Column("submitted_at", sa.BigInteger, nullable=False),
        sa.Column("submitted_by", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("handoffs")
