"""The replication store on a real PostgreSQL server (what several machines share)."""

from __future__ import annotations

import datetime as dt
import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest

from registry_replication.store import Store
from replication_harness.legacy_store import (
    assert_made_like_upgraded,
    assert_premigration_store_upgrades,
    assert_revision_upgrades,
    revisions,
)
from replication_harness.queue_counts import queue_counts

T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)
_databases = itertools.count()


def store_on(postgres) -> Store:
    store = Store(postgres.create_database(f"store_{next(_databases)}"))
    assert store.engine.dialect.name == "postgresql" and store.engine.driver == "psycopg2"
    return store


def test_add_claim_complete(ev, postgres):
    store = store_on(postgres)
    assert (
        store.queue.add([ev(1), ev(2)], ["registry_secondary"]) == 2
        and store.queue.add([ev(1)], ["registry_secondary"]) == 0
    )
    owner, claimed = store.queue.claim("registry_secondary")
    assert [e.id for e in claimed] == ["e1", "e2"] and claimed[0].attempts == 1
    assert claimed[0].timestamp == T0 + dt.timedelta(seconds=1)  # timezone-aware round trip
    assert store.queue.claim("registry_secondary")[1] == []  # leased
    store.queue.complete("registry_secondary", owner, ["e1", "e2"])
    assert store.queue.stats()["counts"] == queue_counts(done=2)
    store.history.record_run("registry_events", "run1", "success", {"copied": 2})
    assert store.history.last_run("registry_events")["summary"] == {"copied": 2}


def test_concurrent_claims_never_share_an_event(ev, postgres):
    """Workers on different machines claim at once: SKIP LOCKED hands each event to one."""
    store = store_on(postgres)
    store.queue.add([ev(i) for i in range(100)], ["registry_secondary"])
    with ThreadPoolExecutor(8) as pool:
        claims = list(
            pool.map(lambda _: store.queue.claim("registry_secondary", limit=30)[1], range(8))
        )
    ids = [e.id for claim in claims for e in claim]
    assert len(ids) == len(set(ids)) == 100  # 8 x 30 asked for, each event handed out once


def test_a_new_store_is_made_exactly_like_an_upgraded_one(postgres):
    assert_made_like_upgraded(
        postgres.create_database(f"store_{next(_databases)}"),
        postgres.create_database(f"store_{next(_databases)}"),
    )


def test_a_store_from_before_migrations_upgrades_with_its_data(postgres):
    assert_premigration_store_upgrades(postgres.create_database(f"store_{next(_databases)}"))


@pytest.mark.parametrize("revision", revisions())
def test_a_store_at_each_revision_upgrades_with_its_data(postgres, revision):
    assert_revision_upgrades(postgres.create_database(f"store_{next(_databases)}"), revision)
