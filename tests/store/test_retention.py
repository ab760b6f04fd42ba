"""History retention on SQLite and PostgreSQL: old rows go, what the status page, the metrics
and the alerts read stays, and the counters never go down."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from registry_replication.store import Store, retention
from registry_replication.store.history import LATENCY_BUCKETS, TaskTry
from registry_replication.store.queue import Event
from registry_replication.store.schema import (
    carried_totals,
    copied_bytes,
    dag_outcomes,
    deliveries,
    events,
    failed_layers,
    push_latency,
    runs,
    sent_alerts,
)
from registry_replication.web import metrics
from registry_replication.web.status import HISTORY

NOW = dt.datetime.now(dt.UTC)
TABLES = (runs, failed_layers, events, push_latency, copied_bytes, dag_outcomes, sent_alerts)


@pytest.fixture
def store(store_url: str) -> Store:
    """This module's store, on each backend (``store_url``)."""
    return Store(store_url)


def days_ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def set_time(store: Store, column: sa.Column, when: dt.datetime, where: sa.ColumnElement) -> None:
    with store.engine.begin() as conn:
        assert (
            conn.execute(column.table.update().where(where).values({column.name: when})).rowcount
            > 0
        )


def counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in TABLES
        }


def layer(digest: str) -> dict[str, object]:
    return {
        "repository": "group/app",
        "digest": "sha256:" + digest * 64,
        "size": 10,
        "status": 500,
        "code": "UNKNOWN",
        "error": "boom",
        "task_id": "copy_blobs",
        "map_index": 0,
        "secondary": "registry_secondary",
    }


def seed(store: Store) -> None:
    """A month and more of history: rows on both sides of a 30-day retention."""
    h, q = store.history, store.queue
    # Runs: the reconcile's two old ones go (a newer one exists), with their failed layers;
    # the sync's only run is its latest: it stays, with its failed layer, however old.
    for dag_id, run_id, age, failures in (
        ("registry_reconcile", "r1", 40, [layer("a"), layer("b")]),
        ("registry_reconcile", "r2", 35, []),
        ("registry_reconcile", "r3", 0.1, []),
        ("registry_sync", "s1", 45, [layer("c")]),
    ):
        h.record_run(
            dag_id, run_id, "failed" if failures else "success", {"bytes copied": 1}, failures
        )
        set_time(
            store,
            runs.c.finished_at,
            days_ago(age),
            sa.and_(runs.c.run_id == run_id, runs.c.dag_id == dag_id),
        )
        if failures:
            set_time(
                store, failed_layers.c.recorded_at, days_ago(age), failed_layers.c.run_id == run_id
            )
    # DAG outcomes: the reconcile's latest (failed) and latest success stay, however old.
    for dag_id, run_id, state, age in (
        ("registry_reconcile", "r0", "failed", 41),
        ("registry_reconcile", "r1", "success", 40),
        ("registry_reconcile", "r2", "failed", 35),
        ("registry_events", "e1", "success", 40),
        ("registry_events", "e2", "success", 0.1),
    ):
        h.record_dag_outcome(dag_id, run_id, state)
        set_time(store, dag_outcomes.c.finished_at, days_ago(age), dag_outcomes.c.run_id == run_id)
    for run_id, age in (("r1", 40), ("r3", 0.1)):
        h.record_alert("registry_reconcile", run_id, "failed", f"subject {run_id}", None)
        set_time(store, sent_alerts.c.sent_at, days_ago(age), sent_alerts.c.run_id == run_id)
    # Events: only the old finished ones (done, rejected) go; waiting and failed ones stay.
    q.add(
        [Event(f"e{i}", "push", "group/app", f"v{i}", None, None, days_ago(50)) for i in range(7)],
        ["registry_secondary"],
    )
    q.add(
        [
            Event(
                "rejected",
                "push",
                "Group/BAD",
                "v1",
                None,
                None,
                days_ago(50),
                status="rejected",
                error="out of grammar",
            )
        ],
        ["registry_secondary"],
    )
    for event_id, status in (
        ("e0", "done"),
        ("e1", "done"),
        ("e2", "failed"),
        ("e3", "pending"),
        ("e4", "processing"),
        ("e5", "done"),
    ):
        with store.engine.begin() as conn:
            conn.execute(
                deliveries.update().where(deliveries.c.event_id == event_id).values(status=status)
            )
    for event_id, age in (
        ("e0", 40),
        ("e1", 31),
        ("e2", 40),
        ("e3", 40),
        ("e4", 40),
        ("rejected", 40),
        ("e5", 0.1),
        ("e6", 40),
    ):
        set_time(store, events.c.updated_at, days_ago(age), events.c.id == event_id)
        if event_id != "rejected":  # a rejected event has no delivery
            set_time(
                store, deliveries.c.updated_at, days_ago(age), deliveries.c.event_id == event_id
            )
    # Latencies: three old (in three different buckets) go, one recent stays. Binary fractions:
    # the sum of seconds is then exact however the database adds them up.
    for event_id, seconds, age in (
        ("e0", 0.25, 40),
        ("e1", 4.25, 31),
        ("x", 7200.5, 33),
        ("e5", 1.5, 0.1),
    ):
        with store.engine.begin() as conn:
            conn.execute(
                push_latency.insert().values(
                    event_id=event_id,
                    secondary="registry_secondary",
                    repository="group/app",
                    pushed_at=days_ago(age),
                    acknowledged_at=days_ago(age),
                    seconds=seconds,
                )
            )
    # Copied bytes: five old records go, one recent stays.
    for i, (copied, age) in enumerate(
        ((1000, 40), (2000, 39), (3000, 38), (4000, 37), (5000, 36), (700, 0.1))
    ):
        h.record_copied_bytes(
            TaskTry("registry_reconcile", f"r{i}", "copy_blobs", 0), "registry_secondary", copied
        )
        set_time(store, copied_bytes.c.recorded_at, days_ago(age), copied_bytes.c.run_id == f"r{i}")


