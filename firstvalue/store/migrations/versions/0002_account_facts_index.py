"""SQLite: a covering index for reading an account's events.

Evaluating an account reads all its track events. Through `ix_events_account_ts` SQLite then
looks every row up in the table, scattered in arrival order; this index holds every column the
engine reads, so those reads never touch the table (2.6 s down to 1.1 s for a million events).
It replaces `ix_events_account_ts`, whose queries it also serves, so a stored event still costs
one index entry for its account. PostgreSQL keeps `ix_events_account_ts`: its index entries
cannot hold a 32 KiB `properties` document.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = ["account_id", "type", "name", "ts", "message_id", "user_id", "received_at",
           "attached_at", "properties"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_index("ix_events_account_facts", "events", COLUMNS)
    op.drop_index("ix_events_account_ts", table_name="events")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_index("ix_events_account_ts", "events", ["account_id", "ts"])
    op.drop_index("ix_events_account_facts", table_name="events")
