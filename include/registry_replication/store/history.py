"""Run history: each run's summary and failed layers, copied bytes, push-to-replica latency,
DAG outcomes and the alerts sent (what the status page, the metrics and the alerts read)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, NamedTuple

import sqlalchemy as sa

from registry_replication.store.engine import dialect_insert
from registry_replication.store.queue import Event
from registry_replication.store.schema import (
    aware,
    carried,
    copied_bytes,
    dag_outcomes,
    failed_layers,
    now,
    push_latency,
    runs,
    sent_alerts,
)

# Push-to-replica seconds: the event path aims at seconds, a reconcile catches up in minutes.
# Retention carries the pruned latencies' counts per bound, so the bounds are fixed here.
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
# The carried totals (``rr_carried_totals``) of the counters read from this history.
BYTES_COPIED = "bytes_copied"
LATENCY_COUNT = "push_latency_count"
LATENCY_MICROSECONDS = "push_latency_microseconds"


class TaskTry(NamedTuple):
    """The task instance that wrote a history row (``schema._written_by``)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int | None


def latency_bucket(bound: float) -> str:
    """The carried total of the latencies at most ``bound`` seconds."""
    return f"push_latency_le_{float(bound)!r}"


class RunHistory:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _append(self, table: sa.Table, **row: Any) -> None:
        """One row of an append-only history, in its own transaction."""
        with self.engine.begin() as conn:
            conn.execute(table.insert().values(**row))

    # -- runs and their failed layers -----------------------------------------------------------

    def record_run(
        self,
        dag_id: str,
        run_id: str,
        state: str,
        summary: dict[str, Any],
        failures: Iterable[dict[str, Any]] = (),
    ) -> None:
        """A finished run's summary, replacing its failed layers (each naming its secondary; a
        rerun may have fixed some).

        Failed layers are rows of their run (written with its summary, in one transaction), so
        they live here rather than in the replication state."""
        at = now()
        insert = dialect_insert(self.engine, runs).values(
            run_id=run_id, dag_id=dag_id, state=state, summary=summary, finished_at=at
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[runs.c.run_id, runs.c.dag_id],
            set_={c: insert.excluded[c] for c in ("state", "summary", "finished_at")},
        )
        with self.engine.begin() as conn:
            conn.execute(upsert)
            conn.execute(
                failed_layers.delete().where(
                    failed_layers.c.run_id == run_id, failed_layers.c.dag_id == dag_id
                )
            )
            rows = [{"run_id": run_id, "dag_id": dag_id, "recorded_at": at, **f} for f in failures]
            if rows:
                conn.execute(failed_layers.insert(), rows)

    def last_run(self, dag_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(runs)
                .where(runs.c.dag_id == dag_id)
                .order_by(runs.c.finished_at.desc())
                .limit(1)
            ).first()
        return dict(row._mapping) if row else None

    def runs_since(self, since: dt.datetime) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(runs).where(runs.c.finished_at >= since).order_by(runs.c.finished_at)
            )
            return [dict(row._mapping) for row in rows]

    def failed_layers(self, limit: int = 200) -> list[dict[str, Any]]:
        """The failed layers of each DAG's latest recorded run."""
        with self.engine.connect() as conn:
            latest = (
                sa.select(runs.c.dag_id, sa.func.max(runs.c.finished_at).label("at"))
                .group_by(runs.c.dag_id)
                .subquery()
            )
            latest_runs = sa.select(runs.c.run_id).join(
                latest, sa.and_(runs.c.dag_id == latest.c.dag_id, runs.c.finished_at == latest.c.at)
            )
            rows = conn.execute(
                sa.select(failed_layers)
                .where(failed_layers.c.run_id.in_(latest_runs))
                .order_by(failed_layers.c.repository)
                .limit(limit)
            )
            return [dict(row._mapping) for row in rows]

    # -- operating history: metrics, alerts, the lag chart ------------------------------------

    def record_copied_bytes(self, task: TaskTry, secondary: str, copied: int) -> None:
        """Bytes one task try copied to ``secondary`` (append-only, so their total only
        grows)."""
        row = {"secondary": secondary, "bytes": copied, "recorded_at": now()}
        self._append(copied_bytes, **task._asdict(), **row)

    def copied_bytes_total(self, secondary: str | None = None) -> int:
        """Every byte ever recorded as copied to ``secondary`` (None: to any): the rows in the
        store and those retention carried."""
        total = sa.select(sa.func.sum(copied_bytes.c.bytes))
        if secondary is not None:
            total = total.where(copied_bytes.c.secondary == secondary)
        rows = sa.func.coalesce(total.scalar_subquery(), 0)
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(rows + carried(BYTES_COPIED, secondary))).scalar())

    def record_acknowledged(self, secondary: str, acknowledged: Iterable[Event]) -> list[float]:
        """Each acknowledged event's push-to-replica time on ``secondary``; returns the seconds
        recorded.

        An event acknowledged again (after a retry from the dead-letter list) keeps its first
        time: the database skips it."""
        at = now()
        rows = {
            e.id: {
                "event_id": e.id,
                "secondary": secondary,
                "repository": e.repository,
                "pushed_at": e.timestamp,
                "acknowledged_at": at,
                "seconds": max(0.0, (at - aware(e.timestamp)).total_seconds()),
            }
            for e in acknowledged
        }
        if not rows:
            return []
        insert = (
            dialect_insert(self.engine, push_latency)
            .on_conflict_do_nothing(
                index_elements=[push_latency.c.event_id, push_latency.c.secondary]
            )
            .returning(push_latency.c.event_id)
        )
        with self.engine.begin() as conn:
            recorded = conn.execute(insert, list(rows.values())).scalars().all()
        return [rows[event_id]["seconds"] for event_id in recorded]

    def push_latency_histogram(self, secondary: str | None = None) -> tuple[list[int], int, float]:
        """Cumulative counts per bound of ``LATENCY_BUCKETS``, the total count and the sum of
        seconds, over every latency recorded on ``secondary`` (None: on any; those retention
        pruned included)."""

        def rows(value: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
            query = sa.select(value)
            if secondary is not None:
                query = query.where(push_latency.c.secondary == secondary)
            return sa.func.coalesce(query.scalar_subquery(), 0)

        columns = [
            rows(sa.func.sum(sa.case((push_latency.c.seconds <= b, 1), else_=0)))
            + carried(latency_bucket(b), secondary)
            for b in LATENCY_BUCKETS
        ]
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    *columns,
                    rows(sa.func.count(push_latency.c.event_id))
                    + carried(LATENCY_COUNT, secondary),
                    rows(sa.func.sum(push_latency.c.seconds)),
                    carried(LATENCY_MICROSECONDS, secondary),
                )
            ).one()
        n = len(LATENCY_BUCKETS)
        return ([int(v) for v in row[:n]], int(row[n]), float(row[n + 1]) + int(row[n + 2]) / 1e6)

    def push_latencies(self, since: dt.datetime) -> list[tuple[dt.datetime, float, str]]:
        """(acknowledged, seconds, secondary) of each event acknowledged since ``since``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    push_latency.c.acknowledged_at, push_latency.c.seconds, push_latency.c.secondary
                )
                .where(push_latency.c.acknowledged_at >= since)
                .order_by(push_latency.c.acknowledged_at)
            )
            return [(aware(r.acknowledged_at), r.seconds, r.secondary) for r in rows]

    def record_dag_outcome(self, dag_id: str, run_id: str, state: str) -> str | None:
        """A finished DAG run's state; returns the state of the run recorded before it."""
        with self.engine.begin() as conn:
            previous = conn.execute(
                sa.select(dag_outcomes.c.state)
                .where(dag_outcomes.c.dag_id == dag_id)
                .order_by(dag_outcomes.c.id.desc())
                .limit(1)
            ).scalar()
            conn.execute(
                dag_outcomes.insert().values(
                    dag_id=dag_id, run_id=run_id, state=state, finished_at=now()
                )
            )
        return previous

    def last_success_times(self) -> dict[str, dt.datetime]:
        """Per DAG, when its latest successful run finished."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dag_outcomes.c.dag_id, sa.func.max(dag_outcomes.c.finished_at))
                .where(dag_outcomes.c.state == "success")
                .group_by(dag_outcomes.c.dag_id)
            )
            return {dag_id: aware(at) for dag_id, at in rows}

    def record_alert(
        self, dag_id: str, run_id: str, state: str, subject: str, notifier: str | None
    ) -> None:
        self._append(
            sent_alerts,
            dag_id=dag_id,
            run_id=run_id,
            state=state,
            subject=subject,
            notifier=notifier,
            sent_at=now(),
        )

    def alerts(self, limit: int = 50) -> list[dict[str, Any]]:
        """The alerts sent, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(sent_alerts).order_by(sent_alerts.c.id.desc()).limit(limit)
            )
            return [dict(row._mapping) for row in rows]
