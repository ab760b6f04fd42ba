"""The counters' carried totals per secondary (issue 22): ``rr_carried_totals`` is keyed by
(secondary, name), so that a secondary's counter (its deliveries done, its bytes copied, its
push-to-replica histogram) stays whole when retention prunes its rows.

The totals carried so far land on the placeholder ``(legacy)`` (revision 0007's) and go to the
secondary that adopts the other legacy rows (``store.secondaries``); the rejected events'
total belongs to no secondary (``''``).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry_replication.store.migrations.legacy import LEGACY, await_adoption

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = "rr_carried_totals"
KEY = f"{TABLE}_pkey"
REJECTED_TOTAL = "events_rejected"  # queue_status.finished_total("rejected")


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column(
        TABLE, sa.Column("secondary", sa.String(100), nullable=False, server_default=LEGACY)
    )
    with op.batch_alter_table(TABLE, copy_from=_named_key(conn)) as table:
        table.alter_column(
            "secondary", server_default=None, existing_type=sa.String(100), existing_nullable=False
        )
        table.drop_constraint(KEY, type_="primary")
        table.create_primary_key(KEY, ["secondary", "name"])
    conn.execute(
        sa.text(f"UPDATE {TABLE} SET secondary = '' WHERE name = :rejected"),
        {"rejected": REJECTED_TOTAL},
    )
    carried = conn.execute(
        sa.text(f"SELECT 1 FROM {TABLE} WHERE secondary = :legacy"), {"legacy": LEGACY}
    ).first()
    if carried:  # on a store adopted already, its totals wait for the next adoption
        await_adoption(conn)


def _named_key(conn: sa.Connection) -> sa.Table | None:
    """SQLite's table as reflected, its primary key named as PostgreSQL names it, so that one
    ``drop_constraint`` serves both (SQLite's keys have no name); None on PostgreSQL."""
    if conn.dialect.name != "sqlite":
        return None
    reflected = sa.Table(TABLE, sa.MetaData(), autoload_with=conn)
    return sa.Table(
        TABLE,
        sa.MetaData(),
        *(sa.Column(c.name, c.type, nullable=c.nullable) for c in reflected.columns),
        sa.PrimaryKeyConstraint(*reflected.primary_key.columns.keys(), name=KEY),
    )


def downgrade() -> None:
    conn = op.get_bind()
    # The old key holds one total per counter: the sum over the secondaries.
    totals = conn.execute(sa.text(f"SELECT name, SUM(value) FROM {TABLE} GROUP BY name")).all()
    conn.execute(sa.text(f"DELETE FROM {TABLE}"))
    with op.batch_alter_table(TABLE) as table:
        table.drop_constraint(KEY, type_="primary")
        table.create_primary_key(KEY, ["name"])
        table.drop_column("secondary")
    for name, value in totals:
        conn.execute(
            sa.text(f"INSERT INTO {TABLE} (name, value) VALUES (:name, :value)"),
            {"name": name, "value": int(value)},
        )
