"""Deliveries per secondary (issue 22): an event is stored once in ``rr_events``, its state on
each secondary (status, attempts, backoff, claim, dead letter) in ``rr_deliveries``.

Every accepted event's state so far becomes its delivery on the placeholder ``(legacy)``
(revision 0007's), adopted with the other rows of a secondary's state by the first writer whose
connections resolve (``store.secondaries``); ``rr_events.status`` becomes ``accepted`` (or stays
``rejected``), its other delivery columns unused until a later revision drops them.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry_replication.store.migrations.legacy import LEGACY, await_adoption

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ACCEPTED = "accepted"
REJECTED = "rejected"


def upgrade() -> None:
    op.create_table(
        "rr_deliveries",
        sa.Column("event_id", sa.String(255), sa.ForeignKey("rr_events.id"), primary_key=True),
        sa.Column("secondary", sa.String(100), primary_key=True, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("event_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_rr_deliveries_claim", "rr_deliveries", ["secondary", "status", "next_attempt_at"]
    )
    op.create_index("ix_rr_deliveries_owner", "rr_deliveries", ["lease_owner"])
    op.create_index("ix_rr_deliveries_status_updated", "rr_deliveries", ["status", "updated_at"])
    conn = op.get_bind()
    carried = conn.execute(
        sa.text(
            "INSERT INTO rr_deliveries (event_id, secondary, status, attempts, next_attempt_at, "
            "lease_owner, lease_expires_at, last_error, event_timestamp, received_at, "
            "acknowledged_at, updated_at) "
            "SELECT id, :legacy, status, attempts, next_attempt_at, lease_owner, "
            "lease_expires_at, last_error, timestamp, received_at, "
            "CASE WHEN status = 'done' THEN updated_at END, updated_at "
            "FROM rr_events WHERE status <> :rejected"
        ),
        {"legacy": LEGACY, "rejected": REJECTED},
    ).rowcount
    conn.execute(
        sa.text("UPDATE rr_events SET status = :accepted WHERE status <> :rejected"),
        {"accepted": ACCEPTED, "rejected": REJECTED},
    )
    if carried:  # on a store adopted already, its deliveries wait for the next adoption
        await_adoption(conn)


def downgrade() -> None:
    conn = op.get_bind()
    # The old columns hold one delivery per event: the first secondary's by name.
    conn.execute(
        sa.text(
            "UPDATE rr_events SET status = d.status, attempts = d.attempts, "
            "next_attempt_at = d.next_attempt_at, lease_owner = d.lease_owner, "
            "lease_expires_at = d.lease_expires_at, last_error = d.last_error, "
            "updated_at = d.updated_at FROM rr_deliveries d "
            "WHERE d.event_id = rr_events.id AND d.secondary = "
            "(SELECT min(secondary) FROM rr_deliveries WHERE event_id = rr_events.id)"
        )
    )
    op.drop_table("rr_deliveries")
