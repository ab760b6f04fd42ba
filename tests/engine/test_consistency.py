"""Concurrent writers never undo each other: the races of a slow reconcile, made deterministic.

A fault proxy in front of the primary holds the reconcile's read of one layer; while it is
held, the primary changes and a second writer (the event path's engine) replicates the change.
Then the reconcile goes on, with the plan it made before.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from collections.abc import Iterator

import pytest

from registry_replication.engine.leases import Leases
from registry_replication.engine.realtime import replicate_events
from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.store import Store
from registry_replication.store.queue import Event
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.servers import FaultProxy
from replication_harness.sync_cli import start_sync, sync_env
from replication_harness.watch import is_tombstone


@pytest.fixture
def slow_primary(primary) -> Iterator[FaultProxy]:
    """The primary behind a proxy that can hold a request: the reconcile's slow link."""
    with FaultProxy(primary.url) as proxy:
        yield proxy


def cli_sync(proxy: FaultProxy, primary, secondary, store: Store) -> subprocess.Popen:
    """``registry-replication sync`` in its own process, reading the primary through ``proxy``."""
    return start_sync(
        {**primary.connection(), "host": proxy.url},
        secondary.connection(),
        env=sync_env(store.url),
    )


def event_path(
    primary_reader, secondary_writer, store: Store, repository: str, tag: str, digest: str
) -> None:
    """The second writer: the event path replicating one push, with its own leases."""
    event = Event(
        f"push-{tag}-{digest[-8:]}", "push", repository, tag, digest, None, dt.datetime.now(dt.UTC)
    )
    with Leases(store, "registry_secondary") as leases:
        outcomes = replicate_events(primary_reader, secondary_writer, [event], leases=leases)
    assert outcomes == {event.id: None}


def test_cli_never_overwrites_a_newer_tag(
    primary,
    secondary,
    slow_primary,
    store,
    primary_writer,
    primary_reader,
    secondary_writer,
    secondary_reader,
):
    factory = images.ImageFactory()
    old = factory.make()
    images.push(primary_writer, "app", old, ["t"])
    held = slow_primary.hold("GET", f"/blobs/{old.blobs[-1].digest}")

    sync = cli_sync(slow_primary, primary, secondary, store)
    assert held.arrived.wait(60), "the sync never read the layer"
    # Meanwhile the primary moves the tag and the event path replicates the new image.
    new = images.push(primary_writer, "app", factory.make(), ["t"])
    event_path(primary_reader, secondary_writer, store, "app", "t", new)
    assert secondary_reader.head_manifest("app", "t").digest == new
    held.release()
    output, _ = sync.communicate(timeout=120)

    assert (
        secondary_reader.head_manifest("app", "t").digest
        == new
        == primary_reader.head_manifest("app", "t").digest
    ), output
    assert f"moved on the primary since the plan, left to the newer writer: t -> {new}" in output


def test_cli_never_deletes_a_tag_pushed_again(
    primary,
    secondary,
    slow_primary,
    store,
    primary_writer,
    primary_reader,
    secondary_writer,
    secondary_reader,
):
    factory = images.ImageFactory()
    kept = factory.make()
    images.push(primary_writer, "keep", kept, ["k"])
    images.push(primary_writer, "keep", factory.make(), ["other"])
    run_sync(primary_reader, secondary_writer, leases=Leases(store, "registry_secondary"))
    primary_writer.delete_manifest("keep", kept.digest)  # k is gone from the primary...
    fresh = factory.make()
    images.push(primary_writer, "app", fresh, ["new"])  # ...and the next sync has work to do
    held = slow_primary.hold("GET", f"/blobs/{fresh.blobs[-1].digest}")

    sync = cli_sync(slow_primary, primary, secondary, store)
    assert held.arrived.wait(60), "the sync never read the layer"
    # The sync's snapshot says k is gone; now k is pushed again, same digest, and replicated.
    images.push(primary_writer, "keep", kept, ["k"])
    event_path(primary_reader, secondary_writer, store, "keep", "k", kept.digest)
    held.release()
    output, _ = sync.communicate(timeout=120)

    assert secondary_reader.head_manifest("keep", "k").digest == kept.digest, output
    assert secondary_reader.head_manifest("app", "new").digest == fresh.digest
    assert "prune kept" in output and "keep:k" in output and "the primary has it again" in output


def test_prune_never_untags_a_tag_that_shares_the_digest(
    primary_writer, primary_reader, secondary_writer, secondary_reader, store
):
    """Removing one tag of a digest leaves its other tags in place all along (no restore step):
    a poller reading the kept tag during the prune never finds it missing."""
    shared = images.ImageFactory().make()
    images.push(primary_writer, "app", shared, ["keep", *[f"drop{i}" for i in range(20)]])
    run_sync(primary_reader, secondary_writer, leases=Leases(store, "registry_secondary"))
    primary_writer.delete_manifest("app", shared.digest)
    images.push(primary_writer, "app", shared, ["keep"])

    missing: list[str | None] = []
    stop = threading.Event()

    def poll() -> None:
        with RegistryClient(secondary_reader.config) as reader:
            while not stop.is_set():
                found = reader.head_manifest("app", "keep")
                if found is None or found.digest != shared.digest:
                    missing.append(found.digest if found else None)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        report = run_sync(
            primary_reader,
            secondary_writer,
            SyncOptions(force_prune=True),
            leases=Leases(store, "registry_secondary"),
        )
    finally:
        stop.set()
        poller.join()
    assert sorted(r.tag for r in report.pruned if r.outcome == "deleted") == sorted(
        f"drop{i}" for i in range(20)
    )
    assert missing == []
    assert sorted(secondary_reader.tags("app")) == ["keep"]
    # The tombstones are gone with their tags; nothing else was left behind.
    assert not is_tombstone(secondary_reader.get_manifest("app", "keep").raw)
