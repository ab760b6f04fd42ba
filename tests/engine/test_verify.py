"""Verification levels against real registries: damage made behind the replicator's back on
the secondary's disk and through its API is repaired where the API allows, and named (data
file, expected and found) where it does not."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.outcomes import CheckOutcome, RepositoryState
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from replication_harness import images
from replication_harness.damage import damage, pulls_exactly
from replication_harness.servers import FaultProxy
from replication_harness.sync_cli import run_sync_cli, sync_env


@contextmanager
def replicator_through_a_proxy(
    primary, secondary
) -> Iterator[tuple[FaultProxy, RegistryClient, RegistryClient]]:
    """The replicator's clients, the secondary's reached through a proxy a test can set."""
    with (
        FaultProxy(secondary.url) as proxy,
        RegistryClient(primary.client_config()) as source,
        RegistryClient(
            RegistryConfig.from_connection({**secondary.connection(), "host": proxy.url}),
            writable=True,
        ) as target,
    ):
        yield proxy, source, target


def test_content_verification_repairs_what_it_can_and_names_the_rest(
    primary_writer, secondary, secondary_writer, secondary_reader, replicator, leases
):
    factory = images.ImageFactory()
    imgs = {name: factory.make() for name in "abcde"}
    for name, img in imgs.items():
        images.push(primary_writer, "app", img, [name])
    images.push(primary_writer, "other", factory.make(), ["1.0"])
    first = run_sync(*replicator, leases=leases)
    # Replicated for the first time, written whole: verified as it landed, the cadence starts.
    assert not first.failed and first.deep is None
    assert {
        r["repository"]: r["verified_level"] for r in leases.store.state.repository_states()
    } == {"app": "blobs", "other": "blobs"}

    hit = damage(secondary, secondary_writer, imgs)
    report = run_sync(*replicator, SyncOptions(verify="content"), leases=leases)
    assert report.failed
    # The deleted tag and the moved tag are back on the primary's digests.
    for name in "de":
        assert secondary_reader.head_manifest("app", name).digest == imgs[name].digest
    by_digest = {(f.digest, f.outcome): f for f in report.deep.findings}
    assert (hit["a"].digest, CheckOutcome.REPAIRED) in by_digest
    pulls_exactly(secondary_reader, "app", imgs["a"])
    truncated = by_digest[(hit["b"].digest, CheckOutcome.DAMAGED)]
    assert (truncated.expected, truncated.found) == (
        f"{hit['b'].size} bytes",
        f"{hit['b'].size - 100} bytes",
    )
    flipped = by_digest[(hit["c"].digest, CheckOutcome.DAMAGED)]
    assert flipped.expected == f"bytes hashing to {hit['c'].digest}"
    assert (
        flipped.found.startswith("bytes hashing to sha256:")
        and hit["c"].digest not in flipped.found
    )
    for blob, finding in ((hit["b"], truncated), (hit["c"], flipped)):
        hex_ = blob.digest.split(":")[1]
        assert finding.data_path == f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"
        assert secondary.storage / finding.data_path == secondary.blob_path(blob.digest)
        assert "remove that data file" in finding.line() and "verify=blobs" in finding.line()
    assert {f.outcome for f in report.deep.findings} == {
        CheckOutcome.REPAIRED,
        CheckOutcome.DAMAGED,
    }
    assert report.damaged.keys() == {"app"}
    assert "1 of 2 repositories in sync (content; listed;" in report.verification_line()
    state = {r["repository"]: r for r in leases.store.state.repository_states()}
    assert state["app"]["state"] == RepositoryState.DAMAGED
    assert set(state["app"]["damaged"]) == {hit["b"].digest, hit["c"].digest}
    assert state["other"]["state"] == RepositoryState.SYNCED
    assert state["other"]["verified_level"] == "content"

    # A tags run cannot see the damage, and does not call it in sync.
    cheap = run_sync(*replicator, SyncOptions(verify="tags"), leases=leases)
    assert cheap.failed and cheap.damaged.keys() == {"app"} and cheap.deep is None
    assert cheap.verification_line().startswith("verification: 1 of 2 repositories in sync (tags")
    assert {r["repository"]: r["state"] for r in leases.store.state.repository_states()}[
        "app"
    ] == RepositoryState.DAMAGED

    # The operator's fix, as the finding says: remove the data files, run verify=blobs.
    for finding in (truncated, flipped):
        (secondary.storage / finding.data_path).unlink()
    fixed = run_sync(*replicator, SyncOptions(verify="blobs"), leases=leases)
    assert not fixed.failed, fixed.verification_line()
    assert fixed.verification_line().startswith("verification: 2 of 2 repositories in sync (blobs")
    for img in imgs.values():
        pulls_exactly(secondary_reader, "app", img)
    assert {r["repository"]: r["state"] for r in leases.store.state.repository_states()}[
        "app"
    ] == RepositoryState.SYNCED


def test_a_cheap_cli_sync_restores_a_secondary_whose_storage_was_emptied(
    primary, secondary, primary_writer, secondary_reader, store
):
    """Measured before: ``verification: 3 of 3 repositories in sync`` and rc 0 while all 3
    images were missing. Now the cheap run sees the empty catalog and lists everything."""
    factory = images.ImageFactory()
    pushed = {repository: factory.make() for repository in ("a", "b/c", "d")}
    for repository, img in pushed.items():
        images.push(primary_writer, repository, img, ["v1"])
    env = sync_env(store.url, PYTHONPATH=os.pathsep.join(sys.path))

    def cli(*args: str) -> tuple[int, str]:
        done = run_sync_cli(primary.connection(), secondary.connection(), *args, env=env)
        return done.returncode, done.stdout + done.stderr

    assert cli()[0] == 0
    rc, out = cli()
    assert rc == 0 and "cheap run" in out and "sample of 3 tags checked" in out, out

    secondary.stop()
    shutil.rmtree(secondary.storage)
    secondary.start()
    assert list(secondary_reader.catalog()) == []
    rc, out = cli()
    assert rc == 0, out
    assert "full run: the secondary's catalog is empty while the record holds 3 tags" in out
    assert "verification: 3 of 3 repositories in sync (tags; listed)" in out
    for repository, img in pushed.items():
        assert secondary_reader.head_manifest(repository, "v1").digest == img.digest
        pulls_exactly(secondary_reader, repository, img)


def test_a_proxy_that_strips_the_blob_length_is_not_taken_for_damage(
    primary, secondary, primary_writer, leases
):
    """A HEAD answered without Content-Length is a blob that could not be checked, with the
    proxy named as the likely cause: never "damaged", never "in sync"."""

    img = images.ImageFactory().make()
    images.push(primary_writer, "app", img, ["v1"])
    with replicator_through_a_proxy(primary, secondary) as (proxy, source, target):
        assert not run_sync(source, target, SyncOptions(verify="tags"), leases=leases).failed
        proxy.strip_head_length = True
        assert target.has_blob("app", img.blobs[0].digest)
        report = run_sync(source, target, SyncOptions(verify="blobs"), leases=leases)
    assert report.failed and report.damaged == {}
    outcomes = {(f.digest, f.outcome) for f in report.deep.findings}
    assert outcomes == {(b.digest, CheckOutcome.FAILED) for b in img.all_blobs()}
    assert all("strips Content-Length" in f.line() for f in report.deep.findings)
    states = {r["repository"]: r["state"] for r in leases.store.state.repository_states()}
    assert states["app"] != RepositoryState.SYNCED


def test_a_content_fraction_reads_a_slice_per_run_and_every_blob_over_the_rotation(
    primary, secondary, primary_writer, leases
):
    """``content_verify_fraction`` 0.5: each run reads back about half of the present blobs,
    and two successive runs together read every one of them."""

    factory = images.ImageFactory()
    imgs = [factory.make(3) for _ in range(6)]
    for i, img in enumerate(imgs):
        images.push(primary_writer, "app", img, [f"v{i}"])
    every = {b.digest for img in imgs for b in img.all_blobs()}
    read: list[set[str]] = []
    with replicator_through_a_proxy(primary, secondary) as (proxy, source, target):
        assert not run_sync(source, target, SyncOptions(verify="tags"), leases=leases).failed
        for _ in range(2):
            proxy.log.clear()
            report = run_sync(
                source,
                target,
                SyncOptions(verify="content", content_verify_fraction=0.5),
                leases=leases,
            )
            assert not report.failed, report.verification_line()
            read.append(
                {
                    path.rsplit("/", 1)[1]
                    for method, path, status in proxy.log
                    if method == "GET" and "/blobs/sha256:" in path
                }
            )
            assert report.deep.blobs_read == len(read[-1])
    assert read[0] and read[1] and not read[0] & read[1]
    assert read[0] | read[1] == every
    assert all(len(r) < len(every) for r in read)


def test_a_missing_child_manifest_is_copied_again_and_its_blobs_checked(
    primary_writer, secondary, secondary_writer, secondary_reader, replicator, leases
):
    """An index child deleted on the secondary hid its blobs from the walk: once the child is
    copied again, its blobs are walked too, and a layer of it that was also gone comes back."""

    multi = images.ImageFactory().multi_arch()
    images.push(primary_writer, "app", multi, ["multi"])
    assert not run_sync(*replicator, SyncOptions(verify="tags"), leases=leases).failed
    child = multi.children[0]
    layer = child.blobs[-1]
    assert secondary_writer.delete_manifest("app", child.digest)
    secondary.blob_path(layer.digest).unlink()
    report = run_sync(*replicator, SyncOptions(verify="blobs"), leases=leases)
    assert not report.failed, report.verification_line()
    assert {(f.kind, f.digest, f.outcome) for f in report.deep.findings} == {
        ("manifest", child.digest, CheckOutcome.REPAIRED)
    }
    # The repair's plan copied the layer again; the walk after it checked every blob of the
    # image, the copied child's included.
    assert [(r.digest, r.outcome) for r in report.deep.blobs] == [(layer.digest, "copied")]
    assert report.deep.blobs_checked == len({b.digest for b in multi.all_blobs()})
    assert secondary_reader.get_manifest("app", child.digest).raw == child.raw
    pulls_exactly(secondary_reader, "app", multi)


def test_a_repository_already_on_the_secondary_is_verified_at_the_next_run(
    primary, secondary, primary_writer, replicator, tmp_path
):
    """A store that never saw the repository (lost, or a new deployment) while the secondary
    holds it: the first run only finds it in sync, so it is due for a blobs verification at
    the next run, which happens under ``auto``."""
    from registry_replication.engine.leases import Leases
    from registry_replication.store import Store

    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    with Leases(Store(f"sqlite:///{tmp_path / 'old.db'}"), "registry_secondary") as old:
        assert not run_sync(*replicator, leases=old).failed
    with Leases(Store(f"sqlite:///{tmp_path / 'new.db'}"), "registry_secondary") as leases:
        first = run_sync(*replicator, leases=leases)
        assert not first.failed and first.deep is None
        assert [
            (r["repository"], r["verified_level"]) for r in leases.store.state.repository_states()
        ] == [("app", None)]
        second = run_sync(*replicator, leases=leases)
        assert not second.failed and second.deep is not None
        assert second.deep.level == "blobs" and second.deep.blobs_checked > 0
        assert [
            (r["repository"], r["verified_level"]) for r in leases.store.state.repository_states()
        ] == [("app", "blobs")]
