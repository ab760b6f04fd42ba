"""The cheap no-op: the secondary read from the record its writers keep, not listed again.

Against real registries: the secondary sits behind a FaultProxy whose log counts every request
it gets, so "a cheap run does not list the secondary" is an observed fact, not a claim.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from registry_replication.engine import realtime
from registry_replication.engine.leases import Leases
from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.store import Store
from registry_replication.store.queue import Event
from registry_replication.store.record import ABSENT, INTENT, PRESENT, TagRecord
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from replication_harness import images
from replication_harness.read_once import assert_read_once, push_tags
from replication_harness.registry import LocalRegistry
from replication_harness.servers import Fault, FaultProxy
from replication_harness.sites import assert_exact
from replication_harness.sync_cli import run_sync_cli, start_sync, sync_env

_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path) -> Store:
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'recorded.db'}")
    return Store(
        request.getfixturevalue("postgres").create_database(f"recorded_{next(_databases)}")
    )


@pytest.fixture
def proxy(secondary) -> Iterator[FaultProxy]:
    with FaultProxy(secondary.url) as proxy:
        yield proxy


class Proxied(NamedTuple):
    """The primary, the secondary behind the fault proxy, the replicator's writable client of
    it through the proxy, and the test's writer of the primary and reader of the secondary."""

    primary: LocalRegistry
    secondary: LocalRegistry
    proxy: FaultProxy
    target: RegistryClient
    primary_writer: RegistryClient
    secondary_reader: RegistryClient


@pytest.fixture
def proxied(
    primary, secondary, proxy: FaultProxy, target: RegistryClient, primary_writer, secondary_reader
) -> Proxied:
    return Proxied(primary, secondary, proxy, target, primary_writer, secondary_reader)


@pytest.fixture
def target(secondary, proxy: FaultProxy) -> RegistryClient:
    """The replicator's writable client of the secondary, through the fault proxy."""
    return through(secondary, proxy.url, writable=True)


def cli_sync(primary, secondary, proxy: FaultProxy, store: Store) -> subprocess.Popen[str]:
    """A CLI sync in a process of its own (a test can kill it), writing through ``proxy``."""
    return start_sync(
        primary.connection(),
        {**secondary.connection(), "host": proxy.url},
        env=sync_env(store.url, REGISTRY_REPLICATION_LEASE_SECONDS="2"),
    )


def through(registry, url: str, *, writable: bool = False) -> RegistryClient:
    return RegistryClient(
        RegistryConfig.from_connection({**registry.connection(), "host": url}), writable=writable
    )


def sync(
    primary, target: RegistryClient, store: Store, secondary: str = "registry_secondary", **options
) -> object:
    """One run from the primary, read directly, to ``target``."""
    with RegistryClient(primary.client_config()) as source:
        return replicate(source, target, store, secondary, **options)


def replicate(
    source: RegistryClient,
    target: RegistryClient,
    store: Store,
    secondary: str = "registry_secondary",
    **options,
) -> object:
    """One run from ``source`` to ``target`` under the store's leases for ``secondary``."""
    with Leases(store, secondary) as leases:
        return run_sync(source, target, SyncOptions(**options), leases=leases)


def listings(proxy: FaultProxy) -> list[str]:
    """The listing requests the secondary received: catalog and tags/list."""
    return [
        path
        for method, path, _ in proxy.log
        if method == "GET" and ("/_catalog" in path or path.endswith("/tags/list"))
    ]


