"""Checks of the store's migrations: a store made by the code from before migrations
(``premigration_store``) upgrades with its data, and the revisions make the declared schema."""

from __future__ import annotations

import datetime as dt

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from registry_replication.store import Store, migrate
from registry_replication.store.queue import Event
from registry_replication.store.schema import metadata
from replication_harness import premigration_store as old

T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)


def assert_schema_matches(store: Store) -> None:
    """Alembic's autogenerate finds nothing between the migrated database and ``metadata``."""
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": migrate.VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
        assert migrate.current(conn) == migrate.head()


def assert_premigration_store_upgrades(url: str) -> None:
    """An old installation's store, with data in every table, upgrades and keeps it all."""
    legacy = old.EventStore(url)
    legacy.add([old.Event(f"e{i}", "push", "group/app", f"1.{i}", "sha256:" + "a" * 64, "m",
                          T0 + dt.timedelta(seconds=i)) for i in range(5)])
    owner, claimed = legacy.claim(limit=2)
    legacy.complete(owner, [e.id for e in claimed])
    legacy.record_acknowledged(claimed)
    legacy.record_run("registry_reconcile", "run1", "failed", {"copied": 3},
                      [{"repository": "group/app", "digest": "sha256:" + "b" * 64, "size": 10,
                        "status": 500, "code": "UNKNOWN", "error": "boom", "task_id": "copy_blobs",
                        "map_index": 0}])
    legacy.set_repository_state([{"repository": "group/app", "state": "failed",
                                  "last_error": "boom"}])
    legacy.acquire_lease("repository:group/app", "old-writer", 600)
    legacy.record_copied_bytes("registry_reconcile", "run1", "copy_blobs", 0, 12345)
    legacy.record_dag_outcome("registry_reconcile", "run1", "failed")
    legacy.record_alert("registry_reconcile", "run1", "failed", "subject", None)
    legacy.engine.dispose()

    store = Store(url)  # the first use upgrades it
    with store.engine.connect() as conn:
        assert migrate.current(conn) == migrate.head()
    assert store.queue.stats()["counts"] == {"pending": 3, "processing": 0, "done": 2,
                                             "failed": 0, "rejected": 0}
    assert store.history.last_run("registry_reconcile")["summary"] == {"copied": 3}
    assert [(r["digest"], r["code"]) for r in store.history.failed_layers()] == [
        ("sha256:" + "b" * 64, "UNKNOWN")]
    assert [(r["repository"], r["state"]) for r in store.state.repository_states()] == [
        ("group/app", "failed")]
    assert [r["owner"] for r in store.state.all_leases()] == ["old-writer"]
    assert store.history.copied_bytes_total() == 12345
    assert store.history.push_latency_histogram()[1] == 2
    assert store.history.record_dag_outcome("registry_reconcile", "run2", "success") == "failed"
    assert [a["subject"] for a in store.history.alerts()] == ["subject"]
    assert_schema_matches(store)

    # The upgraded store works on: the old events are claimed, a new one is added.
    assert store.queue.add([Event("e9", "push", "group/app", "2.0", None, None, T0)]) == 1
    _, claimed = store.queue.claim()
    assert sorted(e.id for e in claimed) == ["e2", "e3", "e4", "e9"]
    # And the code from before migrations refuses it from now on.
    try:
        old.EventStore(url)
    except RuntimeError as exc:
        assert "schema version 2, newer than this code's 1" in str(exc)
    else:
        raise AssertionError("the code from before migrations accepted an upgraded store")
