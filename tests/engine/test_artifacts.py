"""Run artifacts as Parquet: snapshots, differences and plan batches survive the round trip."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import pandas as pd
import pytest

from registry_replication.engine import artifacts
from registry_replication.engine.copy import Copier
from registry_replication.engine.plan import BlobTask, ImageTask, WantedTag, build_plan
from registry_replication.engine.snapshot import COLUMNS
from registry_replication.outcomes import Snapshot
from registry_replication.transport.client import Manifest
from replication_harness import images


def test_a_snapshot_with_errors_and_problems_round_trips(tmp_path):
    tags = pd.DataFrame(
        [
            ["group/app", "v1", "sha256:" + "a" * 64, "application/vnd.oci.image.manifest.v1+json"],
            ["group/app", "v2", "sha256:" + "b" * 64, "application/vnd.oci.image.index.v1+json"],
        ],
        columns=COLUMNS,
    )
    problems = [{"repository": "odd/repo", "tag": None, "reason": "HTTP 500", "advice": "retry"}]
    snap = Snapshot("https://primary", tags, ["catalog cut short"], problems)
    folder = tmp_path / "run"
    ref = artifacts.write_snapshot(folder, "snapshot_primary", snap)
    assert ref == {
        "name": "snapshot_primary",
        "tags": 2,
        "errors": 1,
        "problems": 1,
        "bytes": ref["bytes"],
    }
    assert ref["bytes"] == sum(p.stat().st_size for p in folder.iterdir()) > 0
    back = artifacts.read_snapshot(folder, "snapshot_primary")
    assert back.registry == "https://primary"
    assert back.tags.astype(object).values.tolist() == tags.values.tolist()
    assert back.errors == ["catalog cut short"] and back.problems == problems


def test_an_empty_snapshot_round_trips_with_its_columns(tmp_path):
    empty = Snapshot("https://secondary", pd.DataFrame(columns=COLUMNS))
    artifacts.write_snapshot(tmp_path, "s", empty)
    back = artifacts.read_snapshot(tmp_path, "s")
    assert list(back.tags.columns) == COLUMNS and back.tags.empty and back.complete


def test_plan_batches_round_trip_with_lists_and_nulls(tmp_path):
    blobs = [
        BlobTask("sha256:" + "c" * 64, 12, "a", "b", ["c", "d"], None),
        BlobTask("sha256:" + "d" * 64, 0, "a", "b", [], "e"),
    ]
    images = [
        ImageTask(
            "a",
            "sha256:" + "e" * 64,
            "application/vnd.oci.image.index.v1+json",
            ["v1", "latest"],
            ["sha256:" + "f" * 64],
            ["sha256:" + "c" * 64],
        )
    ]
    artifacts.write_records(tmp_path / "blobs.parquet", [asdict(b) for b in blobs])
    artifacts.write_records(tmp_path / "images.parquet", [asdict(i) for i in images])
    assert [BlobTask(**r) for r in artifacts.read_records(tmp_path / "blobs.parquet")] == blobs
    assert [ImageTask(**r) for r in artifacts.read_records(tmp_path / "images.parquet")] == images


def test_a_streamed_snapshot_is_written_batch_by_batch_and_diffs(tmp_path):
    from registry_replication.engine import diff as diffs
    from registry_replication.engine.snapshot import Listing

    rows = [
        (
            "group/app",
            f"v{i}",
            "sha256:" + f"{i:064x}",
            "application/vnd.oci.image.manifest.v1+json",
        )
        for i in range(5)
    ]
    with artifacts.SnapshotWriter(tmp_path, "streamed") as writer:
        writer.write(rows[:2])
        writer.write([])
        writer.write(rows[2:])
        ref = writer.finish(Listing("https://primary", len(rows)))
    assert ref["tags"] == 5 and ref["bytes"] > 0
    with artifacts.SnapshotWriter(tmp_path, "nothing") as writer:
        writer.finish(Listing("https://secondary"))
    primary = artifacts.read_snapshot(tmp_path, "streamed")
    assert primary.tags.astype(object).values.tolist() == [list(r) for r in rows]
    # An empty side still diffs: every primary tag is missing there.
    differences = diffs.diff(primary, artifacts.read_snapshot(tmp_path, "nothing"))
    assert (differences["status"] == diffs.MISSING).sum() == 5


def test_manifests_round_trip_byte_for_byte(tmp_path):
    from registry_replication.transport.client import Manifest

    raw = b'{\n   "schemaVersion": 2\n}'
    manifest = Manifest(
        raw,
        "application/vnd.oci.image.manifest.v1+json",
        "sha256:" + hashlib.sha256(raw).hexdigest(),
    )
    artifacts.write_manifests(tmp_path / "m.parquet", [("group/app", manifest)])
    assert artifacts.read_manifests(tmp_path / "m.parquet") == {
        ("group/app", manifest.digest): manifest
    }
    assert artifacts.read_manifests(tmp_path / "none.parquet") == {}


def test_a_snapshot_keeps_the_manifests_it_read_batch_by_batch(tmp_path):
    """What the listing read whole is written beside its rows as each batch ends, and the
    buffer let go: the plan task reads them all back, each checked against its digest."""
    from registry_replication.engine.snapshot import Listing
    from registry_replication.transport.client import Manifest

    def manifest(i: int) -> Manifest:
        raw = b'{"schemaVersion": 2, "n": %d}' % i
        return Manifest(
            raw,
            "application/vnd.oci.image.manifest.v1+json",
            "sha256:" + hashlib.sha256(raw).hexdigest(),
        )

    kept = [("group/app", manifest(i)) for i in range(5)]
    with artifacts.SnapshotWriter(tmp_path, "snapshot_primary", keep_manifests=True) as writer:
        for batch in (kept[:2], [], kept[2:]):
            writer.manifests.update({(r, m.digest): m for r, m in batch})
            writer.write([(r, f"v{i}", m.digest, m.media_type) for i, (r, m) in enumerate(batch)])
            assert writer.manifests == {}
        ref = writer.finish(Listing("https://primary", 5))
    assert ref["manifests"] == "snapshot_primary.manifests.parquet" and ref["manifests_read"] == 5
    assert artifacts.read_manifests(tmp_path / ref["manifests"]) == {
        (r, m.digest): m for r, m in kept
    }


def test_a_registry_is_listed_batch_by_batch_into_storage(primary_writer, primary_reader, tmp_path):
    """Each batch of repositories' rows is written as it is listed; the file holds them all."""
    from registry_replication.engine.snapshot import stream_snapshot, take_snapshot
    from replication_harness import images as synthetic

    factory = synthetic.ImageFactory(layer_size=1024)
    for i in range(5):
        synthetic.push(primary_writer, f"group/app{i}", factory.make(), ["v1", "v2"])
    batches: list[int] = []
    with artifacts.SnapshotWriter(tmp_path, "snapshot_primary") as writer:

        def sink(rows):
            batches.append(len(rows))
            writer.write(rows)

        listing = stream_snapshot(primary_reader, sink, batch=2)
        ref = writer.finish(listing)
    assert batches == [4, 4, 2] and ref["tags"] == listing.tags == 10
    streamed = artifacts.read_snapshot(tmp_path, "snapshot_primary").tags
    in_memory = take_snapshot(primary_reader).tags
    key = ["repository", "tag"]
    assert (
        streamed.sort_values(key).astype(object).values.tolist()
        == in_memory.sort_values(key).astype(object).values.tolist()
    )


