"""A writer killed with SIGKILL at the worst moments: nothing stays half done.

The writer is ``registry-replication sync`` in its own process, writing the secondary through
a proxy that holds one chosen request: mid-upload (chunked and monolithic), between an index's
children and its tag, and mid-prune (between pointing a tag at its tombstone and deleting the
tombstone). While it is held the writer is killed. A watcher samples the secondary the whole
time (incomplete tags, tags on digests the primary never had, tags deleted while the primary
had them); a second writer then finishes the work after the dead one's leases expire.

Then the same with two secondaries sharing the store (issue 22): the writer of the second,
``registry_eu``, is held at the same point at the same time, holding its own leases on the same
resources; it goes on once the first one's writer is dead, and ends exact, its record its own.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from registry_replication.store import Store
from registry_replication.store.record import ABSENT, PRESENT, TagRecord
from replication_harness import images
from replication_harness.servers import FaultProxy, Hold
from replication_harness.sites import Site, assert_exact, recorded, sites_env, start_site_sync
from replication_harness.watch import PrimaryHistory, ReplicaWatcher, is_tombstone, tags_of

MiB = 1 << 20
LEASE_SECONDS = "2"


def writer(
    primary, site: Site, sites: Sequence[Site], store: Store, *args: str, through: str = ""
) -> subprocess.Popen:
    """A CLI sync of ``site`` (``--force-prune``), writing it through ``through`` if given."""
    return start_site_sync(
        primary.connection(),
        site,
        "--force-prune",
        *args,
        env=sites_env(
            store,
            sites,
            {site.conn_id: through} if through else None,
            REGISTRY_REPLICATION_LEASE_SECONDS=LEASE_SECONDS,
        ),
    )


def open_uploads(secondary, repository: str) -> list[Path]:
    """The registry's live upload sessions (a cancelled one keeps only its hash state)."""
    uploads = secondary.storage / "docker/registry/v2/repositories" / repository / "_uploads"
    return sorted(p for p in uploads.glob("*/startedat")) if uploads.exists() else []


@pytest.fixture
def proxies(sites) -> Iterator[dict[str, FaultProxy]]:
    """A proxy in front of each site, that can hold a request of its writer."""
    with ExitStack() as stack:
        yield {site.conn_id: stack.enter_context(FaultProxy(site.registry.url)) for site in sites}


def kill_at(hold, process: subprocess.Popen) -> None:
    assert hold.arrived.wait(60), process.communicate(timeout=60)[0] if process.poll() else ""
    process.kill()
    process.wait(30)
    hold.drop()


def leases_of(store: Store, site: Site) -> list[tuple[str, str]]:
    """(resource, owner) of the leases ``site``'s writers hold in the store."""
    return [
        (lease["resource"], lease["owner"])
        for lease in store.state.all_leases()
        if lease["secondary"] == site.conn_id
    ]


def held_by(store: Store) -> str:
    """The leases in the store, for a failure's message."""
    return "\n".join(
        str((lease["secondary"], lease["resource"], lease["owner"]))
        for lease in store.state.all_leases()
    )


# Where the victim is held: (method, path fragment, matching requests let through first).
HOLDS = {
    "chunked upload": ("PATCH", "/app/big/blobs/uploads/", 1),
    "index before its tag": ("PUT", "/app/multi/manifests/1.0", 0),
    "prune between tombstone and its delete": ("DELETE", "/app/prune/manifests/sha256:", 0),
}


