"""Alembic environment: firstvalue hands in the connection it opened."""

from alembic import context

from firstvalue.store.schema import in_schema_of, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  include_object=in_schema_of(connection.dialect.name),
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
