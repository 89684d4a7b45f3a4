import sqlalchemy as sa


def test_migrations_create_every_table(database):
    with database.engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
    assert {"events", "accounts", "contacts", "memberships", "write_keys", "api_tokens",
            "playbook_versions", "counters"} <= names
