"""The event queue as operators see it (``QueueStatus``, the base of ``EventQueue``): what the
status page, the metrics and the alerts read (counts, listings, dead letters, the time events
waited) and the one operator action on it, ``retry_failed``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import sqlalchemy as sa

from registry_replication.outcomes import EventStatus
from registry_replication.store.schema import aware, carried, events, now

# The events retention deletes once they are this old: finished ones, never one waiting or
# failed. Their counts are carried (``rr_carried_totals``, as ``finished_total(status)``).
FINISHED = (EventStatus.DONE, EventStatus.REJECTED)


def finished_total(status: str) -> str:
    """The carried total of the pruned events of a finished ``status``."""
    return f"events_{status}"


class QueueStatus:
    """The event queue's counts and listings, and the retry of a dead letter."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def stats(self) -> dict[str, Any]:
        """Events per status and the age of the oldest waiting event."""
        with self.engine.connect() as conn:
            counts = dict(
                conn.execute(
                    sa.select(events.c.status, sa.func.count()).group_by(events.c.status)
                ).all()
            )
            oldest = conn.execute(
                sa.select(sa.func.min(events.c.received_at)).where(
                    events.c.status.in_([EventStatus.PENDING, EventStatus.PROCESSING])
                )
            ).scalar()
        oldest = aware(oldest)
        return {
            "counts": {s: counts.get(s, 0) for s in EventStatus},
            "oldest_waiting_seconds": (now() - oldest).total_seconds() if oldest else None,
        }

    def events(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(events).order_by(events.c.timestamp.desc()).limit(limit)
        if status:
            query = query.where(events.c.status == status)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def status_counts(self) -> dict[str, int]:
        """Events per status, every status included; done and rejected count the events
        retention pruned too (they are counters: they never go down)."""
        in_queue = sa.select(events.c.status, sa.func.count().label("n")).group_by(events.c.status)
        pruned = [
            sa.select(sa.literal(s, sa.String).label("status"), carried(finished_total(s)))
            for s in FINISHED
        ]
        counts: Counter[str] = Counter()
        with self.engine.connect() as conn:  # one statement: one snapshot of rows and totals
            for status, n in conn.execute(sa.union_all(in_queue, *pruned)):
                counts[status] += int(n)
        return {s: counts[s] for s in EventStatus}

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Events that failed every attempt, newest first (rejected events are listed by status)."""
        query = (
            sa.select(events)
            .where(events.c.status == EventStatus.FAILED)
            .order_by(events.c.updated_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def retry_failed(self, event_id: str) -> bool:
        """Put a failed event back in the queue with fresh attempts; False if it is not failed."""
        at = now()
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    events.update()
                    .where(events.c.id == event_id, events.c.status == EventStatus.FAILED)
                    .values(
                        status=EventStatus.PENDING,
                        attempts=0,
                        next_attempt_at=at,
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=at,
                    )
                ).rowcount
                == 1
            )

    def queue_intervals(self, since: dt.datetime) -> list[tuple[dt.datetime, dt.datetime | None]]:
        """(received, left the queue or None) of each event waiting at some time after ``since``.

        An event waits from its arrival until it is done, failed or rejected (its last update).
        """
        waiting = events.c.status.in_([EventStatus.PENDING, EventStatus.PROCESSING])
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    events.c.received_at, events.c.updated_at, waiting.label("waiting")
                ).where(sa.or_(waiting, events.c.updated_at >= since))
            )
            return [
                (aware(r.received_at), None if r.waiting else aware(r.updated_at)) for r in rows
            ]
