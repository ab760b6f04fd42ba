"""The event queue as operators see it (``QueueStatus``, the base of ``EventQueue``): what the
status page, the metrics and the alerts read (counts, listings, dead letters, the time events
waited) and the one operator action on it, ``retry_failed``.

Counts are of deliveries (an event to one secondary), summed over the secondaries unless one is
given, plus the rejected events, which belong to no secondary (counted only in the sums).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import sqlalchemy as sa

from registry_replication.outcomes import EventStatus
from registry_replication.store.schema import aware, carried, deliveries, events, now

# The deliveries and events retention deletes once they are this old: finished ones, never one
# waiting or failed. Their counts are carried (``rr_carried_totals``, as ``finished_total``).
FINISHED = (EventStatus.DONE, EventStatus.REJECTED)
WAITING = (EventStatus.PENDING, EventStatus.PROCESSING)


def finished_total(status: str) -> str:
    """The carried total of the pruned deliveries (or rejected events) of a finished ``status``."""
    return f"events_{status}"


def _of(secondary: str | None) -> sa.ColumnElement[bool]:
    """The deliveries of ``secondary`` (None: of every secondary)."""
    return sa.true() if secondary is None else deliveries.c.secondary == secondary


class QueueStatus:
    """The event queue's counts and listings, and the retry of a dead letter."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def stats(self, secondary: str | None = None) -> dict[str, Any]:
        """Deliveries per status (and rejected events) and the age of the oldest waiting one."""
        counts: Counter[str] = Counter()
        with self.engine.connect() as conn:
            counts.update(
                dict(
                    conn.execute(
                        sa.select(deliveries.c.status, sa.func.count())
                        .where(_of(secondary))
                        .group_by(deliveries.c.status)
                    ).all()
                )
            )
            if secondary is None:
                counts[EventStatus.REJECTED] += conn.execute(
                    sa.select(sa.func.count()).where(events.c.status == EventStatus.REJECTED)
                ).scalar_one()
            oldest = conn.execute(
                sa.select(sa.func.min(deliveries.c.received_at)).where(
                    _of(secondary), deliveries.c.status.in_(WAITING)
                )
            ).scalar()
        oldest = aware(oldest)
        return {
            "counts": {s: counts[s] for s in EventStatus},
            "oldest_waiting_seconds": (now() - oldest).total_seconds() if oldest else None,
        }

    def events(
        self, status: str | None = None, limit: int = 100, secondary: str | None = None
    ) -> list[dict[str, Any]]:
        """Deliveries with their events (and rejected events, with no secondary), newest first."""
        parts = []
        if status != EventStatus.REJECTED:
            delivered = _listing().where(_of(secondary))
            parts.append(
                delivered if status is None else delivered.where(deliveries.c.status == status)
            )
        if status in (None, EventStatus.REJECTED) and secondary is None:
            parts.append(_rejected())
        listed = sa.union_all(*parts).subquery()
        query = sa.select(listed).order_by(listed.c.timestamp.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def status_counts(self, secondary: str | None = None) -> dict[str, int]:
        """Deliveries (to ``secondary``; None: to each, and the rejected events) per status,
        every status included; done and rejected count those retention pruned too (they are
        counters: they never go down)."""
        delivered = (
            sa.select(deliveries.c.status, sa.func.count().label("n"))
            .where(_of(secondary))
            .group_by(deliveries.c.status)
        )
        rejected = sa.select(
            sa.literal(EventStatus.REJECTED, sa.String).label("status"), sa.func.count()
        ).where(
            events.c.status == EventStatus.REJECTED,
            sa.true() if secondary is None else sa.false(),  # rejected: no secondary's
        )
        pruned = [
            sa.select(
                sa.literal(s, sa.String).label("status"), carried(finished_total(s), secondary)
            )
            for s in FINISHED
        ]
        counts: Counter[str] = Counter()
        with self.engine.connect() as conn:  # one statement: one snapshot of rows and totals
            for status, n in conn.execute(sa.union_all(delivered, rejected, *pruned)):
                counts[status] += int(n or 0)
        return {s: counts[s] for s in EventStatus}

    def dead_letters(self, limit: int = 100, secondary: str | None = None) -> list[dict[str, Any]]:
        """Deliveries that failed every attempt, newest first (rejected events are listed by
        status)."""
        query = (
            _listing()
            .where(_of(secondary), deliveries.c.status == EventStatus.FAILED)
            .order_by(deliveries.c.updated_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def retry_failed(self, event_id: str, secondary: str | None = None) -> bool:
        """Put an event's failed deliveries (to ``secondary``, None: to each) back in the queue
        with fresh attempts; False if it has none."""
        at = now()
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    deliveries.update()
                    .where(
                        _of(secondary),
                        deliveries.c.event_id == event_id,
                        deliveries.c.status == EventStatus.FAILED,
                    )
                    .values(
                        status=EventStatus.PENDING,
                        attempts=0,
                        next_attempt_at=at,
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=at,
                    )
                ).rowcount
                > 0
            )

    def queue_intervals(
        self, since: dt.datetime, secondary: str | None = None
    ) -> list[tuple[dt.datetime, dt.datetime | None]]:
        """(received, left the queue or None) of each delivery (and rejected event) waiting at
        some time after ``since``.

        A delivery waits from its event's arrival until it is done or failed (its last update),
        a rejected event until it was rejected.
        """
        waiting = deliveries.c.status.in_(WAITING)
        parts = [
            sa.select(
                deliveries.c.received_at, deliveries.c.updated_at, waiting.label("waiting")
            ).where(_of(secondary), sa.or_(waiting, deliveries.c.updated_at >= since))
        ]
        if secondary is None:
            parts.append(
                sa.select(events.c.received_at, events.c.updated_at, sa.false()).where(
                    events.c.status == EventStatus.REJECTED, events.c.updated_at >= since
                )
            )
        with self.engine.connect() as conn:
            rows = conn.execute(sa.union_all(*parts)).all()
        return [(aware(r[0]), None if r[2] else aware(r[1])) for r in rows]


# What a listing row says of the event itself, whatever its deliveries.
_EVENT = (
    events.c.id,
    events.c.received_at,
    events.c.timestamp,
    events.c.action,
    events.c.repository,
    events.c.tag,
    events.c.digest,
    events.c.media_type,
)


def _listing() -> sa.Select[Any]:
    """Each delivery as a row of its event with the delivery's state."""
    return sa.select(
        *_EVENT,
        deliveries.c.secondary,
        deliveries.c.status,
        deliveries.c.attempts,
        deliveries.c.next_attempt_at,
        deliveries.c.lease_owner,
        deliveries.c.lease_expires_at,
        deliveries.c.last_error,
        deliveries.c.acknowledged_at,
        deliveries.c.updated_at,
    ).join_from(deliveries, events, events.c.id == deliveries.c.event_id)


def _rejected() -> sa.Select[Any]:
    """Each rejected event as a row of the same shape, with no secondary."""
    return sa.select(
        *_EVENT,
        sa.cast(sa.null(), sa.String(100)).label("secondary"),
        events.c.status,
        events.c.attempts,
        events.c.next_attempt_at,
        events.c.lease_owner,
        events.c.lease_expires_at,
        events.c.last_error,
        sa.cast(sa.null(), sa.DateTime(timezone=True)).label("acknowledged_at"),
        events.c.updated_at,
    ).where(events.c.status == EventStatus.REJECTED)
