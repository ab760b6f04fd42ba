"""Write leases and event claims on both store backends (SQLite and a real PostgreSQL), with
many writers at once, each in its own process with its own engine and connections, as on
separate machines."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from registry_replication.engine.leases import LeaseBusy, LeaseLost, Leases
from registry_replication.store import Store, migrate


def test_a_lease_is_exclusive_until_released_or_expired(store_url):
    one, two = Store(store_url), Store(store_url)
    with (
        Leases(one, "registry_secondary", ttl_seconds=30, owner="one") as first,
        Leases(two, "registry_secondary", ttl_seconds=30, wait_seconds=0.3, owner="two") as second,
    ):
        with first.repository("group/app"):
            with pytest.raises(
                LeaseBusy,
                match=r"repository:group/app is held by another "
                r"writer \(one, until .*nothing was written",
            ):
                with second.repository("group/app"):
                    pass
            with first.repository("group/app"):  # re-entrant for its holder
                pass
            with second.repository("group/other"):  # other repositories are free
                pass
        with second.repository("group/app"):  # released
            assert [row["owner"] for row in one.state.all_leases()] == ["two"]
    assert one.state.all_leases() == []

    # A writer that dies holding a lease: it expires, and the next writer takes it over.
    one.state.acquire_lease("registry_secondary", "repository:group/app", "dead", ttl_seconds=0.5)
    with Leases(two, "registry_secondary", owner="next", wait_seconds=10) as successor:
        started = time.monotonic()
        with successor.repository("group/app"):
            assert [row["owner"] for row in one.state.all_leases()] == ["next"]
        assert time.monotonic() - started >= 0.3


@contextmanager
def _processes() -> Iterator[ProcessPoolExecutor]:
    """Eight worker processes, each up with its imports done before the test's clock starts.

    Started by a fork server, not forked from this process: a fork copies the locks that this
    process's other threads hold at that instant (a lease heartbeat inside libpq, Airflow's
    in-process API), and a worker that inherits one held waits forever (seen in CI: two
    workers stuck in psycopg2's connect)."""
    with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("forkserver")) as pool:
        list(pool.map(time.sleep, [0.5] * 8))  # busy workers: each takes one
        yield pool


def _at(start: float) -> None:
    time.sleep(max(0.0, start - time.time()))


def _first_use(url: str, start: float) -> str:
    _at(start)
    return Store(url).engine.url.render_as_string(hide_password=True)


def test_concurrent_first_use_upgrades_once(store_url):
    """Eight processes open a new store at the same instant: one creates it, none fails."""
    start = time.time() + 1.0
    with _processes() as pool:
        opened = list(pool.map(_first_use, [store_url] * 8, [start] * 8))
    assert len(opened) == 8
    store = Store(store_url)
    with store.engine.connect() as conn:
        assert migrate.current(conn) == migrate.head()
        assert conn.execute(sa.text("SELECT version FROM rr_schema")).scalars().all() == [2]


def _writer(url: str, n: int, start: float) -> list[tuple[float, float]]:
    """Take the repository's lease 15 times; the (entered, left) monotonic times."""
    _at(start)
    held = []
    with Leases(Store(url), "registry_secondary", owner=f"w{n}", wait_seconds=60) as leases:
        for _ in range(15):
            with leases.repository("group/app"):
                entered = time.monotonic()  # one clock for every process on the machine
                time.sleep(0.002)
                held.append((entered, time.monotonic()))
    return held


def test_concurrent_writers_never_overlap(store_url):
    """Eight writer processes take one repository's lease 15 times each."""
    Store(store_url)
    start = time.time() + 1.0
    with _processes() as pool:
        held = sorted(
            h for one in pool.map(_writer, [store_url] * 8, range(8), [start] * 8) for h in one
        )
    assert len(held) == 8 * 15
    overlaps = [(a, b) for a, b in zip(held, held[1:]) if b[0] < a[1]]
    assert overlaps == []
    assert Store(store_url).state.all_leases() == []


