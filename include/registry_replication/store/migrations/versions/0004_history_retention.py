"""History retention: the counters' carried totals, and indexes for finding old rows.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rr_carried_totals",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_rr_events_status_updated", "rr_events", ["status", "updated_at"])
    op.create_index("ix_rr_copied_bytes_recorded", "rr_copied_bytes", ["recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_rr_copied_bytes_recorded", "rr_copied_bytes")
    op.drop_index("ix_rr_events_status_updated", "rr_events")
    op.drop_table("rr_carried_totals")
