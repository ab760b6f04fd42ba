"""Run artifacts follow the store: each run file's writer, and its bytes when the store holds
them (issue 20).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rr_run_artifacts",
        sa.Column("folder", sa.String(512), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("data", sa.LargeBinary),
    )
    op.create_index("ix_rr_run_artifacts_run_at", "rr_run_artifacts", ["run_at"])


def downgrade() -> None:
    op.drop_index("ix_rr_run_artifacts_run_at", "rr_run_artifacts")
    op.drop_table("rr_run_artifacts")