def test_a_writer_that_cannot_renew_stops_writing(store_url):
    store = Store(store_url)
    with Leases(store, "registry_secondary", ttl_seconds=0.4) as leases, leases.repository("app"):
        leases.check()
        leases._stop.set()  # the heartbeat dies, as when the store is unreachable
        time.sleep(0.3)
        with pytest.raises(LeaseLost, match="stops writing"):
            leases.check()


def _claimer(url: str, start: float) -> list[str]:
    _at(start)
    store, processed = Store(url), []
    while True:
        owner, claimed = store.queue.claim("registry_secondary", limit=17)
        if not claimed:
            if store.queue.ready_counts(["registry_secondary"])["registry_secondary"] == 0:
                return processed
            continue
        processed.extend(e.id for e in claimed)
        store.queue.complete("registry_secondary", owner, [e.id for e in claimed])


def test_concurrent_claimers_never_share_or_lose_an_event(ev, store_url):
    """Eight claimer processes drain 300 events; each is processed once."""
    Store(store_url).queue.add(
        [ev(i, repository=f"group/app{i % 7}") for i in range(300)], ["registry_secondary"]
    )
    start = time.time() + 1.0
    with _processes() as pool:
        processed = [i for one in pool.map(_claimer, [store_url] * 8, [start] * 8) for i in one]
    assert sorted(processed) == sorted(f"e{i}" for i in range(300))  # once each, none lost
    assert Store(store_url).queue.stats()["counts"]["done"] == 300


def test_claimed_events_live_as_long_as_their_writer(ev, store_url):
    """A writer's heartbeat keeps its claimed events; a killed writer's come back in one TTL."""
    store = Store(store_url)
    store.queue.add([ev(1), ev(2)], ["registry_secondary"])
    with Leases(store, "registry_secondary", ttl_seconds=0.6) as alive:
        owner, claimed = store.queue.claim(
            "registry_secondary", lease_seconds=alive.ttl, owner=alive.owner, limit=1
        )
        alive.keep_alive()
        dead_owner, dead_claim = store.queue.claim(
            "registry_secondary", lease_seconds=0.6, owner="killed", limit=1
        )
        time.sleep(1.5)  # more than two TTLs
        again_owner, again = store.queue.claim("registry_secondary")
        assert [e.id for e in again] == [e.id for e in dead_claim]  # the killed writer's event
        store.queue.complete("registry_secondary", owner, [e.id for e in claimed])
    assert store.queue.stats()["counts"]["done"] == 1


def test_each_secondary_has_its_own_leases_and_sessions(store_url):
    """One store, two secondaries: a repository held on one is free on the other, and a dead
    writer's upload session is cancelled only by a writer of its own secondary."""
    store = Store(store_url)
    with (
        Leases(store, "registry_eu", ttl_seconds=30, owner="eu") as eu,
        Leases(store, "registry_ap", ttl_seconds=30, wait_seconds=0.3, owner="ap") as ap,
        Leases(store, "registry_eu", ttl_seconds=30, wait_seconds=0.3, owner="eu2") as eu2,
        eu.repository("group/app"),
    ):
        with ap.repository("group/app"):  # not held there
            pass
        with pytest.raises(LeaseBusy), eu2.repository("group/app"):
            pass
    dead = Leases(store, "registry_eu", ttl_seconds=0.2, owner="dead")
    dead.track_upload("https://eu", "group/app", "/v2/group/app/blobs/uploads/u1?_state=s")
    dead._stop.set()  # the writer dies: its heartbeat stops
    time.sleep(0.5)
    with Leases(store, "registry_ap") as ap:
        assert list(ap.abandoned_uploads()) == []
    with Leases(store, "registry_eu") as eu:
        assert [d["location"] for d in eu.abandoned_uploads()] == [
            "/v2/group/app/blobs/uploads/u1?_state=s"
        ]
    assert store.state.all_leases() == []