def observed(store: Store) -> dict[str, object]:
    """What the metrics, the status page and the alerts read."""
    figures = metrics.figures(store)
    figures.pop("oldest_pending_event_age_seconds")  # grows with the clock
    return {
        "figures": figures,
        "exposition": [
            line
            for line in metrics.exposition(store).decode().splitlines()
            if "oldest_pending" not in line
        ],
        "last_runs": {
            d: store.history.last_run(d)["run_id"] for d in ("registry_reconcile", "registry_sync")
        },
        "failed_layers": sorted((r["run_id"], r["digest"]) for r in store.history.failed_layers()),
        "last_success": store.history.last_success_times(),
        "dead_letters": [e["id"] for e in store.queue.dead_letters()],
    }


def test_prune_deletes_old_history_keeps_what_is_read_and_the_counters_hold(store, monkeypatch):
    monkeypatch.setattr(retention, "CHUNK", 2)  # several chunks per table
    seed(store)
    before = counts(store)
    assert before == {
        "rr_runs": 4,
        "rr_failed_layers": 3,
        "rr_events": 8,
        "rr_push_latency": 4,
        "rr_copied_bytes": 6,
        "rr_dag_outcomes": 5,
        "rr_alerts": 2,
    }
    seen = observed(store)
    assert seen["figures"]["bytes_copied_total"] == {"registry_secondary": 15700}
    assert seen["figures"]["events_total"] == {
        "registry_secondary": {"done": 3, "failed": 1},
        "": {"rejected": 1},
    }
    assert seen["figures"]["push_to_replica_seconds"]["registry_secondary"]["count"] == 4

    pruned = retention.prune(store.engine, dt.timedelta(days=30))

    assert pruned == retention.Pruned(
        runs=2,
        failed_layers=2,
        events=3,
        deliveries=2,
        push_latencies=3,
        copied_bytes_records=5,
        dag_outcomes=2,
        alerts=1,
    )
    assert pruned.line() == (
        "2 runs, 2 failed layers, 3 events, 2 deliveries, 3 push latencies, "
        "5 copied bytes records, 2 dag outcomes, 1 alerts"
    )
    assert counts(store) == {
        "rr_runs": 2,
        "rr_failed_layers": 1,
        "rr_events": 5,
        "rr_push_latency": 1,
        "rr_copied_bytes": 1,
        "rr_dag_outcomes": 3,
        "rr_alerts": 1,
    }
    with store.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(events.c.id)).scalars()) == [
            "e2",
            "e3",
            "e4",
            "e5",
            "e6",
        ]  # failed, pending, processing, recent done, pending
        assert sorted(conn.execute(sa.select(dag_outcomes.c.run_id)).scalars()) == [
            "e2",
            "r1",
            "r2",
        ]
        # Per secondary; the rejected event is no secondary's.
        assert {
            (r.secondary, r.name): r.value for r in conn.execute(sa.select(carried_totals))
        } == {
            ("registry_secondary", "bytes_copied"): 15000,
            ("registry_secondary", "events_done"): 2,
            ("", "events_rejected"): 1,
            ("registry_secondary", "push_latency_count"): 3,
            ("registry_secondary", "push_latency_microseconds"): 7_205_000_000,
            **{
                ("registry_secondary", f"push_latency_le_{float(b)!r}"): n
                for b, n in zip(LATENCY_BUCKETS, (1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2))
            },
        }
    # Every figure the metrics, the page and the alerts show is what it was.
    assert observed(store) == seen

    # Again: nothing more goes, nothing changes; new rows add to the carried totals.
    assert retention.prune(store.engine, dt.timedelta(days=30)) == retention.Pruned()
    assert observed(store) == seen
    store.history.record_copied_bytes(
        TaskTry("registry_events", "e9", "replicate_events", None), "registry_secondary", 300
    )
    assert store.history.copied_bytes_total() == 16000
    # The kept outcome is what a recovery alert compares with; once superseded, it goes.
    assert store.history.record_dag_outcome("registry_reconcile", "r4", "success") == "failed"
    assert retention.prune(store.engine, dt.timedelta(days=30)) == retention.Pruned(dag_outcomes=2)


