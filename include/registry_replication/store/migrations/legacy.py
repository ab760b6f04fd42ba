"""What revisions 0007-0009 share: the placeholder secondary ``(legacy)`` of the rows from
before there were several, and the row in ``rr_secondaries`` that has them wait for adoption
(``store.secondaries``). Frozen with the revisions: a later change goes in a new revision."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

LEGACY = "(legacy)"


def await_adoption(conn: sa.Connection) -> None:
    """Have the rows on ``LEGACY`` wait for the next writer's adoption (once: a store may have
    been adopted already, or have them waiting)."""
    conn.execute(
        sa.text(
            "INSERT INTO rr_secondaries (conn_id, first_seen_at) SELECT :legacy, :at "
            "WHERE NOT EXISTS (SELECT 1 FROM rr_secondaries WHERE conn_id = :legacy)"
        ),
        {"legacy": LEGACY, "at": dt.datetime.now(dt.UTC)},
    )
