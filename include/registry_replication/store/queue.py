"""The durable event queue.

A registry keeps undelivered notifications only in memory, so the webhook stores each event
here before it answers 2xx: once, with one delivery per configured secondary. The
``registry_events`` DAG claims a secondary's deliveries under a lease (a crashed run's come
back when the lease ends) and acknowledges each one only once its image is complete on that
secondary; each secondary's deliveries are claimed, backed off and dead-lettered on their own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from registry_replication.outcomes import EventStatus
from registry_replication.store.engine import dialect_insert
from registry_replication.store.queue_status import QueueStatus
from registry_replication.store.schema import ACCEPTED, aware, deliveries, events, now

# A delivery put back waits this long after its first attempt, twice as long after each next.
RETRY_BACKOFF = dt.timedelta(seconds=5)
RETRY_BACKOFF_MAX = dt.timedelta(hours=1)
_DOUBLINGS = 20


@dataclass(frozen=True)
class Event:
    """A manifest push or delete reported by the primary."""

    id: str
    action: str
    repository: str
    tag: str | None
    digest: str | None
    media_type: str | None
    timestamp: dt.datetime
    attempts: int = 0
    status: str = EventStatus.PENDING  # REJECTED for an event the webhook refused to process
    error: str | None = None  # why it was rejected


class EventQueue(QueueStatus):
    """Events from the webhook to the event DAG: add, claim, acknowledge, back off, each per
    secondary (and, from ``QueueStatus``, what operators read of it)."""

    # -- the webhook's side -------------------------------------------------------------------

    def add(self, new: Iterable[Event], secondaries: Sequence[str]) -> int:
        """Store events idempotently by id and, for each event new and not rejected, a delivery
        to each of ``secondaries``, in one transaction; returns how many events were new."""
        at = now()
        received: dict[str, Event] = {}
        for e in new:  # the first of an id is the one kept, as the database keeps the first
            received.setdefault(e.id, e)
        rows = [
            {
                "id": e.id,
                "received_at": at,
                "timestamp": e.timestamp,
                "action": e.action,
                "repository": e.repository,
                "tag": e.tag,
                "digest": e.digest,
                "media_type": e.media_type,
                "status": EventStatus.REJECTED if e.status == EventStatus.REJECTED else ACCEPTED,
                "last_error": e.error,
                "attempts": 0,
                "next_attempt_at": at,
                "updated_at": at,
            }
            for e in received.values()
        ]
        if not rows:
            return 0
        # A repeated delivery (same id) is skipped by the database, not looked up first; only
        # the ids it inserted get deliveries, so a redelivered notification creates nothing.
        insert = (
            dialect_insert(self.engine, events)
            .on_conflict_do_nothing(index_elements=[events.c.id])
            .returning(events.c.id)
        )
        with self.engine.begin() as conn:
            inserted = conn.execute(insert, rows).scalars().all()
            owed = [
                {
                    "event_id": event_id,
                    "secondary": secondary,
                    "status": EventStatus.PENDING,
                    "attempts": 0,
                    "next_attempt_at": at,
                    "event_timestamp": received[event_id].timestamp,
                    "received_at": at,
                    "updated_at": at,
                }
                for event_id in inserted
                if received[event_id].status != EventStatus.REJECTED
                for secondary in secondaries
            ]
            if owed:
                conn.execute(deliveries.insert(), owed)
        return len(inserted)

    # -- the DAG's side -----------------------------------------------------------------------

    def ready_counts(self, secondaries: Sequence[str]) -> dict[str, int]:
        """Per secondary, the deliveries a run could claim now (pending and due, or with an
        expired lease)."""
        with self.engine.connect() as conn:
            found = dict(
                conn.execute(
                    sa.select(deliveries.c.secondary, sa.func.count())
                    .where(deliveries.c.secondary.in_(secondaries), _claimable(now()))
                    .group_by(deliveries.c.secondary)
                ).all()
            )
        return {s: found.get(s, 0) for s in secondaries}

    def claim(
        self,
        secondary: str,
        *,
        lease_seconds: float = 300,
        limit: int = 500,
        owner: str | None = None,
        max_attempts: int = 10,
    ) -> tuple[str, list[Event]]:
        """Take up to ``limit`` of ``secondary``'s due deliveries under a lease; returns the
        lease owner and their events (with that delivery's attempts).

        ``owner``: a writer's identity (``Leases.owner``), whose heartbeat then renews these
        leases with its write leases, so a short lease suffices for any amount of work.

        Every claim counts as an attempt. Deliveries whose worker was lost (their lease ran
        out unacknowledged) are claimed before any other, by bisection: of the lost ones with
        the most attempts (the suspects), half at a time. An event that kills its worker (out
        of memory, a crash) is alone after about log2(batch) claims, the events it was claimed
        with go on in the halves it is not in, and after ``max_attempts`` claims
        ``dead_letter_lost`` fails it; lost deliveries at ``max_attempts`` are never claimed
        again. All of it per secondary: another secondary's deliveries are not suspects here.
        """
        owner = owner or uuid.uuid4().hex
        at = now()
        mine = deliveries.c.secondary == secondary
        lost = sa.and_(
            mine,
            deliveries.c.status == EventStatus.PROCESSING,
            deliveries.c.lease_expires_at < at,
            deliveries.c.attempts < max_attempts,
        )
        with self.engine.connect() as conn:  # a read apart: the claim below stays one statement
            suspects = conn.execute(
                sa.select(deliveries.c.attempts, sa.func.count().label("n"))
                .where(lost)
                .group_by(deliveries.c.attempts)
                .order_by(deliveries.c.attempts.desc())
                .limit(1)
            ).first()
        if suspects is None:
            due = sa.select(deliveries.c.event_id).where(mine, _claimable(at))
        else:
            limit = min(limit, max(1, suspects.n // 2))
            due = sa.select(deliveries.c.event_id).where(
                lost, deliveries.c.attempts == suspects.attempts
            )
        # Materialized: read once. PostgreSQL may otherwise run the subquery again for each row
        # the UPDATE visits, where SKIP LOCKED skips the rows it just updated and LIMIT hands
        # out the next ones.
        due = (
            due.order_by(deliveries.c.event_timestamp)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("due")
            .prefix_with("MATERIALIZED")
        )
        with self.engine.begin() as conn:
            # One statement: atomic on SQLite too (it takes the write lock before it reads),
            # where a SELECT then UPDATE would let two claimers pick the same deliveries.
            conn.execute(
                deliveries.update()
                .where(mine, deliveries.c.event_id.in_(sa.select(due.c.event_id)))
                .values(
                    status=EventStatus.PROCESSING,
                    lease_owner=owner,
                    lease_expires_at=at + dt.timedelta(seconds=lease_seconds),
                    attempts=deliveries.c.attempts + 1,
                    updated_at=at,
                )
            )
            rows = conn.execute(_joined().where(mine, deliveries.c.lease_owner == owner)).all()
        return owner, [_event(row) for row in rows]

    def dead_letter_lost(self, secondary: str, max_attempts: int) -> list[Event]:
        """Fail ``secondary``'s deliveries claimed ``max_attempts`` times whose last claim's
        lease ran out unacknowledged: each of those claims lost its worker (killed, out of
        memory, hung past its lease), so the event is what kills it. Returns their events,
        with the reason."""
        at = now()
        with self.engine.begin() as conn:
            ids = (
                conn.execute(
                    deliveries.update()
                    .where(
                        _in_state(secondary, EventStatus.PROCESSING),
                        deliveries.c.lease_expires_at < at,
                        deliveries.c.attempts >= max_attempts,
                    )
                    .values(
                        status=EventStatus.FAILED,
                        last_error=_LOST,
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=at,
                    )
                    .returning(deliveries.c.event_id)
                )
                .scalars()
                .all()
            )
            rows = conn.execute(
                _joined().where(deliveries.c.secondary == secondary, deliveries.c.event_id.in_(ids))
            ).all()
        return [
            dataclasses.replace(_event(row), status=EventStatus.FAILED, error=row.last_error)
            for row in rows
        ]

    def postpone(self, secondary: str, until: dt.datetime) -> int:
        """``secondary``'s pending deliveries due before ``until`` wait until then, with no
        attempt counted (the secondary is down, the events are fine); returns how many wait."""
        with self.engine.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(
                    _in_state(secondary, EventStatus.PENDING), deliveries.c.next_attempt_at < until
                )
                .values(next_attempt_at=until)
            )
            return conn.execute(
                sa.select(sa.func.count()).where(
                    _in_state(secondary, EventStatus.PENDING, EventStatus.PROCESSING)
                )
            ).scalar_one()

    def renew_claims(self, owner: str, ttl_seconds: float) -> int:
        """Extend the leases of the deliveries ``owner`` claimed; returns how many it holds."""
        with self.engine.begin() as conn:
            return conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.lease_owner == owner,
                    deliveries.c.status == EventStatus.PROCESSING,
                )
                .values(lease_expires_at=now() + dt.timedelta(seconds=ttl_seconds))
            ).rowcount

    def complete(self, secondary: str, owner: str, ids: Sequence[str]) -> None:
        self._finish(secondary, owner, ids, status=EventStatus.DONE, error=None)

    def fail(self, secondary: str, owner: str, ids: Sequence[str], error: str) -> None:
        """Dead-letter deliveries no retry can help (their object is malformed or past a
        bound)."""
        self._finish(secondary, owner, ids, status=EventStatus.FAILED, error=error[:4000])

    def retry_later(
        self,
        secondary: str,
        owner: str,
        ids: Sequence[str],
        error: str,
        *,
        max_attempts: int = 10,
        backoff: dt.timedelta = RETRY_BACKOFF,
    ) -> list[str]:
        """Put deliveries back with exponential backoff (``backoff`` after the first attempt,
        doubling, at most ``RETRY_BACKOFF_MAX``); returns the event ids that ran out of
        attempts."""
        at = now()
        exhausted = []
        held = _held(secondary, owner, ids)
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(deliveries.c.event_id, deliveries.c.attempts).where(held)
            ).all()
            for row in rows:
                if row.attempts >= max_attempts:
                    exhausted.append(row.event_id)
                    values: dict[str, Any] = {"status": EventStatus.FAILED}
                else:
                    # The doubling stops long past the cap: a timedelta overflows near 2**44 x 5 s,
                    # and event_max_attempts has no upper bound.
                    doubled = backoff * 2 ** min(row.attempts - 1, _DOUBLINGS)
                    delay = min(doubled, RETRY_BACKOFF_MAX)
                    values = {
                        "status": EventStatus.PENDING,
                        "next_attempt_at": at + delay,
                    }
                conn.execute(
                    deliveries.update()
                    .where(held, deliveries.c.event_id == row.event_id)
                    .values(
                        **values,
                        last_error=error[:4000],
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=at,
                    )
                )
        return exhausted

    def _finish(
        self, secondary: str, owner: str, ids: Sequence[str], *, status: str, error: str | None
    ) -> None:
        if not ids:
            return
        at = now()
        with self.engine.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(_held(secondary, owner, ids))
                .values(
                    status=status,
                    last_error=error,
                    lease_owner=None,
                    lease_expires_at=None,
                    acknowledged_at=at if status == EventStatus.DONE else None,
                    updated_at=at,
                )
            )


def _in_state(secondary: str, *statuses: str) -> sa.ColumnElement[bool]:
    """``secondary``'s deliveries in one of ``statuses``."""
    return sa.and_(deliveries.c.secondary == secondary, deliveries.c.status.in_(statuses))


def _held(secondary: str, owner: str, ids: Sequence[str]) -> sa.ColumnElement[bool]:
    """``secondary``'s deliveries of the events ``ids`` that ``owner`` claimed."""
    return sa.and_(
        deliveries.c.secondary == secondary,
        deliveries.c.event_id.in_(ids),
        deliveries.c.lease_owner == owner,
    )


def _claimable(at: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        sa.and_(deliveries.c.status == EventStatus.PENDING, deliveries.c.next_attempt_at <= at),
        sa.and_(deliveries.c.status == EventStatus.PROCESSING, deliveries.c.lease_expires_at < at),
    )


# Why ``dead_letter_lost`` failed a delivery, with its number of claims.
_LOST = (
    sa.literal("worker lost while processing; claimed ", sa.String)
    + sa.cast(deliveries.c.attempts, sa.String)
    + sa.literal(
        " times in all (event_max_attempts), never acknowledged: the "
        "push may be what kills the worker (out of memory, a crash); "
        "check the worker's logs for this repository, then retry the "
        "event from the status page or let the reconcile copy it",
        sa.String,
    )
)


def _joined() -> sa.Select[Any]:
    """Deliveries with their events, in the order they happened at the primary."""
    return (
        sa.select(
            events.c.id,
            events.c.action,
            events.c.repository,
            events.c.tag,
            events.c.digest,
            events.c.media_type,
            events.c.timestamp,
            deliveries.c.attempts,
            deliveries.c.last_error,
        )
        .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
        .order_by(deliveries.c.event_timestamp, deliveries.c.event_id)
    )


def _event(row: Any) -> Event:
    return Event(
        row.id,
        row.action,
        row.repository,
        row.tag,
        row.digest,
        row.media_type,
        aware(row.timestamp),
        row.attempts,
    )