def test_a_cheap_run_does_not_list_the_secondary_yet_copies_and_prunes(proxied, any_store):
    primary, secondary, proxy, target, primary_writer, secondary_reader = proxied
    factory = images.ImageFactory()
    images.push(primary_writer, "app", factory.make(), ["v1"])
    doomed = factory.make()
    images.push(primary_writer, "app", doomed, ["v2"])
    images.push(primary_writer, "other", factory.make(), ["1.0"])

    first = sync(primary, target, any_store)
    # No record yet: the secondary is listed; replicated whole, no blobs verification follows.
    assert first.run_kind.kind == "full" and "no record of the secondary" in first.run_kind.reason
    assert first.deep is None
    assert any("/_catalog" in p for p in listings(proxy))
    record = TagRecord(any_store, "registry_secondary")
    assert record.rows("other") == {
        "1.0": (PRESENT, secondary_reader.head_manifest("other", "1.0").digest)
    }

    proxy.log.clear()
    noop = sync(primary, target, any_store)
    assert noop.run_kind.kind == "cheap", noop.run_kind
    # Not listed: one catalog page and one sampled tag per repository, to check the record.
    assert sorted(
        (method, path.split("?")[0].rsplit("/", 1)[0]) for method, path, _ in proxy.log
    ) == [("GET", "/v2"), ("HEAD", "/v2/app/manifests"), ("HEAD", "/v2/other/manifests")]
    assert noop.run_kind.sampled == 2
    assert noop.counts() == {"manifests pushed": 0, "bytes copied": 0, "tags pruned": 0}
    assert noop.verification["in_sync"].all()

    new = images.push(primary_writer, "app", factory.make(), ["v3"])
    primary_writer.delete_manifest("app", doomed.digest)
    proxy.log.clear()
    cheap = sync(primary, target, any_store)
    assert cheap.run_kind.kind == "cheap" and not cheap.failed
    assert sorted(secondary_reader.tags("app")) == ["v1", "v3"]
    assert secondary_reader.head_manifest("app", "v3").digest == new
    # No catalog, and "other" (unchanged) was never listed; "app" only inside the prune's lease
    # and by the verification of what changed.
    assert not [p for p in listings(proxy) if "/other/" in p]
    assert cheap.verification["in_sync"].all()
    assert record.rows("app") == {
        "v1": (PRESENT, secondary_reader.head_manifest("app", "v1").digest),
        "v2": (ABSENT, None),
        "v3": (PRESENT, new),
    }


def test_a_full_run_verifies_from_its_listing_and_its_acknowledged_writes(proxied, store):
    """After writing, the secondary is not listed again where every write was acknowledged:
    the run's listing plus those writes are what is verified. A repository where a write
    failed is listed again (and found out of sync); a full verification asked for lists every
    repository the run changed."""
    primary, _, proxy, target, primary_writer, secondary_reader = proxied
    factory = images.ImageFactory()
    for tag in ("v1", "v2"):
        images.push(primary_writer, "app", factory.make(), [tag])
    images.push(primary_writer, "other", factory.make(), ["1.0"])
    proxy.inject(
        Fault(
            status=400, code="MANIFEST_INVALID", method="PUT", path_contains="/other/manifests/1.0"
        )
    )

    first = sync(primary, target, store, verify="tags")  # no deep verification: it lists all
    assert first.run_kind.kind == "full" and not first.run_kind.verification_due
    assert [p for p in listings(proxy) if p.endswith("/tags/list")] == ["/v2/other/tags/list"]
    in_sync = dict(zip(first.verification["repository"], first.verification["in_sync"]))
    assert in_sync == {"app": True, "other": False}
    assert {t: secondary_reader.head_manifest("app", t).digest for t in ("v1", "v2")} == {
        t: primary_writer.head_manifest("app", t).digest for t in ("v1", "v2")
    }
    assert secondary_reader.head_manifest("other", "1.0") is None

    images.push(primary_writer, "app", factory.make(), ["v3"])
    proxy.log.clear()
    forced = sync(primary, target, store, full_verify=True, verify="tags")
    assert forced.run_kind.verification_due and forced.verification["in_sync"].all()
    # Listed at the start (both), then again after writing (both changed).
    assert sorted(p for p in listings(proxy) if p.endswith("/tags/list")) == [
        "/v2/app/tags/list",
        "/v2/app/tags/list",
        "/v2/other/tags/list",
        "/v2/other/tags/list",
    ]


