"""The durable event queue.

A registry keeps undelivered notifications only in memory, so the webhook stores each event
here before it answers 2xx. The ``registry_events`` DAG claims events under a lease (a crashed
run's events come back when the lease ends) and acknowledges each one only once its image is
complete on the secondary.
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
from registry_replication.store.schema import aware, events, now


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
    """Events from the webhook to the event DAG: add, claim, acknowledge, back off (and, from
    ``QueueStatus``, what operators read of it)."""

    # -- the webhook's side -------------------------------------------------------------------

    def add(self, new: Iterable[Event]) -> int:
        """Store events idempotently by id, in one transaction; returns how many were new."""
        at = now()
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
                "status": e.status,
                "last_error": e.error,
                "attempts": 0,
                "next_attempt_at": at,
                "updated_at": at,
            }
            for e in new
        ]
        if not rows:
            return 0
        # A repeated delivery (same id) is skipped by the database, not looked up first.
        insert = (
            dialect_insert(self.engine, events)
            .on_conflict_do_nothing(index_elements=[events.c.id])
            .returning(events.c.id)
        )
        with self.engine.begin() as conn:
            return len(conn.execute(insert, rows).all())

    # -- the DAG's side -----------------------------------------------------------------------

    def ready_count(self) -> int:
        """Events that a run could claim now (pending and due, or with an expired lease)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).where(self._claimable(now()))).scalar()

    def claim(
        self,
        *,
        lease_seconds: float = 300,
        limit: int = 500,
        owner: str | None = None,
        max_attempts: int = 10,
    ) -> tuple[str, list[Event]]:
        """Take up to ``limit`` due events under a lease; returns the lease owner and events.

        ``owner``: a writer's identity (``Leases.owner``), whose heartbeat then renews these
        event leases with its write leases, so a short lease suffices for any amount of work.

        Every claim counts as an attempt. Events whose worker was lost (their lease ran out
        unacknowledged) are claimed before any other, by bisection: of the lost events with
        the most attempts (the suspects), half at a time. An event that kills its worker (out
        of memory, a crash) is alone after about log2(batch) claims, the events it was claimed
        with go on in the halves it is not in, and after ``max_attempts`` claims
        ``dead_letter_lost`` fails it; lost events at ``max_attempts`` are never claimed again.
        """
        owner = owner or uuid.uuid4().hex
        at = now()
        lost = sa.and_(
            events.c.status == EventStatus.PROCESSING,
            events.c.lease_expires_at < at,
            events.c.attempts < max_attempts,
        )
        with self.engine.connect() as conn:  # a read apart: the claim below stays one statement
            suspects = conn.execute(
                sa.select(events.c.attempts, sa.func.count().label("n"))
                .where(lost)
                .group_by(events.c.attempts)
                .order_by(events.c.attempts.desc())
                .limit(1)
            ).first()
        if suspects is None:
            due = sa.select(events.c.id).where(self._claimable(at))
        else:
            limit = min(limit, max(1, suspects.n // 2))
            due = sa.select(events.c.id).where(lost, events.c.attempts == suspects.attempts)
        due = due.order_by(events.c.timestamp).limit(limit).with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            # One statement: atomic on SQLite too (it takes the write lock before it reads),
            # where a SELECT then UPDATE would let two claimers pick the same events.
            conn.execute(
                events.update()
                .where(events.c.id.in_(due.scalar_subquery()))
                .values(
                    status=EventStatus.PROCESSING,
                    lease_owner=owner,
                    lease_expires_at=at + dt.timedelta(seconds=lease_seconds),
                    attempts=events.c.attempts + 1,
                    updated_at=at,
                )
            )
            rows = conn.execute(
                sa.select(events).where(events.c.lease_owner == owner).order_by(events.c.timestamp)
            ).all()
        return owner, [_event(row) for row in rows]

    def dead_letter_lost(self, max_attempts: int) -> list[Event]:
        """Fail the events claimed ``max_attempts`` times whose last claim's lease ran out
        unacknowledged: each of those claims lost its worker (killed, out of memory, hung past
        its lease), so the event is what kills it. Returns them, with the reason."""
        at = now()
        reason = (
            sa.literal("worker lost while processing; claimed ", sa.String)
            + sa.cast(events.c.attempts, sa.String)
            + sa.literal(
                " times in all (event_max_attempts), never acknowledged: the "
                "push may be what kills the worker (out of memory, a crash); "
                "check the worker's logs for this repository, then retry the "
                "event from the status page or let the reconcile copy it",
                sa.String,
            )
        )
        with self.engine.begin() as conn:
            rows = conn.execute(
                events.update()
                .where(
                    events.c.status == EventStatus.PROCESSING,
                    events.c.lease_expires_at < at,
                    events.c.attempts >= max_attempts,
                )
                .values(
                    status=EventStatus.FAILED,
                    last_error=reason,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=at,
                )
                .returning(*events.c)
            ).all()
        return [
            dataclasses.replace(_event(row), status=EventStatus.FAILED, error=row.last_error)
            for row in rows
        ]

    def renew_claims(self, owner: str, ttl_seconds: float) -> int:
        """Extend the leases of the events ``owner`` claimed; returns how many it holds."""
        with self.engine.begin() as conn:
            return conn.execute(
                events.update()
                .where(events.c.lease_owner == owner, events.c.status == EventStatus.PROCESSING)
                .values(lease_expires_at=now() + dt.timedelta(seconds=ttl_seconds))
            ).rowcount

    def complete(self, owner: str, ids: Sequence[str]) -> None:
        self._finish(owner, ids, status=EventStatus.DONE, error=None)

    def fail(self, owner: str, ids: Sequence[str], error: str) -> None:
        """Dead-letter events no retry can help (their object is malformed or past a bound)."""
        self._finish(owner, ids, status=EventStatus.FAILED, error=error[:4000])

    def retry_later(
        self,
        owner: str,
        ids: Sequence[str],
        error: str,
        *,
        max_attempts: int = 10,
        backoff_seconds: float = 5.0,
    ) -> list[str]:
        """Put events back with exponential backoff; returns the ids that ran out of attempts."""
        at = now()
        exhausted = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(events.c.id, events.c.attempts).where(
                    events.c.id.in_(ids), events.c.lease_owner == owner
                )
            ).all()
            for row in rows:
                if row.attempts >= max_attempts:
                    exhausted.append(row.id)
                    values: dict[str, Any] = {"status": EventStatus.FAILED}
                else:
                    delay = min(backoff_seconds * 2 ** (row.attempts - 1), 3600)
                    values = {
                        "status": EventStatus.PENDING,
                        "next_attempt_at": at + dt.timedelta(seconds=delay),
                    }
                conn.execute(
                    events.update()
                    .where(events.c.id == row.id)
                    .values(
                        **values,
                        last_error=error[:4000],
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=at,
                    )
                )
        return exhausted

    def _finish(self, owner: str, ids: Sequence[str], *, status: str, error: str | None) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                events.update()
                .where(events.c.id.in_(ids), events.c.lease_owner == owner)
                .values(
                    status=status,
                    last_error=error,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now(),
                )
            )

    @staticmethod
    def _claimable(at: dt.datetime) -> sa.ColumnElement[bool]:
        return sa.or_(
            sa.and_(events.c.status == EventStatus.PENDING, events.c.next_attempt_at <= at),
            sa.and_(events.c.status == EventStatus.PROCESSING, events.c.lease_expires_at < at),
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
