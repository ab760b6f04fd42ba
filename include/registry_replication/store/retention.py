"""History retention: the store's history rows older than the retention go; counters stay.

What stays whatever its age: each DAG's latest run with its failed layers (the status page, the
alerts), each DAG's latest outcome and latest success (the "recovered" alert, the metric
``last_success_timestamp_seconds``), and every event that is not finished (pending, being
processed, failed: a dead letter waits for an operator): a finished delivery goes, an event
once it is rejected or no delivery of it is left. The counters the metrics read from
rows (bytes copied, events done and rejected, the push-to-replica histogram) are carried: what
the deleted rows added goes to ``rr_carried_totals``, per secondary, in the same transaction as
the delete.

A secondary no longer configured keeps its rows (its record, repository states, deliveries,
leases) until none of them has changed for the retention; then all of them go together, so
that a site configured again later starts from no record rather than a partial one.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from registry_replication.outcomes import EventStatus
from registry_replication.store.engine import dialect_insert
from registry_replication.store.history import (
    BYTES_COPIED,
    LATENCY_BUCKETS,
    LATENCY_COUNT,
    LATENCY_MICROSECONDS,
    latency_bucket,
)
from registry_replication.store.queue_status import FINISHED, finished_total
from registry_replication.store.schema import (
    ACCEPTED,
    LEGACY,
    NO_SECONDARY,
    carried_totals,
    copied_bytes,
    dag_outcomes,
    deliveries,
    events,
    failed_layers,
    leases,
    now,
    push_latency,
    recorded_tags,
    recorded_verifications,
    repository_state,
    run_artifacts,
    runs,
    secondaries,
    sent_alerts,
)

# The status page's lag chart reads the last day of events, latencies and runs (status.HISTORY).
MINIMUM = dt.timedelta(days=1)
# The tables whose rows are one secondary's own state (not history), each with the column that
# says when a row last changed.
PER_SECONDARY = (
    (deliveries, deliveries.c.updated_at),
    (repository_state, repository_state.c.updated_at),
    (recorded_tags, recorded_tags.c.recorded_at),
    (recorded_verifications, recorded_verifications.c.verified_at),
    (leases, leases.c.acquired_at),
)
# Rows deleted per transaction: SQLite's write lock (which the webhook waits for) is held for
# one chunk at a time, however much a first prune of a long-lived store deletes.
CHUNK = 5000


@dataclass
class Pruned:
    """How many rows of each kind a prune deleted."""

    runs: int = 0
    failed_layers: int = 0
    events: int = 0
    deliveries: int = 0
    push_latencies: int = 0
    copied_bytes_records: int = 0
    dag_outcomes: int = 0
    alerts: int = 0
    departed_secondaries: int = 0

    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def line(self) -> str:
        counts = [
            f"{getattr(self, f.name)} {f.name.replace('_', ' ')}"
            for f in fields(self)
            if getattr(self, f.name)
        ]
        return ", ".join(counts) or "nothing"


def prune(
    engine: sa.Engine,
    retention: dt.timedelta,
    *,
    at: dt.datetime | None = None,
    configured: Collection[str] | None = None,
) -> Pruned:
    """Delete the history older than ``retention`` (before ``at``, default now); with the
    ``configured`` secondaries, also the rows of any other secondary idle that long (none
    given: a caller that does not know the deployment's secondaries removes none)."""
    if retention < MINIMUM:
        raise ValueError(
            f"a history retention of {retention.total_seconds() / 86400:g} days is below the "
            f"minimum of {MINIMUM.days} day: the status page's lag chart reads the last day"
        )
    cutoff = (at or now()) - retention
    pruned = Pruned()
    pruned.runs, pruned.failed_layers = _prune_runs(engine, cutoff)
    if configured is not None:
        # Before the events: a departed secondary's deliveries no longer hold theirs.
        pruned.departed_secondaries = _prune_departed(engine, configured, cutoff)
    # Finished deliveries first; then an event once it is rejected, or accepted with no
    # delivery left (every secondary's done and pruned).
    pruned.deliveries = _delete_chunks(
        engine,
        deliveries.c.event_id,
        sa.and_(deliveries.c.status.in_(FINISHED), deliveries.c.updated_at < cutoff),
        [deliveries.c.status, deliveries.c.secondary],
        _finished_totals,
    )
    undelivered = ~sa.exists().where(deliveries.c.event_id == events.c.id)
    pruned.events = _delete_chunks(
        engine,
        events.c.id,
        sa.and_(
            events.c.updated_at < cutoff,
            sa.or_(
                events.c.status == EventStatus.REJECTED,
                sa.and_(events.c.status == ACCEPTED, undelivered),
            ),
        ),
        [events.c.status],
        _rejected_totals,
    )
    # Each secondary's counted history: its Pruned field, its key, when a row was written, and
    # what the deleted rows add to the carried totals (from the amount column they return).
    for field, key, written, amount, totals in (
        ("push_latencies", push_latency.c.event_id, push_latency.c.acknowledged_at,
         push_latency.c.seconds, _latency_totals),
        ("copied_bytes_records", copied_bytes.c.id, copied_bytes.c.recorded_at,
         copied_bytes.c.bytes, _bytes_totals),
    ):  # fmt: skip
        setattr(
            pruned,
            field,
            _delete_chunks(engine, key, written < cutoff, [amount, key.table.c.secondary], totals),
        )
    # Each DAG's latest outcome and latest success stay (ids only grow: the latest has the
    # largest); the subquery never yields NULL, which NOT IN would turn into "keep all".
    latest = sa.union(
        sa.select(sa.func.max(dag_outcomes.c.id)).group_by(dag_outcomes.c.dag_id),
        sa.select(sa.func.max(dag_outcomes.c.id))
        .where(dag_outcomes.c.state == "success")
        .group_by(dag_outcomes.c.dag_id),
    )
    pruned.dag_outcomes = _delete_chunks(
        engine,
        dag_outcomes.c.id,
        sa.and_(dag_outcomes.c.finished_at < cutoff, dag_outcomes.c.id.not_in(latest)),
    )
    pruned.alerts = _delete_chunks(engine, sent_alerts.c.id, sent_alerts.c.sent_at < cutoff)
    return pruned


def prune_run_artifacts(engine: sa.Engine, cutoff: dt.datetime) -> list[str]:
    """Delete the artifact rows of runs due before ``cutoff`` (``artifacts_retention_days``,
    not the history's retention), a run folder per transaction; returns the folders."""
    with engine.connect() as conn:
        folders = (
            conn.execute(
                sa.select(run_artifacts.c.folder).distinct().where(run_artifacts.c.run_at < cutoff)
            )
            .scalars()
            .all()
        )
    for folder in folders:
        with engine.begin() as conn:
            conn.execute(run_artifacts.delete().where(run_artifacts.c.folder == folder))
    return sorted(folders)


def _prune_departed(engine: sa.Engine, configured: Collection[str], cutoff: dt.datetime) -> int:
    """Every row of each secondary that is not ``configured`` and none of whose state changed
    since ``cutoff``: all of them in one transaction (a record is trusted whole or not at all),
    its history and carried counters with them (its metric series end); returns how many
    secondaries went."""
    kept = {*configured, LEGACY, NO_SECONDARY}  # LEGACY: rows waiting to be adopted
    seen: set[str] = set()
    recent: set[str] = set()
    with engine.connect() as conn:
        for table, changed in PER_SECONDARY:
            seen.update(conn.execute(sa.select(table.c.secondary).distinct()).scalars())
            recent.update(
                conn.execute(
                    sa.select(table.c.secondary).where(changed >= cutoff).distinct()
                ).scalars()
            )
    departed = sorted(seen - recent - kept)
    for secondary in departed:
        with engine.begin() as conn:
            for table in (*(t for t, _ in PER_SECONDARY), push_latency, copied_bytes):
                conn.execute(table.delete().where(table.c.secondary == secondary))
            conn.execute(carried_totals.delete().where(carried_totals.c.secondary == secondary))
            conn.execute(secondaries.delete().where(secondaries.c.conn_id == secondary))
    return len(departed)


def _prune_runs(engine: sa.Engine, cutoff: dt.datetime) -> tuple[int, int]:
    """Runs older than ``cutoff`` but each DAG's latest, and their failed layers (together)."""
    newer = runs.alias("newer")
    superseded = sa.exists().where(
        newer.c.dag_id == runs.c.dag_id, newer.c.finished_at > runs.c.finished_at
    )
    orphaned = ~sa.exists().where(
        runs.c.dag_id == failed_layers.c.dag_id, runs.c.run_id == failed_layers.c.run_id
    )
    with engine.begin() as conn:
        deleted_runs = conn.execute(
            runs.delete().where(runs.c.finished_at < cutoff, superseded)
        ).rowcount
        deleted_layers = conn.execute(
            failed_layers.delete().where(failed_layers.c.recorded_at < cutoff, orphaned)
        ).rowcount
    return deleted_runs, deleted_layers


def _delete_chunks(
    engine: sa.Engine,
    key: sa.Column,
    where: sa.ColumnElement[bool],
    returning: Sequence[sa.Column] = (),
    totals: Callable[[Sequence[Any]], dict[tuple[str, str], int]] | None = None,
) -> int:
    """Delete the rows of ``key``'s table matching ``where``, ``CHUNK`` per transaction;
    ``totals`` turns each chunk's deleted rows (``returning``) into what it adds to the
    carried totals, written in the chunk's transaction. Returns how many rows went."""
    table = key.table
    deleted = 0
    while True:
        chunk = sa.select(key).where(where).limit(CHUNK).scalar_subquery()
        # ``where`` again: a key may name several rows (an event's latency per secondary).
        statement = table.delete().where(key.in_(chunk), where)
        with engine.begin() as conn:
            if totals is None:
                n = conn.execute(statement).rowcount
            else:
                rows = conn.execute(statement.returning(*returning)).all()
                n = len(rows)
                _carry(conn, totals(rows))
        deleted += n
        # Not "fewer than CHUNK": a concurrent prune may have taken part of this chunk.
        if n == 0:
            return deleted


def _carry(conn: sa.Connection, amounts: dict[tuple[str, str], int]) -> None:
    """Add ``amounts`` ({(secondary, counter): amount}) to the carried totals."""
    rows = [
        {"secondary": secondary, "name": name, "value": value}
        for (secondary, name), value in amounts.items()
        if value
    ]
    if not rows:
        return
    insert = dialect_insert(conn, carried_totals)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[carried_totals.c.secondary, carried_totals.c.name],
            set_={"value": carried_totals.c.value + insert.excluded.value},
        ),
        rows,
    )


