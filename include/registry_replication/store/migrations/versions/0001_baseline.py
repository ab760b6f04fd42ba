"""Baseline: the schema from before migrations (``rr_schema`` version 1).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _written_by(*, task_id_required: bool) -> list[sa.Column]:
    return [
        sa.Column("dag_id", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=not task_id_required),
        sa.Column("map_index", sa.Integer),
    ]


def upgrade() -> None:
    schema = op.create_table("rr_schema", sa.Column("version", sa.Integer, primary_key=True))
    op.bulk_insert(schema, [{"version": 1}])
    op.create_table(
        "rr_events",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("repository", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(128)),
        sa.Column("digest", sa.String(160)),
        sa.Column("media_type", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rr_events_status_next", "rr_events", ["status", "next_attempt_at"])
    op.create_table(
        "rr_repository_state",
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tags_primary", sa.Integer),
        sa.Column("tags_secondary", sa.Integer),
        sa.Column("checksum_primary", sa.String(64)),
        sa.Column("checksum_secondary", sa.String(64)),
        sa.Column("last_sync_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rr_failed_layers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *_written_by(task_id_required=False),
        sa.Column("repository", sa.String(255), nullable=False),
        sa.Column("digest", sa.String(160), nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("status", sa.Integer),
        sa.Column("code", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rr_leases",
        sa.Column("resource", sa.String(512), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON),
    )
    op.create_table(
        "rr_runs",
        sa.Column("run_id", sa.String(255), primary_key=True),
        sa.Column("dag_id", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rr_copied_bytes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *_written_by(task_id_required=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rr_push_latency",
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("repository", sa.String(255), nullable=False),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )
    op.create_index("ix_rr_push_latency_ack", "rr_push_latency", ["acknowledged_at"])
    op.create_table(
        "rr_dag_outcomes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dag_id", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rr_dag_outcomes_dag", "rr_dag_outcomes", ["dag_id", "id"])
    op.create_table(
        "rr_alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dag_id", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("notifier", sa.String(255)),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "rr_alerts",
        "rr_dag_outcomes",
        "rr_push_latency",
        "rr_copied_bytes",
        "rr_runs",
        "rr_leases",
        "rr_failed_layers",
        "rr_repository_state",
        "rr_events",
        "rr_schema",
    ):
        op.drop_table(table)
