"""FROZEN: the replication store as main wrote it before migrations (SCHEMA_VERSION = 1,
commit 4c03f36), kept verbatim below so that the tests can make a store exactly as an old
installation did and check that today's code upgrades it. Do not edit or import it elsewhere.

The durable event queue and per-repository sync state (SQLAlchemy).

A registry keeps undelivered notifications only in memory, so the webhook stores each event
here before it answers 2xx. The ``registry_events`` DAG claims events under a lease (a crashed
run's events come back when the lease ends) and acknowledges each one only once its image is
complete on the secondary. Default: SQLite in WAL mode at
``$AIRFLOW_HOME/registry_replication.db``; any database at ``REGISTRY_REPLICATION_DB_URL``
(PostgreSQL where several machines share the work).
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from registry_replication.outcomes import EventStatus

SCHEMA_VERSION = 1

metadata = sa.MetaData()

schema_info = sa.Table(
    "rr_schema", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
)

events = sa.Table(
    "rr_events", metadata,
    sa.Column("id", sa.String(255), primary_key=True),  # the registry's event id
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),  # the registry's
    sa.Column("action", sa.String(16), nullable=False),  # push | delete
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("tag", sa.String(128)),
    sa.Column("digest", sa.String(160)),
    sa.Column("media_type", sa.String(255)),
    sa.Column("status", sa.String(16), nullable=False, default=EventStatus.PENDING),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_rr_events_status_next", "status", "next_attempt_at"),
)

repository_state = sa.Table(
    "rr_repository_state", metadata,
    sa.Column("repository", sa.String(255), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # synced | pending | failed
    sa.Column("tags_primary", sa.Integer),
    sa.Column("tags_secondary", sa.Integer),
    sa.Column("checksum_primary", sa.String(64)),
    sa.Column("checksum_secondary", sa.String(64)),
    sa.Column("last_sync_at", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def _written_by(*, task_id_required: bool) -> list[sa.Column]:
    """The task instance that wrote a row: its DAG, run, task and map index."""
    return [sa.Column("dag_id", sa.String(255), nullable=False),
            sa.Column("run_id", sa.String(255), nullable=False),
            sa.Column("task_id", sa.String(255), nullable=not task_id_required),
            sa.Column("map_index", sa.Integer)]


failed_layers = sa.Table(
    "rr_failed_layers", metadata,
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

# Write leases: one row per resource (``repository:<name>`` or ``upload:<key>``), held by one
# writer (``owner``) until ``expires_at``; the holder renews it while it works.
leases = sa.Table(
    "rr_leases", metadata,
    sa.Column("resource", sa.String(512), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("detail", sa.JSON),
)

runs = sa.Table(
    "rr_runs", metadata,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("dag_id", sa.String(255), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
)

# Operating history (append-only): what the metrics endpoint, the alerts and the lag chart read.
copied_bytes = sa.Table(
    "rr_copied_bytes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_written_by(task_id_required=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

push_latency = sa.Table(
    "rr_push_latency", metadata,
    sa.Column("event_id", sa.String(255), primary_key=True),
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=False),  # the registry's time
    sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Index("ix_rr_push_latency_ack", "acknowledged_at"),
)

dag_outcomes = sa.Table(
    "rr_dag_outcomes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dag_id", sa.String(255), nullable=False),
    sa.Column("run_id", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # success | failed
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_rr_dag_outcomes_dag", "dag_id", "id"),
)

sent_alerts = sa.Table(
    "rr_alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dag_id", sa.String(255), nullable=False),
    sa.Column("run_id", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # failed | recovered | overdue
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("notifier", sa.String(255)),  # None: logged only, no notifier configured
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
)


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


def default_url() -> str:
    url = os.environ.get("REGISTRY_REPLICATION_DB_URL")
    if url:
        return url
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return f"sqlite:///{home / 'registry_replication.db'}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite returns naive datetimes; everything here is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


class EventStore:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            Path(self.engine.url.database or ".").parent.mkdir(parents=True, exist_ok=True)
            sa_event.listen(self.engine, "connect", _sqlite_pragmas)
        self.create_schema()

    def create_schema(self) -> None:
        """Create the tables, or check that an existing schema is one this code can use."""
        for attempt in range(1, 4):
            try:
                return self._create_schema()
            except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
                # Another process created the same tables at the same moment: look again.
                if attempt == 3:
                    raise
                time.sleep(0.1 * attempt)

    def _create_schema(self) -> None:
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            version = conn.execute(sa.select(sa.func.max(schema_info.c.version))).scalar()
            if version is None:
                conn.execute(schema_info.insert().values(version=SCHEMA_VERSION))
            elif version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the event store at {self.engine.url!r} has schema version {version}, newer "
                    f"than this code's {SCHEMA_VERSION}: upgrade registry-replication"
                )

    # -- the webhook's side -------------------------------------------------------------------

    def add(self, new: Iterable[Event]) -> int:
        """Store events idempotently by id, in one transaction; returns how many were new."""
        now = _now()
        stored = 0
        with self.engine.begin() as conn:
            for e in new:
                exists = conn.execute(sa.select(events.c.id).where(events.c.id == e.id)).first()
                if exists:
                    continue  # a repeated delivery
                conn.execute(events.insert().values(
                    id=e.id, received_at=now, timestamp=e.timestamp, action=e.action,
                    repository=e.repository, tag=e.tag, digest=e.digest, media_type=e.media_type,
                    status=e.status, last_error=e.error, attempts=0, next_attempt_at=now,
                    updated_at=now,
                ))
                stored += 1
        return stored

    # -- the DAG's side -----------------------------------------------------------------------

    def ready_count(self) -> int:
        """Events that a run could claim now (pending and due, or with an expired lease)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).where(self._claimable(_now()))).scalar()

    def claim(
        self, *, lease_seconds: float = 300, limit: int = 500, owner: str | None = None
    ) -> tuple[str, list[Event]]:
        """Take up to ``limit`` due events under a lease; returns the lease owner and events.

        ``owner``: a writer's identity (``Leases.owner``), whose heartbeat then renews these
        event leases with its write leases, so a short lease suffices for any amount of work.
        """
        owner = owner or uuid.uuid4().hex
        now = _now()
        due = (
            sa.select(events.c.id).where(self._claimable(now))
            .order_by(events.c.timestamp).limit(limit).with_for_update(skip_locked=True)
        )
        with self.engine.begin() as conn:
            # One statement: atomic on SQLite too (it takes the write lock before it reads),
            # where a SELECT then UPDATE would let two claimers pick the same events.
            conn.execute(
                events.update().where(events.c.id.in_(due.scalar_subquery())).values(
                    status=EventStatus.PROCESSING, lease_owner=owner,
                    lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
                    attempts=events.c.attempts + 1, updated_at=now,
                )
            )
            rows = conn.execute(
                sa.select(events).where(events.c.lease_owner == owner).order_by(events.c.timestamp)
            ).all()
        return owner, [_event(row) for row in rows]

    def complete(self, owner: str, ids: Sequence[str]) -> None:
        self._finish(owner, ids, status=EventStatus.DONE, error=None)

    def retry_later(
        self, owner: str, ids: Sequence[str], error: str, *, max_attempts: int = 10,
        backoff_seconds: float = 5.0,
    ) -> list[str]:
        """Put events back with exponential backoff; returns the ids that ran out of attempts."""
        now = _now()
        exhausted = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(events.c.id, events.c.attempts)
                .where(events.c.id.in_(ids), events.c.lease_owner == owner)
            ).all()
            for row in rows:
                if row.attempts >= max_attempts:
                    exhausted.append(row.id)
                    values: dict[str, Any] = {"status": EventStatus.FAILED}
                else:
                    delay = min(backoff_seconds * 2 ** (row.attempts - 1), 3600)
                    values = {"status": EventStatus.PENDING,
                              "next_attempt_at": now + dt.timedelta(seconds=delay)}
                conn.execute(events.update().where(events.c.id == row.id).values(
                    **values, last_error=error[:4000], lease_owner=None, lease_expires_at=None,
                    updated_at=now))
        return exhausted

    def _finish(self, owner: str, ids: Sequence[str], *, status: str, error: str | None) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                events.update().where(events.c.id.in_(ids), events.c.lease_owner == owner)
                .values(status=status, last_error=error, lease_owner=None, lease_expires_at=None,
                        updated_at=_now())
            )

    @staticmethod
    def _claimable(now: dt.datetime):
        return sa.or_(
            sa.and_(events.c.status == EventStatus.PENDING, events.c.next_attempt_at <= now),
            sa.and_(events.c.status == EventStatus.PROCESSING, events.c.lease_expires_at < now),
        )

    # -- write leases -------------------------------------------------------------------------

    def acquire_lease(
        self, resource: str, owner: str, ttl_seconds: float, detail: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Take ``resource`` for ``owner`` if it is free, expired or already ``owner``'s (then
        it is renewed). Returns None when ``owner`` holds it, else the holder's row."""
        now = _now()
        values = {"resource": resource, "owner": owner, "acquired_at": now, "detail": detail,
                  "expires_at": now + dt.timedelta(seconds=ttl_seconds)}
        insert = self._dialect_insert(leases).values(**values)
        upsert = insert.on_conflict_do_update(
            index_elements=[leases.c.resource],
            set_={name: insert.excluded[name] for name in ("owner", "expires_at", "detail")}
            | {"acquired_at": sa.case((leases.c.owner == owner, leases.c.acquired_at),
                                      else_=insert.excluded.acquired_at)},
            where=sa.or_(leases.c.owner == owner, leases.c.expires_at < now),
        )
        with self.engine.begin() as conn:
            conn.execute(upsert)
            row = conn.execute(sa.select(leases).where(leases.c.resource == resource)).one()
        return None if row.owner == owner else _lease(row)

    def renew_leases(self, owner: str, ttl_seconds: float) -> int:
        """Extend every lease ``owner`` holds, its claimed events' too; returns how many write
        leases it still holds."""
        expires = _now() + dt.timedelta(seconds=ttl_seconds)
        with self.engine.begin() as conn:
            conn.execute(events.update().where(events.c.lease_owner == owner,
                                               events.c.status == EventStatus.PROCESSING)
                         .values(lease_expires_at=expires))
            return conn.execute(
                leases.update().where(leases.c.owner == owner).values(expires_at=expires)
            ).rowcount

    def release_lease(self, resource: str, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(leases.delete().where(leases.c.resource == resource,
                                               leases.c.owner == owner))

    def expired_leases(self, prefix: str) -> list[dict[str, Any]]:
        """Leases on resources starting with ``prefix`` whose holder stopped renewing them."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(leases).where(
                leases.c.resource.startswith(prefix, autoescape=True), leases.c.expires_at < _now()))
            return [_lease(row) for row in rows]

    def all_leases(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [_lease(row) for row in conn.execute(sa.select(leases).order_by(leases.c.resource))]

    def _dialect_insert(self, table: sa.Table):
        """``INSERT`` with ``on_conflict_do_update`` for this database (SQLite, PostgreSQL)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise RuntimeError(
                f"the replication store supports SQLite and PostgreSQL, not {self.engine.dialect.name}")
        return insert(table)

    # -- status -------------------------------------------------------------------------------

    def queue(self) -> dict[str, Any]:
        """Depth per status and the age of the oldest waiting event."""
        with self.engine.connect() as conn:
            counts = dict(conn.execute(
                sa.select(events.c.status, sa.func.count()).group_by(events.c.status)).all())
            oldest = conn.execute(
                sa.select(sa.func.min(events.c.received_at))
                .where(events.c.status.in_([EventStatus.PENDING, EventStatus.PROCESSING]))
            ).scalar()
        oldest = _aware(oldest)
        return {
            "counts": {s: counts.get(s, 0) for s in EventStatus},
            "oldest_waiting_seconds": (_now() - oldest).total_seconds() if oldest else None,
        }

    def events(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(events).order_by(events.c.timestamp.desc()).limit(limit)
        if status:
            query = query.where(events.c.status == status)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def set_repository_state(self, rows: Iterable[dict[str, Any]]) -> None:
        """Upsert per-repository state (for the status page)."""
        now = _now()
        with self.engine.begin() as conn:
            for row in rows:
                values = {**row, "updated_at": now}
                updated = conn.execute(
                    repository_state.update()
                    .where(repository_state.c.repository == row["repository"]).values(**values)
                ).rowcount
                if not updated:
                    conn.execute(repository_state.insert().values(**values))

    def record_run(
        self, dag_id: str, run_id: str, state: str, summary: dict[str, Any],
        failures: Iterable[dict[str, Any]] = (),
    ) -> None:
        """A finished run's summary, replacing its failed layers (a rerun may have fixed some)."""
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(runs.delete().where(runs.c.run_id == run_id, runs.c.dag_id == dag_id))
            conn.execute(runs.insert().values(run_id=run_id, dag_id=dag_id, state=state,
                                              summary=summary, finished_at=now))
            conn.execute(failed_layers.delete().where(failed_layers.c.run_id == run_id,
                                                      failed_layers.c.dag_id == dag_id))
            for failure in failures:
                conn.execute(failed_layers.insert().values(
                    run_id=run_id, dag_id=dag_id, recorded_at=now, **failure))

    def last_run(self, dag_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.dag_id == dag_id)
                               .order_by(runs.c.finished_at.desc()).limit(1)).first()
        return dict(row._mapping) if row else None

    def failed_layers(self, limit: int = 200) -> list[dict[str, Any]]:
        """The failed layers of each DAG's latest recorded run."""
        with self.engine.connect() as conn:
            latest = (sa.select(runs.c.dag_id, sa.func.max(runs.c.finished_at).label("at"))
                      .group_by(runs.c.dag_id).subquery())
            latest_runs = sa.select(runs.c.run_id).join(
                latest, sa.and_(runs.c.dag_id == latest.c.dag_id, runs.c.finished_at == latest.c.at))
            rows = conn.execute(sa.select(failed_layers)
                                .where(failed_layers.c.run_id.in_(latest_runs))
                                .order_by(failed_layers.c.repository).limit(limit))
            return [dict(row._mapping) for row in rows]

    def repository_states(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(repository_state).order_by(repository_state.c.repository))
            return [dict(row._mapping) for row in rows]

    # -- operating history: metrics, alerts, the lag chart ------------------------------------

    def record_copied_bytes(self, dag_id: str, run_id: str, task_id: str,
                            map_index: int | None, copied: int) -> None:
        """Bytes one task try copied (append-only, so their total only grows)."""
        with self.engine.begin() as conn:
            conn.execute(copied_bytes.insert().values(
                dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index,
                bytes=copied, recorded_at=_now()))

    def copied_bytes_total(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.sum(copied_bytes.c.bytes))).scalar() or 0)

    def record_acknowledged(self, acknowledged: Iterable[Event]) -> list[float]:
        """Each acknowledged event's push-to-replica time; returns the seconds recorded."""
        now = _now()
        recorded = []
        with self.engine.begin() as conn:
            for e in acknowledged:
                if conn.execute(sa.select(push_latency.c.event_id)
                                .where(push_latency.c.event_id == e.id)).first():
                    continue  # acknowledged again after a retry from the dead-letter list
                seconds = max(0.0, (now - _aware(e.timestamp)).total_seconds())
                conn.execute(push_latency.insert().values(
                    event_id=e.id, repository=e.repository, pushed_at=e.timestamp,
                    acknowledged_at=now, seconds=seconds))
                recorded.append(seconds)
        return recorded

    def push_latency_histogram(self, bounds: Sequence[float]) -> tuple[list[int], int, float]:
        """Cumulative counts per upper bound, the total count and the sum of seconds."""
        columns = [sa.func.sum(sa.case((push_latency.c.seconds <= b, 1), else_=0))
                   for b in bounds]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*columns, sa.func.count(),
                                         sa.func.sum(push_latency.c.seconds))).one()
        return [int(v or 0) for v in row[:len(bounds)]], int(row[-2]), float(row[-1] or 0.0)

    def push_latencies(self, since: dt.datetime) -> list[tuple[dt.datetime, float]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(push_latency.c.acknowledged_at, push_latency.c.seconds)
                .where(push_latency.c.acknowledged_at >= since)
                .order_by(push_latency.c.acknowledged_at))
            return [(_aware(r.acknowledged_at), r.seconds) for r in rows]

    def record_dag_outcome(self, dag_id: str, run_id: str, state: str) -> str | None:
        """A finished DAG run's state; returns the state of the run recorded before it."""
        with self.engine.begin() as conn:
            previous = conn.execute(
                sa.select(dag_outcomes.c.state).where(dag_outcomes.c.dag_id == dag_id)
                .order_by(dag_outcomes.c.id.desc()).limit(1)).scalar()
            conn.execute(dag_outcomes.insert().values(
                dag_id=dag_id, run_id=run_id, state=state, finished_at=_now()))
        return previous

    def last_success_times(self) -> dict[str, dt.datetime]:
        """Per DAG, when its latest successful run finished."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dag_outcomes.c.dag_id, sa.func.max(dag_outcomes.c.finished_at))
                .where(dag_outcomes.c.state == "success").group_by(dag_outcomes.c.dag_id))
            return {dag_id: _aware(at) for dag_id, at in rows}

    def status_counts(self) -> dict[str, int]:
        """Events per status, every status included."""
        with self.engine.connect() as conn:
            counts = dict(conn.execute(
                sa.select(events.c.status, sa.func.count()).group_by(events.c.status)).all())
        return {s: counts.get(s, 0) for s in EventStatus}

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Events that failed for good or were rejected, newest first."""
        query = (sa.select(events)
                 .where(events.c.status.in_([EventStatus.FAILED, EventStatus.REJECTED]))
                 .order_by(events.c.updated_at.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def retry_failed(self, event_id: str) -> bool:
        """Put a failed event back in the queue with fresh attempts; False if it is not failed."""
        now = _now()
        with self.engine.begin() as conn:
            return conn.execute(
                events.update().where(events.c.id == event_id, events.c.status == EventStatus.FAILED)
                .values(status=EventStatus.PENDING, attempts=0, next_attempt_at=now,
                        lease_owner=None, lease_expires_at=None, updated_at=now)
            ).rowcount == 1

    def queue_intervals(self, since: dt.datetime) -> list[tuple[dt.datetime, dt.datetime | None]]:
        """(received, left the queue or None) of each event waiting at some time after ``since``.

        An event waits from its arrival until it is done, failed or rejected (its last update).
        """
        waiting = events.c.status.in_([EventStatus.PENDING, EventStatus.PROCESSING])
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events.c.received_at, events.c.updated_at, waiting.label("waiting"))
                .where(sa.or_(waiting, events.c.updated_at >= since)))
            return [(_aware(r.received_at), None if r.waiting else _aware(r.updated_at))
                    for r in rows]

    def runs_since(self, since: dt.datetime) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.finished_at >= since)
                                .order_by(runs.c.finished_at))
            return [dict(row._mapping) for row in rows]

    def record_alert(self, dag_id: str, run_id: str, state: str, subject: str,
                     notifier: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sent_alerts.insert().values(
                dag_id=dag_id, run_id=run_id, state=state, subject=subject, notifier=notifier,
                sent_at=_now()))

    def alerts(self, limit: int = 50) -> list[dict[str, Any]]:
        """The alerts sent, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sent_alerts).order_by(sent_alerts.c.id.desc())
                                .limit(limit))
            return [dict(row._mapping) for row in rows]


def _event(row: Any) -> Event:
    return Event(row.id, row.action, row.repository, row.tag, row.digest, row.media_type,
                 _aware(row.timestamp), row.attempts)


def _lease(row: Any) -> dict[str, Any]:
    return {**row._mapping, "expires_at": _aware(row.expires_at), "acquired_at": _aware(row.acquired_at)}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
