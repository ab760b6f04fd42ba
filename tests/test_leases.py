"""Write leases and event claims on both store backends (SQLite and a real PostgreSQL), with
many writers at once: each with its own engine and connections, as separate processes and
machines would have."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from registry_replication.leases import LeaseBusy, LeaseLost, Leases
from registry_replication.store import Event, EventStore

T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.timezone.utc)
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'replication.db'}"
    return request.getfixturevalue("postgres").create_database(f"leases_{next(_databases)}")


def test_a_lease_is_exclusive_until_released_or_expired(store_url):
    one, two = EventStore(store_url), EventStore(store_url)
    with Leases(one, ttl_seconds=30, owner="one") as first, \
            Leases(two, ttl_seconds=30, wait_seconds=0.3, owner="two") as second:
        with first.repository("group/app"):
            with pytest.raises(LeaseBusy, match=r"repository:group/app is held by another "
                                                r"writer \(one, until .*nothing was written"):
                with second.repository("group/app"):
                    pass
            with first.repository("group/app"):  # re-entrant for its holder
                pass
            with second.repository("group/other"):  # other repositories are free
                pass
        with second.repository("group/app"):  # released
            assert [row["owner"] for row in one.all_leases()] == ["two"]
    assert one.all_leases() == []

    # A writer that dies holding a lease: it expires, and the next writer takes it over.
    one.acquire_lease("repository:group/app", "dead", ttl_seconds=0.5)
    with Leases(two, owner="next", wait_seconds=10) as successor:
        started = time.monotonic()
        with successor.repository("group/app"):
            assert [row["owner"] for row in one.all_leases()] == ["next"]
        assert time.monotonic() - started >= 0.3


def test_concurrent_writers_never_overlap(store_url):
    """Eight writers, each its own engine, take one repository's lease 15 times each."""
    inside: list[str] = []
    overlaps: list[list[str]] = []
    entries = []
    guard = threading.Lock()

    def writer(n: int) -> None:
        with Leases(EventStore(store_url), owner=f"w{n}", wait_seconds=60) as leases:
            for _ in range(15):
                with leases.repository("group/app"):
                    with guard:
                        inside.append(leases.owner)
                        if len(inside) > 1:
                            overlaps.append(list(inside))
                        entries.append(leases.owner)
                    time.sleep(0.002)
                    with guard:
                        inside.remove(leases.owner)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))
    assert overlaps == []
    assert len(entries) == 8 * 15
    assert EventStore(store_url).all_leases() == []


def test_a_writer_that_cannot_renew_stops_writing(store_url):
    store = EventStore(store_url)
    with Leases(store, ttl_seconds=0.4) as leases, leases.repository("app"):
        leases.check()
        leases._stop.set()  # the heartbeat dies, as when the store is unreachable
        time.sleep(0.3)
        with pytest.raises(LeaseLost, match="stops writing"):
            leases.check()


def ev(i: int) -> Event:
    return Event(f"e{i}", "push", f"group/app{i % 7}", f"1.{i}", "sha256:" + "a" * 64, None,
                 T0 + dt.timedelta(seconds=i))


def test_concurrent_claimers_never_share_or_lose_an_event(store_url):
    """Eight claimers with their own engines drain 300 events; each is processed once."""
    EventStore(store_url).add([ev(i) for i in range(300)])
    processed: list[str] = []
    guard = threading.Lock()

    def claimer(_: int) -> None:
        store = EventStore(store_url)
        while True:
            owner, claimed = store.claim(limit=17)
            if not claimed:
                if store.ready_count() == 0:
                    return
                continue
            with guard:
                processed.extend(e.id for e in claimed)
            store.complete(owner, [e.id for e in claimed])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(claimer, range(8)))
    assert sorted(processed) == sorted(f"e{i}" for i in range(300))  # once each, none lost
    assert EventStore(store_url).queue()["counts"]["done"] == 300


def test_claimed_events_live_as_long_as_their_writer(store_url):
    """A writer's heartbeat keeps its claimed events; a killed writer's come back in one TTL."""
    store = EventStore(store_url)
    store.add([ev(1), ev(2)])
    with Leases(store, ttl_seconds=0.6) as alive:
        owner, claimed = store.claim(lease_seconds=alive.ttl, owner=alive.owner, limit=1)
        alive.keep_alive()
        dead_owner, dead_claim = store.claim(lease_seconds=0.6, owner="killed", limit=1)
        time.sleep(1.5)  # more than two TTLs
        again_owner, again = store.claim()
        assert [e.id for e in again] == [e.id for e in dead_claim]  # the killed writer's event
        store.complete(owner, [e.id for e in claimed])
    assert store.queue()["counts"]["done"] == 1
