"""CRM, calendar and email integrations: sync rows, sync cursors, inbound webhook ids, bookings.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "crm_sync",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("connector", sa.Text, nullable=False),
        sa.Column("record_type", sa.Text, nullable=False),
        sa.Column("record_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("desired", sa.Text, nullable=False),
        sa.Column("pushed", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", sa.BigInteger),
        sa.Column("error", sa.Text),
        sa.Column("remote_id", sa.Text),
        sa.Column("changed_at", sa.BigInteger, nullable=False),
        sa.Column("delivered_at", sa.BigInteger),
    )
    op.create_index("ix_crm_sync_record", "crm_sync", ["connector", "record_type", "record_id"],
                    unique=True)
    op.create_index("ix_crm_sync_due", "crm_sync", ["connector", "status", "next_attempt_at"])

    op.create_table(
        "crm_cursors",
        sa.Column("connector", sa.Text, primary_key=True),
        sa.Column("evaluated_at", sa.BigInteger, nullable=False),
    )

    op.create_table(
        "inbound_webhooks",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("delivery_id", sa.Text, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
    )
    op.create_index("ix_inbound_webhooks_delivery", "inbound_webhooks",
                    ["source", "delivery_id"], unique=True)

    op.create_table(
        "calendar_bookings",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("booking_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("meeting", sa.Text, nullable=False),
        sa.Column("start_time", sa.Text),
        sa.Column("account_id", sa.Text),
        sa.Column("seen_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_calendar_bookings_booking", "calendar_bookings",
                    ["source", "booking_id"], unique=True)


def downgrade() -> None:
    op.drop_table("calendar_bookings")
    op.drop_table("inbound_webhooks")
    op.drop_table("crm_cursors")
    op.drop_table("crm_sync")