def test_a_retention_below_the_status_pages_day_is_refused_and_changes_nothing(store):
    assert retention.MINIMUM >= HISTORY  # the lag chart's rows are never pruned
    seed(store)
    before, seen = counts(store), observed(store)
    with pytest.raises(ValueError, match=r"retention of 0\.5 days is below the minimum of 1 day"):
        retention.prune(store.engine, dt.timedelta(days=0.5))
    assert counts(store) == before and observed(store) == seen


def test_concurrent_prunes_and_scrapes_never_see_the_counter_move(store, monkeypatch):
    """Two reports pruning at once, while Prometheus scrapes: every read is the exact total."""
    monkeypatch.setattr(retention, "CHUNK", 25)
    rows = [
        {
            "dag_id": "registry_events",
            "run_id": f"e{i}",
            "task_id": "replicate_events",
            "map_index": None,
            "secondary": "registry_secondary",
            "bytes": i + 1,
            "recorded_at": days_ago(40),
        }
        for i in range(1000)
    ]
    with store.engine.begin() as conn:
        conn.execute(copied_bytes.insert(), rows)
    total = sum(r["bytes"] for r in rows)
    assert store.history.copied_bytes_total() == total == 500500

    reads: list[int] = []
    pruning = threading.Event()

    def scrape() -> None:
        while not pruning.is_set():
            reads.append(store.history.copied_bytes_total())

    with ThreadPoolExecutor(3) as pool:
        scraper = pool.submit(scrape)
        prunes = [
            pool.submit(retention.prune, store.engine, dt.timedelta(days=30)) for _ in range(2)
        ]
        deleted = sum(p.result().copied_bytes_records for p in prunes)
        pruning.set()
        scraper.result()
    assert deleted == 1000 and counts(store)["rr_copied_bytes"] == 0
    assert len(reads) > 1 and set(reads) == {total}
    assert store.history.copied_bytes_total() == total


def test_the_cli_prunes_the_store(store, capsys):
    from registry_replication.cli import main

    seed(store)
    url = store.engine.url.render_as_string(hide_password=False)
    assert main(["store", "prune", "--url", url, "--days", "0.5"]) == 2
    assert counts(store)["rr_runs"] == 4  # refused: nothing changed
    assert main(["store", "prune", "--url", url, "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert (
        "removed 2 runs, 2 failed layers, 3 events, 2 deliveries, 3 push latencies, 5 copied bytes "
        "records, 2 dag outcomes, 1 alerts older than 30 days" in out
    )
    assert counts(store)["rr_runs"] == 2 and store.history.copied_bytes_total() == 15700