@pytest.mark.parametrize(
    "point",
    [
        "chunked upload",
        "monolithic upload",
        "index before its tag",
        "prune between tombstone and its delete",
    ],
)
def test_sigkill_then_rerun_leaves_the_secondary_exact(
    point, primary, sites, proxies, store, primary_writer, primary_reader
):
    victim, others = sites[0], sites[1:]
    secondary = victim.registry
    factory = images.ImageFactory()
    layer = images.random_layer(3 * MiB + 17)
    big = images.image([layer])
    images.push(primary_writer, "app/big", big, ["1.0"])
    multi = factory.multi_arch()
    images.push(primary_writer, "app/multi", multi, ["1.0", "latest"])
    shared = factory.make()
    images.push(primary_writer, "app/prune", shared, ["keep", "drop"])
    history = PrimaryHistory.of(primary_reader)
    args: tuple[str, ...] = ("--chunk-size-mib", "1") if point == "chunked upload" else ()
    # The tag the victim is stopped short of, and what a finished writer records for it.
    at, done = ("app/big", "1.0"), (PRESENT, big.digest)
    if point == "prune between tombstone and its delete":
        firsts = [writer(primary, site, sites, store) for site in sites]
        for first in firsts:
            assert first.wait(120) == 0, first.communicate()[0]
        history.deleting("app/prune", ["drop", "keep"])
        primary_writer.delete_manifest("app/prune", shared.digest)  # untag "drop" only
        history.pushing("app/prune", "keep", shared.digest)
        images.push(primary_writer, "app/prune", shared, ["keep"])
        at, done = ("app/prune", "drop"), (ABSENT, None)
    elif point == "index before its tag":
        at, done = ("app/multi", "1.0"), (PRESENT, multi.digest)
    method, path, after = HOLDS.get(point, ("PUT", layer.digest.split(":")[1], 0))
    holds: dict[str, Hold] = {
        site.conn_id: proxies[site.conn_id].hold(method, path, after=after) for site in sites
    }

    with ExitStack() as stack:
        watches = [
            stack.enter_context(ReplicaWatcher(stack.enter_context(site.client()), history))
            for site in sites
        ]
        # One transfer at a time: nothing else is between a request and its record when the
        # held request arrives (see the README's note on upload sessions).
        writers: list[subprocess.Popen] = []
        # A failed assertion leaves no writer held behind it.
        stack.callback(lambda: [w.kill() for w in writers if w.poll() is None])
        writers += [
            writer(
                primary,
                site,
                sites,
                store,
                "--parallelism",
                "1",
                *args,
                through=proxies[site.conn_id].url,
            )
            for site in sites
        ]
        for site, other in zip(others, writers[1:]):
            assert holds[site.conn_id].arrived.wait(60), (
                other.communicate(timeout=60)[0] if other.poll() is not None else held_by(store)
            )
        assert holds[victim.conn_id].arrived.wait(60)
        # Every site's writer is held at the same point at once, each with its own leases (on
        # the same repository where the point is under a repository's lease).
        held = {site.conn_id: leases_of(store, site) for site in sites}
        assert all(held.values()), held
        if not point.endswith("upload"):
            assert {resource for site in sites for resource, _ in held[site.conn_id]} == {
                f"repository:{at[0]}"
            }
        kill_at(holds[victim.conn_id], writers[0])
        left = [lease for lease in store.state.all_leases() if lease["secondary"] == victim.conn_id]
        assert left, "the killed writer held no lease or upload at that moment"
        with victim.client() as victim_reader:
            if "upload" in point:
                assert open_uploads(secondary, "app/big"), "no upload session was open"
            if point == "index before its tag":
                assert victim_reader.head_manifest("app/multi", multi.children[0].digest)
                assert victim_reader.head_manifest("app/multi", "1.0") is None
            if point.startswith("prune"):
                assert is_tombstone(victim_reader.get_manifest("app/prune", "drop").raw)

        # The other sites' writers go on while the dead writer's leases stand: none waits on
        # them or takes them over, and each site's record is its own.
        for site, other in zip(others, writers[1:]):
            holds[site.conn_id].release()
            output, _ = other.communicate(timeout=120)
            assert other.returncode == 0, output
            assert_exact(primary, site)
            assert leases_of(store, site) == [], output
            assert TagRecord(store, site.conn_id).rows(at[0])[at[1]] == done
            assert "stopped writer" not in output, output
        assert leases_of(store, victim) == held[victim.conn_id]
        assert TagRecord(store, victim.conn_id).rows(at[0]).get(at[1]) != done

        if "upload" in point:
            # The next run after the dead writer's leases expired finds its upload sessions.
            deadline = time.monotonic() + 30
            while len(store.state.expired_leases(victim.conn_id, "upload:")) < len(
                [lease for lease in left if lease["resource"].startswith("upload:")]
            ):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        rerun = writer(primary, victim, sites, store, *args)
        output, _ = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, output

    for site, watch in zip(sites, watches):
        assert_exact(primary, site)
        assert watch.violations == [] and watch.samples > 0, site.conn_id
        # The record never names a digest the site does not hold under that tag.
        assert recorded(store, site).items() <= tags_of(primary_reader).items(), site.conn_id
    assert store.state.all_leases() == [], "\n".join(
        [
            str(
                (
                    lease["secondary"],
                    lease["resource"],
                    lease["owner"],
                    (lease["detail"] or {}).get("location", "")[:60],
                )
            )
            for lease in store.state.all_leases()
        ]
        + [output]
    )
    assert all(open_uploads(site.registry, "app/big") == [] for site in sites), output
    if "upload" in point:
        assert "cancelled an upload session a stopped writer left open in app/big" in output
    else:  # the dead writer held the repository's lease; the rerun took it over
        assert [lease["resource"] for lease in left] == [f"repository:{at[0]}"]
    with victim.client() as victim_reader:
        assert b"".join(victim_reader.read_blob("app/big", layer.digest)) == layer.data
