"""A writer killed with SIGKILL at the worst moments: nothing stays half done.

The writer is ``registry-replication sync`` in its own process, writing the secondary through
a proxy that holds one chosen request: mid-upload (chunked and monolithic), between an index's
children and its tag, and mid-prune (between pointing a tag at its tombstone and deleting the
tombstone). While it is held the writer is killed. A watcher samples the secondary the whole
time (incomplete tags, tags on digests the primary never had, tags deleted while the primary
had them); a second writer then finishes the work after the dead one's leases expire.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_replication.store import Store
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.servers import FaultProxy
from replication_harness.sync_cli import start_sync, sync_env
from replication_harness.watch import PrimaryHistory, ReplicaWatcher, is_tombstone, tags_of

MiB = 1 << 20
LEASE_SECONDS = "2"


def writer(primary, target_url: str, secondary, store: Store, *args: str) -> subprocess.Popen:
    return start_sync(
        primary.connection(),
        {**secondary.connection(), "host": target_url},
        "--force-prune",
        *args,
        env=sync_env(store.url, REGISTRY_REPLICATION_LEASE_SECONDS=LEASE_SECONDS),
    )


def open_uploads(secondary, repository: str) -> list[Path]:
    """The registry's live upload sessions (a cancelled one keeps only its hash state)."""
    uploads = secondary.storage / "docker/registry/v2/repositories" / repository / "_uploads"
    return sorted(p for p in uploads.glob("*/startedat")) if uploads.exists() else []


@pytest.fixture
def proxy(secondary) -> Iterator[FaultProxy]:
    with FaultProxy(secondary.url) as proxy:
        yield proxy


def kill_at(hold, process: subprocess.Popen) -> None:
    assert hold.arrived.wait(60), process.communicate(timeout=60)[0] if process.poll() else ""
    process.kill()
    process.wait(30)
    hold.drop()


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
    point,
    primary,
    secondary,
    proxy,
    store,
    primary_writer,
    primary_reader,
    secondary_reader,
):
    factory = images.ImageFactory()
    layer = images.random_layer(3 * MiB + 17)
    big = images.image([layer])
    images.push(primary_writer, "app/big", big, ["1.0"])
    multi = factory.multi_arch()
    images.push(primary_writer, "app/multi", multi, ["1.0", "latest"])
    shared = factory.make()
    images.push(primary_writer, "app/prune", shared, ["keep", "drop"])
    history = PrimaryHistory.of(primary_reader)
    args: tuple[str, ...] = ()
    if point == "prune between tombstone and its delete":
        first = writer(primary, secondary.url, secondary, store)
        assert first.wait(120) == 0, first.communicate()[0]
        history.deleting("app/prune", ["drop", "keep"])
        primary_writer.delete_manifest("app/prune", shared.digest)  # untag "drop" only
        history.pushing("app/prune", "keep", shared.digest)
        images.push(primary_writer, "app/prune", shared, ["keep"])
        hold = proxy.hold("DELETE", "/app/prune/manifests/sha256:")
    elif point == "chunked upload":
        args = ("--chunk-size-mib", "1")
        hold = proxy.hold("PATCH", "/app/big/blobs/uploads/", after=1)
    elif point == "monolithic upload":
        hold = proxy.hold("PUT", layer.digest.split(":")[1])
    else:
        hold = proxy.hold("PUT", "/app/multi/manifests/1.0")

    with (
        RegistryClient(secondary.client_config()) as watching,
        ReplicaWatcher(watching, history) as watch,
    ):
        # One transfer at a time: nothing else is between a request and its record when the
        # held request arrives (see the README's note on upload sessions).
        victim = writer(primary, proxy.url, secondary, store, "--parallelism", "1", *args)
        kill_at(hold, victim)
        left = [lease for lease in store.state.all_leases()]
        assert left, "the killed writer held no lease or upload at that moment"
        if "upload" in point:
            assert open_uploads(secondary, "app/big"), "no upload session was open"
        if point == "index before its tag":
            assert secondary_reader.head_manifest("app/multi", multi.children[0].digest)
            assert secondary_reader.head_manifest("app/multi", "1.0") is None
        if point.startswith("prune"):
            assert is_tombstone(secondary_reader.get_manifest("app/prune", "drop").raw)

        if "upload" in point:
            # The next run after the dead writer's leases expired finds its upload sessions.
            deadline = time.monotonic() + 30
            while len(store.state.expired_leases("registry_secondary", "upload:")) < len(
                [lease for lease in left if lease["resource"].startswith("upload:")]
            ):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        rerun = writer(primary, secondary.url, secondary, store, *args)
        output, _ = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, output

    assert tags_of(secondary_reader) == tags_of(primary_reader), output
    assert watch.violations == [] and watch.samples > 0
    assert store.state.all_leases() == [], "\n".join(
        [
            str(
                (
                    lease["resource"],
                    lease["owner"],
                    (lease["detail"] or {}).get("location", "")[:60],
                )
            )
            for lease in store.state.all_leases()
        ]
        + [output]
    )
    assert open_uploads(secondary, "app/big") == [], output
    if "upload" in point:
        assert "cancelled an upload session a stopped writer left open in app/big" in output
    else:  # the dead writer held the repository's lease; the rerun took it over
        assert [lease["resource"] for lease in left] == [
            "repository:app/multi" if point.startswith("index") else "repository:app/prune"
        ]
    assert b"".join(secondary_reader.read_blob("app/big", layer.digest)) == layer.data
