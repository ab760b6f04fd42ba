"""Concurrent writers never undo each other: the races of a slow reconcile, made deterministic.

A fault proxy in front of the primary holds the reconcile's read of one layer; while it is
held, the primary changes and a second writer (the event path's engine) replicates the change.
Then the reconcile goes on, with the plan it made before.

Each race runs on one secondary, then on two sharing the store (issue 22): every secondary has
its reconcile held and its second writer, at the same time, and each must end exact.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from registry_replication.engine.leases import Leases
from registry_replication.engine.realtime import replicate_events
from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.store import Store
from registry_replication.store.queue import Event
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from replication_harness import images
from replication_harness.servers import FaultProxy
from replication_harness.sites import Site, assert_exact, sites_env, start_site_sync
from replication_harness.watch import is_tombstone


@pytest.fixture
def slow_primaries(primary, sites) -> Iterator[dict[str, FaultProxy]]:
    """The primary behind a proxy per site that can hold a request: each reconcile's slow link."""
    with FaultProxy(primary.url) as one, FaultProxy(primary.url) as two:
        yield dict(zip([site.conn_id for site in sites], [one, two]))


def cli_syncs(
    proxies: dict[str, FaultProxy], primary, sites: Sequence[Site], store: Store
) -> list[subprocess.Popen]:
    """``registry-replication sync`` of each site in its own process, reading the primary
    through the site's proxy."""
    return [
        start_site_sync(
            {**primary.connection(), "host": proxies[site.conn_id].url},
            site,
            env=sites_env(store, sites),
        )
        for site in sites
    ]


def event_path(
    primary_reader, site: Site, store: Store, repository: str, tag: str, digest: str
) -> None:
    """The second writer of ``site``: the event path replicating one push, with its own
    leases."""
    event = Event(
        f"push-{tag}-{digest[-8:]}", "push", repository, tag, digest, None, dt.datetime.now(dt.UTC)
    )
    with site.client(writable=True) as writer, Leases(store, site.conn_id) as leases:
        outcomes = replicate_events(primary_reader, writer, [event], leases=leases)
        assert outcomes == {event.id: None}
        assert writer.head_manifest(repository, tag).digest == digest


def finish(holds, syncs: list[subprocess.Popen]) -> list[str]:
    """Let the held syncs go on with their old plans; their outputs."""
    for hold in holds:
        hold.release()
    return [sync.communicate(timeout=120)[0] for sync in syncs]


def test_cli_never_overwrites_a_newer_tag(
    primary, sites, slow_primaries, store, primary_writer, primary_reader
):
    factory = images.ImageFactory()
    old = factory.make()
    images.push(primary_writer, "app", old, ["t"])
    holds = [p.hold("GET", f"/blobs/{old.blobs[-1].digest}") for p in slow_primaries.values()]

    syncs = cli_syncs(slow_primaries, primary, sites, store)
    for hold in holds:
        assert hold.arrived.wait(60), "a sync never read the layer"
    # Meanwhile the primary moves the tag and the event path replicates the new image.
    new = images.push(primary_writer, "app", factory.make(), ["t"])
    for site in sites:
        event_path(primary_reader, site, store, "app", "t", new)
    outputs = finish(holds, syncs)

    for site, output in zip(sites, outputs):
        with site.client() as reader:
            assert (
                reader.head_manifest("app", "t").digest
                == new
                == primary_reader.head_manifest("app", "t").digest
            ), output
        assert f"moved on the primary since the plan, left to the newer writer: t -> {new}" in (
            output
        )
        assert_exact(primary, site)


def test_cli_never_deletes_a_tag_pushed_again(
    primary, sites, slow_primaries, store, primary_writer, primary_reader
):
    factory = images.ImageFactory()
    kept = factory.make()
    images.push(primary_writer, "keep", kept, ["k"])
    images.push(primary_writer, "keep", factory.make(), ["other"])
    for site in sites:
        with site.client(writable=True) as writer:
            run_sync(primary_reader, writer, leases=Leases(store, site.conn_id))
    primary_writer.delete_manifest("keep", kept.digest)  # k is gone from the primary...
    fresh = factory.make()
    images.push(primary_writer, "app", fresh, ["new"])  # ...and the next sync has work to do
    holds = [p.hold("GET", f"/blobs/{fresh.blobs[-1].digest}") for p in slow_primaries.values()]

    syncs = cli_syncs(slow_primaries, primary, sites, store)
    for hold in holds:
        assert hold.arrived.wait(60), "a sync never read the layer"
    # The syncs' snapshots say k is gone; now k is pushed again, same digest, and replicated.
    images.push(primary_writer, "keep", kept, ["k"])
    for site in sites:
        event_path(primary_reader, site, store, "keep", "k", kept.digest)
    outputs = finish(holds, syncs)

    for site, output in zip(sites, outputs):
        with site.client() as reader:
            assert reader.head_manifest("keep", "k").digest == kept.digest, output
            assert reader.head_manifest("app", "new").digest == fresh.digest
        assert (
            "prune kept" in output and "keep:k" in output and "the primary has it again" in output
        )
        assert_exact(primary, site)


