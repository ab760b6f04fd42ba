"""Per-secondary state (issue 22): each row of a secondary's state names its secondary.

Expand only: every row already there lands on the placeholder secondary ``(legacy)``, which no
connection id can be (``settings.SECONDARY_ID``), and ``rr_secondaries`` gets a ``(legacy)``
row while any is left. The first writer whose connections resolve adopts them
(``store.secondaries``): this revision runs in whichever process opens the store first, often
one without the deployment's connections (the webhook, ``store upgrade --url``).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry_replication.store.migrations.legacy import LEGACY, await_adoption

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Each table of per-secondary state and its primary key from now on (None: its own ``id``).
KEYED: dict[str, list[str] | None] = {
    "rr_leases": ["secondary", "resource"],
    "rr_recorded_tags": ["secondary", "repository", "tag"],
    "rr_recorded_verifications": ["secondary", "repository"],
    "rr_repository_state": ["secondary", "repository"],
    "rr_push_latency": ["event_id", "secondary"],
    "rr_failed_layers": None,
    "rr_copied_bytes": None,
}


def upgrade() -> None:
    conn = op.get_bind()
    legacy = any(conn.execute(sa.text(f"SELECT 1 FROM {name} LIMIT 1")).first() for name in KEYED)
    op.create_table(
        "rr_secondaries",
        sa.Column("conn_id", sa.String(100), primary_key=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    if legacy:
        await_adoption(conn)
    for name, key in KEYED.items():
        # A column added with a default fills the rows there; the default then goes, so that
        # a write naming no secondary fails.
        op.add_column(
            name, sa.Column("secondary", sa.String(100), nullable=False, server_default=LEGACY)
        )
        sqlite = conn.dialect.name == "sqlite"
        with op.batch_alter_table(
            name, copy_from=_named_key(conn, name) if sqlite and key else None
        ) as table:
            table.alter_column(
                "secondary",
                server_default=None,
                existing_type=sa.String(100),
                existing_nullable=False,
            )
            if key:
                table.drop_constraint(f"{name}_pkey", type_="primary")
                table.create_primary_key(f"{name}_pkey", key)


def _named_key(conn: sa.Connection, name: str) -> sa.Table:
    """SQLite's table ``name`` as reflected, its primary key named as PostgreSQL names it, so
    that one ``drop_constraint`` serves both (SQLite's keys have no name)."""
    reflected = sa.Table(name, sa.MetaData(), autoload_with=conn)
    return sa.Table(
        name,
        sa.MetaData(),
        *(sa.Column(c.name, c.type, nullable=c.nullable) for c in reflected.columns),
        sa.PrimaryKeyConstraint(*reflected.primary_key.columns.keys(), name=f"{name}_pkey"),
        *(sa.Index(i.name, *(c.name for c in i.columns)) for i in reflected.indexes),
    )


def downgrade() -> None:
    conn = op.get_bind()
    # The old keys hold one secondary's rows: the first by name ("(legacy)" while not adopted).
    named = {
        secondary
        for name in KEYED
        for secondary in conn.execute(sa.text(f"SELECT DISTINCT secondary FROM {name}")).scalars()
    }
    for name, key in KEYED.items():
        if named:
            conn.execute(sa.text(f"DELETE FROM {name} WHERE secondary <> :s"), {"s": min(named)})
        with op.batch_alter_table(name) as table:
            if key:
                table.drop_constraint(f"{name}_pkey", type_="primary")
                table.create_primary_key(f"{name}_pkey", [c for c in key if c != "secondary"])
            table.drop_column("secondary")
    op.drop_table("rr_secondaries")
