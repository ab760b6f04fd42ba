"""Blob and manifest copies: resumable chunked uploads, mounts, records and log lines."""

from __future__ import annotations

import hashlib
import logging

import pytest

from registry_replication.engine.copy import Copier
from registry_replication.engine.plan import BlobTask, ImageTask
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from replication_harness import images
from replication_harness.servers import Fault, FaultProxy

MiB = 1 << 20
RETRIES = 3  # max_retries of both clients in the interrupted-copy tests

# The primary's answer to a blob GET: 503, the connection cut without an answer, or cut past
# the first MiB of the body (the client reads 1 MiB pieces: one reaches the upload first).
BLOB_GET_FAULTS = {
    "503": lambda digest: Fault(status=503, method="GET", path_contains=f"/blobs/{digest}"),
    "cut": lambda digest: Fault(cut=True, method="GET", path_contains=f"/blobs/{digest}"),
    "cut mid-body": lambda digest: Fault(
        cut_after_bytes=MiB + 1024, method="GET", path_contains=f"/blobs/{digest}"
    ),
}
FAULT_OUTCOME = {"503": 503, "cut": "cut", "cut mid-body": "cut mid-body"}
FAULT_MESSAGE = {
    "503": "HTTP 503",
    "cut": "no answer from the registry (ProtocolError)",
    "cut mid-body": "no answer from the registry (ProtocolError)",
}


def patient(registry, proxy: FaultProxy | None = None, *, writable: bool = False) -> RegistryClient:
    """A client with ``RETRIES`` retries and fast backoff, optionally through a fault proxy."""
    connection = registry.connection(max_retries=RETRIES, backoff_seconds=0.01)
    if proxy is not None:
        connection["host"] = proxy.url
    return RegistryClient(RegistryConfig.from_connection(connection), writable=writable)


def blob_gets(proxy: FaultProxy, digest: str) -> list[int | str]:
    """The outcomes of the blob's GETs that reached the proxy, in order."""
    return [outcome for method, path, outcome in proxy.log if method == "GET" and digest in path]


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]


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
        status_checks = [
            path for method, path, _ in proxy.log if method == "GET" and "uploads" in path
        ]
    assert result.outcome == "copied", result.error
    assert patches == [202, "cut", 202, 202]  # the last piece goes up with the PUT
    assert len(status_checks) == 1
    # Only the lost chunk was read twice; nothing started over.
    assert primary_reader.bytes_read == result.bytes == layer.size + MiB
    assert b"".join(secondary_reader.read_blob("app", layer.digest)) == layer.data
    assert any(
        f"resuming at byte {MiB}, the registry's offset" in r.getMessage() for r in caplog.records
    )
    assert (
        leases.store.state.all_leases() == []
    )  # the session was recorded while open, then forgotten


def test_rerun_skips_blobs_already_there_and_mounts_shared_ones(
    primary_writer, primary_reader, secondary_writer, leases, caplog
):
    layer = images.random_layer(64 * 1024)
    primary_writer.push_blob("a", layer.digest, layer.data, layer.size)
    task = BlobTask(layer.digest, layer.size, source="a", target="a", mounts=["b", "c/d"])
    copier = Copier(primary_reader, secondary_writer, leases=leases)
    with caplog.at_level(logging.INFO, logger="registry_replication.engine.copy"):
        first = copier.copy_blob(task)
    assert [(r.repository, r.outcome) for r in first] == [
        ("a", "copied"),
        ("b", "mounted"),
        ("c/d", "mounted"),
    ]
    assert primary_reader.bytes_read == layer.size
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"blob copied  a@{layer.digest} 64.0 KiB") for line in lines)
    again = copier.copy_blob(task)
    assert [r.outcome for r in again] == ["skipped"] * 3
    assert primary_reader.bytes_read == layer.size


def test_failed_blob_is_recorded_with_status_code_and_advice(
    primary_reader, secondary_writer, leases
):
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
    task = ImageTask(
        "app", multi.digest, multi.media_type, ["multi", "also"], [c.digest for c in multi.children]
    )
    copier = Copier(primary_reader, secondary_writer, leases=leases)
    (result,) = copier.push_images([task])
    assert (result.outcome, result.manifests_pushed) == ("pushed", 4)
    assert secondary_writer.get_manifest("app", "also").raw == multi.raw
    (again,) = copier.push_images([task])
    assert (again.outcome, again.manifests_pushed) == ("skipped", 0)


# A primary failing for good, as a repeating cycle of answers to the blob's GETs. The last: a
# GET that fails until its last retry, then a download cut mid-stream (which a read retrying on
# its own would absorb, then hand the cut to the copy's retry: attempts multiplied).
PERSISTENT = {
    "503": ["503"],
    "cut": ["cut"],
    "503s then a cut mid-body": ["503"] * RETRIES + ["cut mid-body"],
}


