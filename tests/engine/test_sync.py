"""Full replication passes against real registries, checked with skopeo."""

from __future__ import annotations

from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.outcomes import Scope
from replication_harness import corpus, images
from replication_harness.skopeo import skopeo_raw


def test_every_kind_replicates_exactly(
    primary, secondary, primary_writer, replicator, secondary_reader
):
    pushed = corpus.push_every_kind(primary_writer)
    served = primary.served_bytes()
    report = run_sync(*replicator)
    assert not report.failed and not report.plan.skipped
    for (repository, tag), digest in pushed.items():
        assert secondary_reader.head_manifest(repository, tag).digest == digest, (repository, tag)
        assert skopeo_raw(secondary, repository, tag) == skopeo_raw(primary, repository, tag)
    assert report.verification["in_sync"].all()
    counts = report.counts()
    # The shared base layers crossed the network once; other repositories mounted them.
    assert counts["blobs mounted"] >= 2
    # Each blob was read from the primary once, as the primary itself counts what it served.
    unique = {task.digest: task.size for task in report.plan.blobs if task.mount_from is None}
    assert primary.served_bytes() - served == counts["bytes copied"] == sum(unique.values()) > 0
    assert set(report.verification["repository"]) == {r for r, _ in pushed}

    again = run_sync(*replicator)
    assert again.counts() == {"manifests pushed": 0, "bytes copied": 0, "tags pruned": 0}
    assert again.blobs == [] and again.images == []


def test_moved_tag_is_updated_and_deleted_tag_pruned(primary_writer, replicator, secondary_reader):
    factory = images.ImageFactory()
    shared = factory.make()
    images.push(primary_writer, "app", shared, ["keep", "drop"])
    images.push(primary_writer, "app", factory.make(), ["moving", "other"])
    run_sync(*replicator)

    moved = images.push(primary_writer, "app", factory.make(), ["moving"])
    # Untag "drop" on the primary: delete by digest, then restore "keep".
    primary_writer.delete_manifest("app", shared.digest)
    images.push(primary_writer, "app", shared, ["keep"])

    report = run_sync(*replicator)
    assert not report.failed
    assert secondary_reader.head_manifest("app", "moving").digest == moved
    assert secondary_reader.head_manifest("app", "drop") is None
    assert secondary_reader.head_manifest("app", "keep").digest == shared.digest
    assert sorted(secondary_reader.tags("app")) == ["keep", "moving", "other"]
    # Only "drop" was touched: "keep", on the same digest, was never untagged.
    assert [(r.tag, r.outcome) for r in report.pruned] == [("drop", "deleted")]
    assert report.verification["in_sync"].all()


def test_dry_run_changes_nothing(primary_writer, replicator, secondary_reader):
    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    report = run_sync(*replicator, SyncOptions(dry_run=True))
    assert len(report.plan.images) == 1 and report.blobs == [] and report.images == []
    assert list(secondary_reader.catalog()) == []


def test_scope_filters_repositories_and_tags(primary_writer, replicator, secondary_reader):
    factory = images.ImageFactory()
    for repository in ("team/a", "team/b", "other/c"):
        images.push(primary_writer, repository, factory.make(), ["1.0", "dev"])
    scope = Scope.of(include=["team/*"], exclude=["team/b"], tags=r"\d+\.\d+")
    report = run_sync(*replicator, SyncOptions(scope=scope))
    assert not report.failed
    assert list(secondary_reader.catalog()) == ["team/a"]
    assert secondary_reader.tags("team/a") == ["1.0"]


def test_prune_refuses_when_the_primary_cannot_be_listed(
    primary, primary_writer, replicator, secondary_reader
):
    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    run_sync(*replicator)
    primary.stop()  # unreachable primary: its snapshot is empty and incomplete
    source, target = replicator
    source.config.max_retries = 0
    report = run_sync(source, target)
    assert report.prune_refused and "incomplete" in report.prune_refused
    assert report.failed
    assert secondary_reader.tags("app") == ["v1"]


def test_prune_refuses_a_mass_deletion_unless_forced(primary_writer, replicator, secondary_reader):
    factory = images.ImageFactory()
    imgs = [factory.make() for _ in range(3)]
    for i, img in enumerate(imgs):
        images.push(primary_writer, "app", img, [f"v{i}"])
    run_sync(*replicator)
    for img in imgs[:2]:
        primary_writer.delete_manifest("app", img.digest)

    report = run_sync(*replicator)
    assert "2 of the secondary's 3 tags (67%)" in report.prune_refused
    assert "force_prune" in report.prune_refused
    assert sorted(secondary_reader.tags("app")) == ["v0", "v1", "v2"]

    preview = run_sync(*replicator, SyncOptions(force_prune=True, dry_run=True))
    assert sorted(r.tag for r in preview.pruned) == ["v0", "v1"]
    assert {r.outcome for r in preview.pruned} == {"would delete"}
    assert sorted(secondary_reader.tags("app")) == ["v0", "v1", "v2"]

    forced = run_sync(*replicator, SyncOptions(force_prune=True))
    assert forced.prune_refused is None
    assert secondary_reader.tags("app") == ["v2"]


def test_corrupt_blob_fails_that_blob_and_blocks_its_manifest(
    primary, primary_writer, replicator, secondary_reader
):
    factory = images.ImageFactory()
    good = factory.make()
    bad = factory.make()
    images.push(primary_writer, "app", good, ["good"])
    images.push(primary_writer, "app", bad, ["bad"])
    rotten = bad.blobs[-1]
    primary.blob_path(rotten.digest).write_bytes(b"\0" * rotten.size)

    report = run_sync(*replicator)
    failed = [r for r in report.blobs if r.outcome == "failed"]
    assert [(r.repository, r.digest) for r in failed] == [("app", rotten.digest)]
    assert "app@" + rotten.digest in failed[0].error and "DIGEST_INVALID" in failed[0].error
    blocked = [r for r in report.images if r.outcome == "blocked"]
    assert [r.tags for r in blocked] == [["bad"]] and rotten.digest in blocked[0].error
    assert secondary_reader.head_manifest("app", "bad") is None
    assert secondary_reader.head_manifest("app", "good").digest == good.digest
    assert report.failed