def test_drift_is_caught_by_the_rotating_sample_or_the_full_verification(
    proxied, store, secondary_writer
):
    primary, _, proxy, target, primary_writer, secondary_reader = proxied
    factory = images.ImageFactory()
    img = factory.make()
    images.push(primary_writer, "app", img, ["v1"])
    images.push(primary_writer, "app", factory.make(), ["v2"])
    assert sync(primary, target, store).run_kind.kind == "full"

    # Out of band: nobody records it. Each cheap run HEADs one of app's two tags, the one
    # sampled longest ago: within two cheap runs v1 is sampled, and that run lists app.
    secondary_writer.delete_manifest("app", img.digest)
    caught = []
    for _ in range(2):
        proxy.log.clear()
        cheap = sync(primary, target, store)
        assert cheap.run_kind.kind == "cheap" and cheap.run_kind.sampled == 1
        caught.append(any(p.endswith("/app/tags/list") for p in listings(proxy)))
        assert not cheap.failed
    assert caught in ([True, False], [False, True])
    assert secondary_reader.head_manifest("app", "v1").digest == img.digest

    secondary_writer.delete_manifest("app", img.digest)
    proxy.log.clear()
    full = sync(primary, target, store, full_verify_hours=0)
    assert full.run_kind.kind == "full" and "older than full_verify_hours=0" in full.run_kind.reason
    assert any("/_catalog" in p for p in listings(proxy))
    assert secondary_reader.head_manifest("app", "v1").digest == img.digest
    assert full.verification["in_sync"].all()

    asked = sync(primary, target, store, full_verify=True)
    assert asked.run_kind.kind == "full" and "asked" in asked.run_kind.reason


def test_a_record_made_against_another_address_is_not_trusted(proxied, store):
    primary, secondary, _, target, primary_writer, _ = proxied
    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    with RegistryClient(secondary.client_config(), writable=True) as direct:
        assert sync(primary, direct, store).run_kind.kind == "full"
        assert sync(primary, direct, store).run_kind.kind == "cheap"
    assert sync(primary, target, store).run_kind.kind == "full"  # through the proxy