def test_a_manifest_swapped_in_the_run_folder_is_never_what_gets_tagged(
    primary_writer, primary_reader, secondary_writer, secondary_reader, leases, tmp_path, caplog
):
    """The run's folder may be a shared bucket: bytes saved under a digest are hashed before
    they are pushed, and a swapped manifest is read again from the primary instead."""
    factory = images.ImageFactory()
    wanted, planted = factory.make(), factory.make()
    images.push(primary_writer, "app", wanted, ["v1"])
    images.push(secondary_writer, "app", planted)  # its blobs are there: the PUT would succeed
    plan = build_plan(primary_reader, secondary_writer, [WantedTag("app", "v1", wanted.digest)])
    saved = tmp_path / "images-00000.manifests.parquet"
    artifacts.write_manifests(
        saved, [("app", Manifest(planted.raw, planted.media_type, wanted.digest))]
    )
    copier = Copier(
        primary_reader,
        secondary_writer,
        leases=leases,
        recheck=False,
        manifests=artifacts.read_manifests(saved),
    )
    copier.copy_blobs(plan.blobs)
    (result,) = copier.push_images(plan.images, set())
    assert result.outcome == "pushed", result.error
    assert secondary_reader.get_manifest("app", "v1").raw == wanted.raw
    (warning,) = [r.getMessage() for r in caplog.records if "saved manifest" in r.getMessage()]
    assert f"app@{wanted.digest} hashes to {planted.digest}" in warning


@pytest.mark.parametrize("kind", ["path", "object storage file://"])
def test_run_folders_and_their_files_are_readable_only_by_their_owner(tmp_path, kind):
    """0700 folders, 0600 files on a local filesystem: a run's artifacts hold repository
    names, digests and the registries' error texts. The tasks pass ``file://`` storage paths."""
    base = tmp_path / "artifacts"
    if kind == "path":
        folder = base / "registry_reconcile" / "20261128T060000_manual"
    else:
        from airflow.sdk import ObjectStoragePath

        folder = (
            ObjectStoragePath(f"file://{base}") / "registry_reconcile" / "20261128T060000_manual"
        )
    artifacts.write_snapshot(
        folder, "snapshot_primary", Snapshot("https://primary", pd.DataFrame(columns=COLUMNS))
    )
    artifacts.write_records(folder / "images-00000.parquet", [{"repository": "a"}])
    artifacts.write_json_lines(folder / "pruned.jsonl", [{"repository": "a"}])
    artifacts.write_manifests(folder / "images-00000.manifests.parquet", [])
    run = base / "registry_reconcile" / "20261128T060000_manual"
    assert {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()} == dict.fromkeys(
        [
            "snapshot_primary.parquet",
            "snapshot_primary.json",
            "images-00000.parquet",
            "pruned.jsonl",
            "images-00000.manifests.parquet",
        ],
        0o600,
    )
    assert [p.stat().st_mode & 0o777 for p in (run, run.parent, base)] == [0o700] * 3