@pytest.mark.parametrize("pattern", PERSISTENT)
def test_a_blob_the_primary_keeps_failing_is_tried_max_retries_plus_one_times(
    pattern, primary, secondary, primary_writer, secondary_reader, leases, caplog
):
    """One policy owns the copy: the primary's read inside the upload gets no retries of its
    own, so the attempts at the primary are the copy's, not the copy's times the read's."""
    layer = images.random_layer(3 * MiB // 2)
    primary_writer.push_blob("app", layer.digest, layer.data, layer.size)
    cycle = PERSISTENT[pattern]
    faults = [cycle[i % len(cycle)] for i in range(10 * (RETRIES + 1))]
    with (
        FaultProxy(primary.url) as proxy,
        patient(primary, proxy) as source,
        patient(secondary, writable=True) as target,
    ):
        proxy.inject(*[BLOB_GET_FAULTS[kind](layer.digest) for kind in faults])
        with caplog.at_level(logging.WARNING):
            (result,) = Copier(source, target, leases=leases).copy_blob(
                BlobTask(layer.digest, layer.size, "app", "app")
            )
        gets = blob_gets(proxy, layer.digest)
    print(f"{pattern}: {len(gets)} GETs of the blob at the primary (max_retries={RETRIES}): {gets}")
    attempts = faults[: RETRIES + 1]
    assert gets == [FAULT_OUTCOME[kind] for kind in attempts]
    assert result.outcome == "failed"
    assert result.error.startswith(
        f"get blob app@{layer.digest} on {proxy.url}: {FAULT_MESSAGE[attempts[-1]]}"
    ), result.error
    assert result.status == (503 if attempts[-1] == "503" else None)
    assert secondary_reader.blob_size("app", layer.digest) is None
    lines = retry_lines(caplog)
    assert len(lines) == RETRIES, lines
    for attempt, (kind, line) in enumerate(zip(attempts, lines), 1):
        assert line.startswith(
            f"upload of app@{layer.digest} to {secondary.url} interrupted: "
            f"get blob app@{layer.digest} on {proxy.url}: "
            f"{FAULT_MESSAGE[kind]}"
        ), line
        assert f"; retry {attempt} of {RETRIES} in " in line, line


@pytest.mark.parametrize(
    ("fault", "failures"),
    [("503", 1), ("cut", 1), ("503", RETRIES), ("cut", RETRIES), ("cut mid-body", RETRIES)],
)
def test_a_blob_the_primary_fails_k_times_arrives_intact_on_attempt_k_plus_one(
    fault, failures, primary, secondary, primary_writer, secondary_reader, leases, caplog
):
    layer = images.random_layer(3 * MiB // 2 + 7)
    primary_writer.push_blob("app", layer.digest, layer.data, layer.size)
    with (
        FaultProxy(primary.url) as proxy,
        patient(primary, proxy) as source,
        patient(secondary, writable=True) as target,
    ):
        proxy.inject(*[BLOB_GET_FAULTS[fault](layer.digest) for _ in range(failures)])
        with caplog.at_level(logging.WARNING):
            (result,) = Copier(source, target, leases=leases).copy_blob(
                BlobTask(layer.digest, layer.size, "app", "app")
            )
        gets = blob_gets(proxy, layer.digest)
    assert result.outcome == "copied", result.error
    assert gets == [FAULT_OUTCOME[fault]] * failures + [200]
    assert len(retry_lines(caplog)) == failures
    copied = b"".join(secondary_reader.read_blob("app", layer.digest))
    assert copied == layer.data
    assert "sha256:" + hashlib.sha256(copied).hexdigest() == layer.digest


@pytest.mark.parametrize(
    ("secondary_failures", "primary_failures", "outcome"),
    [(1, RETRIES - 1, "copied"), (2, RETRIES - 1, "failed")],
)
def test_primary_and_secondary_failures_spend_one_budget(
    secondary_failures,
    primary_failures,
    outcome,
    primary,
    secondary,
    primary_writer,
    secondary_reader,
    leases,
    caplog,
):
    """Failures on either side count against the same ``max_retries``: the upload's
    ``POST`` fails first, then the primary's read inside the ``PUT``."""
    layer = images.random_layer(64 * 1024)
    primary_writer.push_blob("app", layer.digest, layer.data, layer.size)
    with (
        FaultProxy(primary.url) as reading,
        FaultProxy(secondary.url) as writing,
        patient(primary, reading) as source,
        patient(secondary, writing, writable=True) as target,
    ):
        writing.inject(
            *[
                Fault(status=503, method="POST", path_contains="/blobs/uploads/")
                for _ in range(secondary_failures)
            ]
        )
        reading.inject(*[BLOB_GET_FAULTS["503"](layer.digest) for _ in range(primary_failures)])
        with caplog.at_level(logging.WARNING):
            (result,) = Copier(source, target, leases=leases).copy_blob(
                BlobTask(layer.digest, layer.size, "app", "app")
            )
        gets = blob_gets(reading, layer.digest)
        posts = [o for method, _, o in writing.log if method == "POST"]
    assert result.outcome == outcome, result.error
    assert posts[: secondary_failures + 1] == [503] * secondary_failures + [202]
    lines = retry_lines(caplog)
    if outcome == "copied":
        assert gets == [503] * primary_failures + [200]
        assert len(lines) == secondary_failures + primary_failures
        assert b"".join(secondary_reader.read_blob("app", layer.digest)) == layer.data
    else:  # the budget ran out on the primary's last failure
        assert gets == [503] * (RETRIES + 1 - secondary_failures)
        assert len(lines) == RETRIES
        assert f"app@{layer.digest}" in result.error and "HTTP 503" in result.error
        assert secondary_reader.blob_size("app", layer.digest) is None
