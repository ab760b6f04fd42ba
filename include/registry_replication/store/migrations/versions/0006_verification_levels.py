"""Verification levels (issue 23): each repository's last verification and the damage it
found; when a cheap run last sampled each recorded tag.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rr_repository_state") as table:
        table.add_column(sa.Column("verified_level", sa.String(16)))
        table.add_column(sa.Column("verified_at", sa.DateTime(timezone=True)))
        table.add_column(sa.Column("content_slice", sa.Integer))
        table.add_column(sa.Column("damaged", sa.JSON))
    with op.batch_alter_table("rr_recorded_tags") as table:
        table.add_column(sa.Column("sampled_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("rr_recorded_tags") as table:
        table.drop_column("sampled_at")
    with op.batch_alter_table("rr_repository_state") as table:
        for name in ("damaged", "content_slice", "verified_at", "verified_level"):
            table.drop_column(name)
