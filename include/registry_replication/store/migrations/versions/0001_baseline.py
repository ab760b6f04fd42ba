"""Baseline: the store of the code from before migrations (``rr_schema`` version 1).

Every store under migrations started here or at head: a store that code made is stamped at this
revision and upgraded from it, and a new store is made at head from ``schema.metadata``
(``migrate.upgrade``). No database is ever built by running this revision; its tables are those
of ``harness/replication_harness/schemas/premigration.*.sql``.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    raise RuntimeError(
        "revision 0001 is the store of the code from before migrations: it is stamped on such a "
        "store, never run; a new store is made by registry_replication.store.migrate.upgrade"
    )


def downgrade() -> None:
    raise RuntimeError("revision 0001 is the oldest store there is: there is nothing below it")
