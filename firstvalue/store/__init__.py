"""The system of record: events, accounts, contacts, state; SQLite or PostgreSQL."""
