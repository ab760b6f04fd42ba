"""The secondaries a store serves, and the adoption of the rows from before there were several.

Revision 0007 put every row of a secondary's state that was already there on the placeholder
``LEGACY`` and left a ``LEGACY`` row in ``rr_secondaries``: it runs in whichever process opens
the store first, which may not know the deployment's connections. Every writer's entry (each
task, the operator, the CLI's ``plan`` and ``sync``) calls ``adopt_legacy`` before it reads or
writes a secondary's rows; the first one gives them to one configured secondary, in one
transaction, and the others find nothing left (cached per process from then on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from registry_replication.store.schema import (
    LEGACY,
    carried_totals,
    copied_bytes,
    deliveries,
    failed_layers,
    leases,
    push_latency,
    recorded_tags,
    recorded_verifications,
    repository_state,
    secondaries,
)

log = logging.getLogger(__name__)

# Every table of a secondary's state (the rows revisions 0007, 0008 and 0009 put on
# ``LEGACY``).
KEYED = (
    carried_totals,
    leases,
    recorded_tags,
    recorded_verifications,
    repository_state,
    push_latency,
    failed_layers,
    copied_bytes,
    deliveries,
)
# Stores (by URL) this process found nothing to adopt in: no query from then on.
_settled: set[str] = set()


class Secondaries:
    """The secondaries' side of the store: the adoption of the legacy rows."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def adopt_legacy(
        self, configured: Sequence[str], url_of: Callable[[str], str | None], preferred: str
    ) -> str | None:
        """Give the ``LEGACY`` rows to a ``configured`` secondary: the one whose URL
        (``url_of``, None: unknown) the legacy record was verified at, else ``preferred`` (the
        ``secondary_conn_id`` setting) if configured, else the first. Returns the secondary
        this call gave them to (None: nothing was left to adopt)."""
        key = str(self.engine.url)
        if key in _settled:
            return None
        with self.engine.connect() as conn:
            pending = conn.execute(
                sa.select(secondaries.c.conn_id).where(secondaries.c.conn_id == LEGACY)
            ).first()
            stamped = set(
                conn.execute(
                    sa.select(recorded_verifications.c.registry)
                    .where(recorded_verifications.c.secondary == LEGACY)
                    .distinct()
                ).scalars()
            )
        if pending is None:
            _settled.add(key)
            return None
        by_url = [s for s in configured if stamped and url_of(s) in stamped]
        chosen = (by_url or [preferred if preferred in configured else configured[0]])[0]
        with self.engine.begin() as conn:
            taken = conn.execute(secondaries.delete().where(secondaries.c.conn_id == LEGACY))
            if taken.rowcount != 1:  # another process adopted them meanwhile
                _settled.add(key)
                return None
            for table in KEYED:
                self._adopt(conn, table, chosen)
        _settled.add(key)
        log.warning(
            "the replication store's rows from before several secondaries (a single "
            "secondary's record, leases, states, history and event deliveries) are now %s's (%s)",
            chosen,
            "its URL is the one they were verified at"
            if by_url
            else "no configured secondary's URL matched the record: "
            + ("secondary_conn_id" if chosen == preferred else "the first configured"),
        )
        return chosen

    @staticmethod
    def _adopt(conn: sa.Connection, table: sa.Table, chosen: str) -> None:
        """``table``'s ``LEGACY`` rows become ``chosen``'s; where ``chosen`` already has a row
        of the same key (written meanwhile), that newer row stays and the legacy one goes; a
        carried total is added to ``chosen``'s of the same counter instead (both counted)."""
        key = [c for c in table.primary_key.columns if c.name != "secondary"]
        if table is carried_totals:
            legacy = carried_totals.alias("legacy")
            conn.execute(
                carried_totals.update()
                .where(carried_totals.c.secondary == chosen)
                .values(
                    value=carried_totals.c.value
                    + sa.func.coalesce(
                        sa.select(legacy.c.value)
                        .where(legacy.c.secondary == LEGACY, legacy.c.name == carried_totals.c.name)
                        .scalar_subquery(),
                        0,
                    )
                )
            )
        if len(key) < len(table.primary_key.columns):
            other = table.alias("own")
            conn.execute(
                table.delete().where(
                    table.c.secondary == LEGACY,
                    sa.exists().where(
                        other.c.secondary == chosen, *(other.c[c.name] == c for c in key)
                    ),
                )
            )
        conn.execute(table.update().where(table.c.secondary == LEGACY).values(secondary=chosen))
