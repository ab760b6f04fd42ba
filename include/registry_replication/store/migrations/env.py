"""Alembic's environment for the replication store: runs on the connection ``migrate`` passes."""

from __future__ import annotations

from alembic import context

from registry_replication.store.migrate import VERSION_TABLE
from registry_replication.store.schema import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters a table by copying it
)
with context.begin_transaction():
    context.run_migrations()