def test_the_cli_records_and_says_which_kind_of_run(primary, secondary, primary_writer, store):
    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    env = sync_env(store.url)

    def cli(*args: str) -> dict:
        done = run_sync_cli(primary.connection(), secondary.connection(), "--json", *args, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert cli()["run"]["kind"] == "full"
    assert TagRecord(store, "registry_secondary").rows("app")["v1"][0] == PRESENT
    assert cli()["run"]["kind"] == "cheap"
    forced = cli("--full-verify")["run"]
    assert forced == {"kind": "full", "reason": "a full verification was asked for"}


def test_the_event_path_records_pushes_and_deletes(
    primary,
    secondary,
    store,
    primary_writer,
    primary_reader,
    secondary_writer,
    secondary_reader,
):
    img = images.ImageFactory().make()
    digest = images.push(primary_writer, "app", img, ["v1", "v2"])
    now = dt.datetime.now(dt.UTC)
    pushed = [Event(f"p{t}", "push", "app", t, digest, img.media_type, now) for t in ("v1", "v2")]
    with Leases(store, "registry_secondary") as leases:
        outcomes = realtime.replicate_events(
            primary_reader, secondary_writer, pushed, leases=leases
        )
        assert outcomes == {"pv1": None, "pv2": None}
        record = TagRecord(store, "registry_secondary")
        assert record.rows("app") == {"v1": (PRESENT, digest), "v2": (PRESENT, digest)}

        primary_writer.delete_manifest("app", digest)
        images.push(primary_writer, "app", img, ["v2"])  # only v1 is gone
        later = dt.datetime.now(dt.UTC)
        deleted = [Event("d1", "delete", "app", "v1", None, None, later)]
        assert realtime.replicate_events(
            primary_reader, secondary_writer, deleted, leases=leases
        ) == {"d1": None}
    assert secondary_reader.tags("app") == ["v2"]
    assert record.rows("app") == {"v1": (ABSENT, None), "v2": (PRESENT, digest)}


def test_a_writer_killed_between_the_tag_write_and_its_record_leaves_an_intent(proxied, store):
    """The worst case for a record: the registry took the tag, the writer died before saying
    so. Then the primary moves the tag back and that event is lost: only the intent left by
    the dead writer makes the next cheap run look, and put the tag right."""
    primary, secondary, proxy, target, primary_writer, secondary_reader = proxied
    factory = images.ImageFactory()
    first, second = factory.make(), factory.make()
    images.push(primary_writer, "app", first, ["v1"])
    assert sync(primary, target, store).run_kind.kind == "full"
    images.push(primary_writer, "app", second, ["v1"])

    hold = proxy.hold("PUT", "/manifests/v1")
    writer = cli_sync(primary, secondary, proxy, store)
    assert hold.arrived.wait(60), writer.communicate(timeout=60)[0] if writer.poll() else ""
    writer.kill()
    writer.wait(30)
    hold.release()  # the registry now takes the tag its dead writer sent
    _wait_for(lambda: secondary_reader.head_manifest("app", "v1").digest == second.digest)
    assert TagRecord(store, "registry_secondary").rows("app")["v1"] == (INTENT, None)

    images.push(primary_writer, "app", first, ["v1"])  # moved back; no event reaches us
    proxy.log.clear()
    rerun = sync(primary, target, store)
    assert rerun.run_kind.kind == "cheap" and not rerun.failed
    assert ("HEAD", "/v2/app/manifests/v1") in {(m, p) for m, p, _ in proxy.log}
    assert secondary_reader.head_manifest("app", "v1").digest == first.digest
    assert TagRecord(store, "registry_secondary").rows("app")["v1"] == (PRESENT, first.digest)


def test_a_writer_killed_mid_batch_leaves_intents_on_the_whole_batch(proxied, sites, store):
    """Tags are written a batch at a time: one intent for the batch, the writes, one record.
    Killed with some of the batch's tags written and one held, the writer leaves an intent on
    every tag of the batch (written or not): none keeps the digest recorded before the batch,
    which the secondary no longer holds. The next cheap run asks about each and puts all
    right, a tag moved back meanwhile included. With a second secondary in the store, its
    writer records the same batch meanwhile: the intents of the first stand."""
    primary, secondary, proxy, target, primary_writer, secondary_reader = proxied
    factory = images.ImageFactory()
    tags = [f"t{i}" for i in range(5)]
    old = {tag: images.push(primary_writer, "app", factory.make(), [tag]) for tag in tags}
    assert sync(primary, target, store).run_kind.kind == "full"
    assert TagRecord(store, "registry_secondary").rows("app") == {
        tag: (PRESENT, old[tag]) for tag in tags
    }
    others = sites[1:]
    for site in others:
        with site.client(writable=True) as other:
            assert sync(primary, other, store, site.conn_id).run_kind.kind == "full"
    new = {tag: images.push(primary_writer, "app", factory.make(), [tag]) for tag in tags}

    hold = proxy.hold("PUT", "/manifests/t3")
    writer = cli_sync(primary, secondary, proxy, store)
    assert hold.arrived.wait(60), writer.communicate(timeout=60)[0] if writer.poll() else ""
    written = [tag for tag in tags if tag != "t3"]
    _wait_for(
        lambda: all(
            secondary_reader.head_manifest("app", tag).digest == new[tag] for tag in written
        )
    )
    writer.kill()
    writer.wait(30)
    for site in others:  # not held by the dead writer's lease, nor writing its record
        with site.client(writable=True) as other:
            assert not sync(primary, other, store, site.conn_id).failed
        assert TagRecord(store, site.conn_id).rows("app") == {
            tag: (PRESENT, new[tag]) for tag in tags
        }
    assert TagRecord(store, "registry_secondary").rows("app") == dict.fromkeys(tags, (INTENT, None))
    hold.release()  # the registry takes the held write too
    _wait_for(lambda: secondary_reader.head_manifest("app", "t3").digest == new["t3"])

    images.push(primary_writer, "app", factory.make(), ["t1"])  # moved again; no event
    proxy.log.clear()
    rerun = sync(primary, target, store)
    assert rerun.run_kind.kind == "cheap" and not rerun.failed
    assert {("HEAD", f"/v2/app/manifests/{tag}") for tag in tags} <= {
        (m, p) for m, p, _ in proxy.log
    }
    now = {tag: secondary_reader.head_manifest("app", tag).digest for tag in tags}
    assert now == {tag: primary_writer.head_manifest("app", tag).digest for tag in tags}
    # Rewritten tags are recorded; the others keep their intent (a HEAD outside the lease
    # cannot record them) until a write or a full run: never a digest the secondary lacks.
    rows = TagRecord(store, "registry_secondary").rows("app")
    assert rows["t1"] == (PRESENT, now["t1"])
    assert all(rows[tag] in ((INTENT, None), (PRESENT, now[tag])) for tag in tags), rows
    for site in others:
        with site.client(writable=True) as other:
            assert sync(primary, other, store, site.conn_id).run_kind.kind == "cheap"
        assert_exact(primary, site)
        assert TagRecord(store, site.conn_id).rows("app") == {
            tag: (PRESENT, now[tag]) for tag in tags
        }


def _wait_for(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_primary_is_read_with_conditional_heads_yet_every_move_is_seen(
    primary,
    secondary,
    any_store,
    primary_writer,
    secondary_reader,
):
    factory = images.ImageFactory()
    images.push(primary_writer, "app", factory.make(), ["v1"])
    images.push(primary_writer, "app", factory.make(), ["v2"])
    with FaultProxy(primary.url) as primary_proxy:
        source = through(primary, primary_proxy.url)
        replicate(source, RegistryClient(secondary.client_config(), writable=True), any_store)
        moved = images.push(primary_writer, "app", factory.make(), ["v1"])  # no event: unseen
        added = images.push(primary_writer, "app", factory.make(), ["v3"])
        primary_proxy.log.clear()
        report = replicate(
            source, RegistryClient(secondary.client_config(), writable=True), any_store
        )

    asked: dict[str, list[tuple[str, int]]] = {}
    for method, path, status in primary_proxy.log:
        if "/manifests/v" in path:
            asked.setdefault(path.rsplit("/", 1)[1], []).append((method, status))
    heads = {tag: requests[0] for tag, requests in asked.items()}  # the listing's
    # The unchanged tag is confirmed without the manifest being read; the moved tag's
    # condition fails and the registry answers with its new digest; the new tag had no record
    # (read whole: the plan needs it).
    assert heads == {"v2": ("HEAD", 304), "v1": ("HEAD", 200), "v3": ("GET", 200)}, (
        primary_proxy.log
    )
    # The compare-and-set before each write is conditional on the planned digest too.
    assert asked["v1"][1:] == asked["v3"][1:] == [("HEAD", 304)], primary_proxy.log
    listed = dict(zip(report.primary.tags["tag"], report.primary.tags["digest"]))
    assert listed == {t: primary_writer.head_manifest("app", t).digest for t in ("v1", "v2", "v3")}
    assert secondary_reader.head_manifest("app", "v1").digest == moved
    assert secondary_reader.head_manifest("app", "v3").digest == added
    assert report.verification["in_sync"].all() and not report.failed


def test_a_full_run_reads_each_manifest_once(
    primary, secondary, store, primary_writer, secondary_reader
):
    """The listing reads whole the tags the record cannot confirm, and the plan reuses what it
    read: one GET per tag, plus one per index child; the compare-and-set before each write
    is a conditional HEAD the registry answers 304."""
    pushed = push_tags(primary_writer)
    with FaultProxy(primary.url) as primary_proxy:
        report = replicate(
            through(primary, primary_proxy.url),
            RegistryClient(secondary.client_config(), writable=True),
            store,
        )
    assert not report.failed and report.verification["in_sync"].all()
    assert_read_once(pushed, primary_proxy.log, secondary_reader)
