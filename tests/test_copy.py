"""Blob and manifest copies: resumable chunked uploads, mounts, records and log lines."""

from __future__ import annotations

import logging

from registry_replication.client import RegistryClient
from registry_replication.config import RegistryConfig
from registry_replication.copy import Copier
from replication_harness import images
from replication_harness.servers import Fault, FaultProxy
from registry_replication.plan import BlobTask, ImageTask

MiB = 1 << 20


def test_interrupted_chunked_upload_resumes_from_registry_offset(
    secondary, primary_writer, primary_reader, secondary_reader, leases, caplog
):
    layer = images.random_layer(3 * MiB + 4321)
    primary_writer.push_blob("app", layer.digest, layer.data, layer.size)
    with FaultProxy(secondary.url) as proxy:
        config = RegistryConfig.from_connection({**secondary.connection(), "host": proxy.url})
        with RegistryClient(config, writable=True) as target:
            copier = Copier(primary_reader, target, leases=leases, chunk_size=MiB)
            proxy.inject(Fault(cut=True, method="PATCH", after=1))  # the second chunk is lost
            with caplog.at_level(logging.WARNING):
                (result,) = copier.copy_blob(BlobTask(layer.digest, layer.size, "app", "app"))
        patches = [status for method, _, status in proxy.log if method == "PATCH"]
        status_checks = [path for method, path, _ in proxy.log if method == "GET" and "uploads" in path]
    assert result.outcome == "copied", result.error
    assert patches == [202, "cut", 202, 202]  # the last piece goes up with the PUT
    assert len(status_checks) == 1
    # Only the lost chunk was read twice; nothing started over.
    assert primary_reader.bytes_read == result.bytes == layer.size + MiB
    assert b"".join(secondary_reader.read_blob("app", layer.digest)) == layer.data
    assert any(f"resuming at byte {MiB}, the registry's offset" in r.getMessage()
               for r in caplog.records)
    assert leases.store.state.all_leases() == []  # the session was recorded while open, then forgotten


def test_rerun_skips_blobs_already_there_and_mounts_shared_ones(
    primary_writer, primary_reader, secondary_writer, leases, caplog
):
    layer = images.random_layer(64 * 1024)
    primary_writer.push_blob("a", layer.digest, layer.data, layer.size)
    task = BlobTask(layer.digest, layer.size, source="a", target="a", mounts=["b", "c/d"])
    copier = Copier(primary_reader, secondary_writer, leases=leases)
    with caplog.at_level(logging.INFO, logger="registry_replication.copy"):
        first = copier.copy_blob(task)
    assert [(r.repository, r.outcome) for r in first] == [("a", "copied"), ("b", "mounted"),
                                                         ("c/d", "mounted")]
    assert primary_reader.bytes_read == layer.size
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"blob copied  a@{layer.digest} 64.0 KiB") for line in lines)
    again = copier.copy_blob(task)
    assert [r.outcome for r in again] == ["skipped"] * 3
    assert primary_reader.bytes_read == layer.size


def test_failed_blob_is_recorded_with_status_code_and_advice(primary_reader, secondary_writer,
                                                             leases):
    missing = images.random_layer(100)
    (result,) = Copier(primary_reader, secondary_writer, leases=leases).copy_blob(
        BlobTask(missing.digest, missing.size, "app", "app")
    )
    assert result.outcome == "failed"
    assert (result.status, result.code) == (404, "BLOB_UNKNOWN")
    assert f"app@{missing.digest}" in result.error and "re-pushed" in result.error
    assert result.log_line().startswith(f"blob failed  app@{missing.digest}")


def test_index_children_go_first_and_existing_tags_are_not_repushed(
    primary_writer, primary_reader, secondary_writer, leases
):
    multi = images.ImageFactory().multi_arch()
    images.push(primary_writer, "app", multi, ["multi", "also"])
    for blob in multi.all_blobs():
        secondary_writer.push_blob("app", blob.digest, blob.data, blob.size)
    task = ImageTask("app", multi.digest, multi.media_type, ["multi", "also"],
                     [c.digest for c in multi.children])
    copier = Copier(primary_reader, secondary_writer, leases=leases)
    result = copier.push_image(task)
    assert (result.outcome, result.manifests_pushed) == ("pushed", 4)
    assert secondary_writer.get_manifest("app", "also").raw == multi.raw
    again = copier.push_image(task)
    assert (again.outcome, again.manifests_pushed) == ("skipped", 0)
