"""The record of the secondary's tags, which cheap runs read instead of listing it (issue 13).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rr_recorded_tags",
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("tag", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("digest", sa.String(160)),
        sa.Column("media_type", sa.String(255)),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("written_by", sa.String(255), nullable=False),
    )
    op.create_table(
        "rr_recorded_verifications",
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("registry", sa.String(512), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rr_recorded_verifications")
    op.drop_table("rr_recorded_tags")
