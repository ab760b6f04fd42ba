"""Planning: shared blobs cross the network once, batches balance bytes, XCom-sized JSON."""

from __future__ import annotations

import json

from registry_replication.engine import diff
from registry_replication.engine.plan import BlobTask, Plan, WantedTag, batch_label, build_plan
from registry_replication.engine.snapshot import take_snapshot
from registry_replication.transport.reference import Digest, Repository, Tag
from replication_harness import images


def test_shared_blobs_are_transferred_once_and_mounted_elsewhere(
    primary_writer, primary_reader, secondary_writer
):
    factory = images.ImageFactory(layer_size=10_000)
    for repository in ("a", "b", "c"):
        images.push(primary_writer, repository, factory.make(), ["v1"])
    # The secondary already has the base layers in "c" (an earlier partial sync).
    for blob in factory.base:
        secondary_writer.push_blob("c", blob.digest, blob.data, blob.size)
    differences = diff.diff(take_snapshot(primary_reader), take_snapshot(secondary_writer))
    plan = build_plan(primary_reader, secondary_writer, diff.wanted(differences))

    by_digest = {task.digest: task for task in plan.blobs}
    for base in factory.base:
        task = by_digest[base.digest]
        assert task.mount_from == "c" and sorted(task.repositories) == ["a", "b"]
    unique = [t for t in plan.blobs if t.digest not in {b.digest for b in factory.base}]
    assert all(t.mount_from is None and t.mounts == [] for t in unique)
    # Three configs and three top layers: only those bytes cross the network.
    assert plan.transfer_bytes == sum(t.size for t in unique)
    assert sorted(i.repository for i in plan.images) == ["a", "b", "c"]
    # Typed once: the diff's rows for the plan, and each digest the manifests list, one object
    # per digest however many images share it.
    wanted = diff.wanted(differences)
    assert {(type(w.repository), type(w.tag), type(w.digest)) for w in wanted} == {
        (Repository, Tag, Digest)
    }
    listed = [d for image in plan.images for d in image.blobs]
    assert {type(d) for d in listed} == {Digest}
    for base in factory.base:
        assert len({id(d) for d in listed if d == base.digest}) == 1

    # The CLI prints the plan as JSON: digests and names, never the manifests it read.
    printed = json.loads(json.dumps(plan.to_dict()))
    assert sorted(printed) == ["blobs", "images", "skipped"] and len(printed["blobs"]) == len(
        plan.blobs
    )


def test_blob_batches_balance_bytes_and_stay_below_the_map_limit():
    sizes = [900, 500, 400, 300, 300, 200, 100, 100] * 3
    plan = Plan(
        blobs=[BlobTask(f"sha256:{i:064x}", s << 20, "r", "r") for i, s in enumerate(sizes)]
    )
    batches = plan.blob_batches(batch_bytes=1 << 30)
    loads = [sum(t.size for t in b) for b in batches]
    assert len(batches) == 9  # 8400 MiB in 1 GiB batches, rounded up
    assert max(loads) - min(loads) <= 900 << 20
    assert sorted(t.digest for b in batches for t in b) == sorted(t.digest for t in plan.blobs)
    assert batch_label(batches[0], 0, 9).startswith("blobs 1/9 (")
    many = Plan(blobs=[BlobTask(f"sha256:{i:064x}", 1 << 30, "r", "r") for i in range(5000)])
    assert len(many.blob_batches()) == 256


def test_blob_batches_hold_a_bounded_number_of_blobs_at_any_size():
    # One large blob and many small ones: the small ones still spread, at most 1000 a batch.
    sizes = [1 << 30] + [1024] * 4999
    plan = Plan(blobs=[BlobTask(f"sha256:{i:064x}", s, "r", "r") for i, s in enumerate(sizes)])
    batches = plan.blob_batches(batch_bytes=1 << 30, max_blobs=1000)
    assert len(batches) == 5 and max(map(len, batches)) <= 1000
    assert sorted(t.digest for b in batches for t in b) == sorted(t.digest for t in plan.blobs)
    # 300,000 blobs: the fan-out cap wins (Airflow's max_map_length), batches grow instead.
    huge = Plan(blobs=[BlobTask(f"sha256:{i:064x}", 1024, "r", "r") for i in range(300_000)])
    batches = huge.blob_batches(max_blobs=1000)
    assert len(batches) == 256 and max(map(len, batches)) == 1172
    assert sum(map(len, batches)) == 300_000


def test_image_batches_cap_the_fan_out():
    plan = Plan()
    plan.images = [images_task(i) for i in range(100_000)]
    batches = plan.image_batches(batch_size=100)
    assert len(batches) <= 256 and sum(map(len, batches)) == 100_000
    # By default, a task pushes at least 1,000 images: few, large tasks push fastest.
    assert [len(b) for b in plan.image_batches()] == [1000] * 100


def images_task(i: int):
    from registry_replication.engine.plan import ImageTask

    return ImageTask(f"r{i % 50}", f"sha256:{i:064x}", "m", [f"t{i}"])


def test_schema1_manifest_is_skipped_as_unsupported(primary_reader, secondary_writer):
    """distribution 2.8 refuses new schema 1 pushes, so this plans from a served-looking one."""
    from registry_replication.transport import mediatypes as mt
    from registry_replication.transport.client import Manifest

    raw = json.dumps({"schemaVersion": 1, "name": "old/app", "tag": "v1", "fsLayers": []}).encode()
    digest = "sha256:" + __import__("hashlib").sha256(raw).hexdigest()

    class ServesSchema1:
        url = primary_reader.url
        config = primary_reader.config

        def get_manifest(self, repository, reference):
            return Manifest(raw, mt.DOCKER_SCHEMA1_SIGNED, digest)

    plan = build_plan(ServesSchema1(), secondary_writer, [WantedTag("old/app", "v1", digest)])
    assert plan.images == [] and plan.blobs == []
    (skipped,) = plan.skipped
    assert (skipped.repository, skipped.tags, skipped.digest) == ("old/app", ["v1"], digest)
    assert "schema 1" in skipped.reason and "rebuild" in skipped.reason