def _per_secondary(rows: Sequence[Any]) -> dict[str, list[Any]]:
    by: dict[str, list[Any]] = {}
    for row in rows:
        by.setdefault(row.secondary, []).append(row)
    return by


def _finished_totals(rows: Sequence[Any]) -> dict[tuple[str, str], int]:
    """The finished deliveries' counts per secondary and status."""
    return {
        (secondary, finished_total(s)): sum(r.status == s for r in mine)
        for secondary, mine in _per_secondary(rows).items()
        for s in FINISHED
    }


def _rejected_totals(rows: Sequence[Any]) -> dict[tuple[str, str], int]:
    """The rejected events' count: no secondary's (a pruned accepted event adds nothing)."""
    rejected = finished_total(EventStatus.REJECTED)
    return {(NO_SECONDARY, rejected): sum(r.status == EventStatus.REJECTED for r in rows)}


def _bytes_totals(rows: Sequence[Any]) -> dict[tuple[str, str], int]:
    return {
        (secondary, BYTES_COPIED): sum(r.bytes for r in mine)
        for secondary, mine in _per_secondary(rows).items()
    }


def _latency_totals(rows: Sequence[Any]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for secondary, mine in _per_secondary(rows).items():
        totals[secondary, LATENCY_COUNT] = len(mine)
        # Rounded up: the histogram's sum must never dip, or Prometheus sees a reset.
        totals[secondary, LATENCY_MICROSECONDS] = math.ceil(sum(r.seconds for r in mine) * 1e6)
        for b in LATENCY_BUCKETS:
            totals[secondary, latency_bucket(b)] = sum(r.seconds <= b for r in mine)
    return totals