def test_prune_never_untags_a_tag_that_shares_the_digest(
    primary, sites, primary_writer, primary_reader, store
):
    """Removing one tag of a digest leaves its other tags in place all along (no restore step):
    a poller reading the kept tag during the prune never finds it missing, on any site while
    the sites are pruned at the same time."""
    shared = images.ImageFactory().make()
    images.push(primary_writer, "app", shared, ["keep", *[f"drop{i}" for i in range(20)]])
    for site in sites:
        with site.client(writable=True) as writer:
            run_sync(primary_reader, writer, leases=Leases(store, site.conn_id))
    primary_writer.delete_manifest("app", shared.digest)
    images.push(primary_writer, "app", shared, ["keep"])

    missing: list[tuple[str, str | None]] = []
    stop = threading.Event()

    def poll(site: Site) -> None:
        with site.client() as reader:
            while not stop.is_set():
                found = reader.head_manifest("app", "keep")
                if found is None or found.digest != shared.digest:
                    missing.append((site.conn_id, found.digest if found else None))

    def prune(site: Site) -> list[str]:
        with (
            RegistryClient(primary.client_config()) as source,
            site.client(writable=True) as writer,
        ):
            report = run_sync(
                source,
                writer,
                SyncOptions(force_prune=True),
                leases=Leases(store, site.conn_id),
            )
        return sorted(r.tag for r in report.pruned if r.outcome == "deleted")

    pollers = [threading.Thread(target=poll, args=(site,)) for site in sites]
    for poller in pollers:
        poller.start()
    try:
        with ThreadPoolExecutor(len(sites)) as pool:
            pruned = list(pool.map(prune, sites))
    finally:
        stop.set()
        for poller in pollers:
            poller.join()
    assert pruned == [sorted(f"drop{i}" for i in range(20))] * len(sites)
    assert missing == []
    for site in sites:
        with site.client() as reader:
            assert sorted(reader.tags("app")) == ["keep"]
            # The tombstones are gone with their tags; nothing else was left behind.
            assert not is_tombstone(reader.get_manifest("app", "keep").raw)
        assert_exact(primary, site)


def test_a_repository_held_on_one_secondary_is_written_on_another_meanwhile(
    primary, secondary, eu, store, primary_writer
):
    """Leases are per secondary: while the writer of one secondary holds ``app``'s lease (held
    at its tag write, alive and renewing), a writer of another secondary writes ``app`` to the
    end without waiting; then the first goes on. Both end exact."""
    sites = [Site("registry_secondary", secondary), Site("registry_eu", eu)]
    image = images.ImageFactory().make()
    images.push(primary_writer, "app", image, ["t"])

    def sync(site: Site, target: str, wait_seconds: float) -> bool:
        """A sync of ``site`` written through ``target``; whether it failed."""
        config = RegistryConfig.from_connection({**site.registry.connection(), "host": target})
        with (
            RegistryClient(primary.client_config()) as source,
            RegistryClient(config, writable=True) as writer,
            Leases(store, site.conn_id, wait_seconds=wait_seconds) as leases,
        ):
            return run_sync(source, writer, leases=leases).failed

    with FaultProxy(secondary.url) as proxy, ThreadPoolExecutor(1) as pool:
        hold = proxy.hold("PUT", "/app/manifests/t")
        first = pool.submit(sync, sites[0], proxy.url, 300.0)
        try:
            assert hold.arrived.wait(60), first.result() if first.done() else ""
            [(resource, owner)] = [
                (lease["resource"], lease["owner"])
                for lease in store.state.all_leases()
                if lease["secondary"] == sites[0].conn_id
            ]
            assert resource == "repository:app"
            # A lease shared across secondaries would make this writer wait, then give up.
            started = time.monotonic()
            assert not sync(sites[1], sites[1].registry.url, 1.0)
            assert time.monotonic() - started < 30
            assert_exact(primary, sites[1])
            assert not first.done()  # the first writer was held, its lease live, all along
            assert [(lease["resource"], lease["owner"]) for lease in store.state.all_leases()] == [
                (resource, owner)
            ]
        finally:  # a failure must not leave the first writer held until its timeout
            hold.release()
        assert not first.result(timeout=120)
    for site in sites:
        assert_exact(primary, site)
    assert store.state.all_leases() == []
