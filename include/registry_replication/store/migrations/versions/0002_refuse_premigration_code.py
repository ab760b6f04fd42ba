"""rr_schema version 2: code from before migrations refuses the store from now on.

That code checks ``rr_schema`` (it knows version 1 only) and would otherwise keep writing to a
schema it no longer matches once later revisions change it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM rr_schema")
    op.execute("INSERT INTO rr_schema (version) VALUES (2)")


def downgrade() -> None:
    op.execute("DELETE FROM rr_schema")
    op.execute("INSERT INTO rr_schema (version) VALUES (1)")
