"""The registry client against real distribution 2.8 registries (and a loopback fault proxy)."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import (
    DigestMismatchError,
    NotFoundError,
    RegistryUnavailableError,
)
from registry_replication.transport.reference import InvalidReference
from replication_harness import images
from replication_harness.registry import LocalRegistry
from replication_harness.servers import Fault, FaultProxy

MiB = 1 << 20


@contextmanager
def writer_through_proxy(
    secondary: LocalRegistry, **options: object
) -> Iterator[tuple[FaultProxy, RegistryClient]]:
    """A writable client of the secondary (its connection with ``options``) whose requests
    pass a fault proxy."""
    with FaultProxy(secondary.url) as proxy:
        connection = {**secondary.connection(**options), "host": proxy.url}
        with RegistryClient(RegistryConfig.from_connection(connection), writable=True) as target:
            yield proxy, target


def upload_in_chunks(target: RegistryClient, layer: images.Blob, source: RegistryClient) -> None:
    """Upload the layer to the target in chunks of a MiB, read from the source at each offset
    the upload asks for."""
    target.upload_blob(
        "app",
        layer.digest,
        layer.size,
        lambda offset: source.read_blob("app", layer.digest, offset=offset),
        chunk_size=MiB,
    )


def upload_calls(proxy: FaultProxy) -> list[tuple[str, object]]:
    """The upload session's requests that went through the proxy, with what came of each."""
    return [(method, outcome) for method, path, outcome in proxy.log if "uploads" in path]


def assert_holds(secondary: LocalRegistry, layer: images.Blob) -> None:
    """The secondary serves the layer's bytes, read back by a client of its own."""
    with RegistryClient(secondary.client_config()) as reader:
        assert b"".join(reader.read_blob("app", layer.digest)) == layer.data


def test_manifests_of_every_type_round_trip_byte_for_byte(primary_writer, primary_reader):
    factory = images.ImageFactory()
    docker = images.ImageFactory(docker=True)
    cases = {
        "oci": factory.make(),
        "docker": docker.make(),
        "oci-index": factory.multi_arch(),
        "docker-list": docker.multi_arch(("amd64", "arm64", "s390x")),
    }
    for tag, img in cases.items():
        images.push(primary_writer, "group/sub/app", img, [tag])
    for tag, img in cases.items():
        head = primary_reader.head_manifest("group/sub/app", tag)
        assert head.digest == img.digest and head.media_type == img.media_type
        assert head.size == len(img.raw)
        manifest = primary_reader.get_manifest("group/sub/app", tag)
        assert manifest.raw == img.raw and manifest.digest == img.digest
    listed = primary_reader.get_manifest("group/sub/app", cases["docker-list"].digest)
    assert listed.media_type == mt.DOCKER_MANIFEST_LIST
    assert primary_reader.head_manifest("group/sub/app", "nope") is None


def test_put_manifest_preserves_digest_and_delete_untags(primary_writer, primary_reader):
    img = images.ImageFactory().make()
    images.push(primary_writer, "app", img, ["a", "b"])
    assert sorted(primary_reader.tags("app")) == ["a", "b"]
    assert primary_writer.delete_manifest("app", img.digest) is True
    assert primary_reader.tags("app") == []  # deleting by digest untags every tag on it
    assert primary_writer.delete_manifest("app", img.digest) is False


def test_invalid_names_are_rejected_before_any_request(primary_reader):
    for bad in ("../etc", "UPPER", "a//b", "a?b=1", "-lead", "a" * 256):
        with pytest.raises(InvalidReference):
            primary_reader.tags(bad)
    with pytest.raises(InvalidReference):
        primary_reader.head_manifest("app", "bad tag")
    with pytest.raises(InvalidReference):
        primary_reader.head_manifest("app", ".hidden")
    with pytest.raises(InvalidReference):
        primary_reader.blob_size("app", "sha256:abc")
    assert primary_reader.head_manifest("app", "v1.2_3-rc") is None


def test_unknown_blob_and_repository_errors_name_them(primary_reader):
    digest = "sha256:" + "a" * 64
    assert primary_reader.blob_size("group/app", digest) is None
    with pytest.raises(NotFoundError) as missing:
        b"".join(primary_reader.read_blob("group/app", digest))
    error = missing.value
    assert (error.status, error.code) == (404, "BLOB_UNKNOWN")
    assert f"group/app@{digest}" in str(error) and "What to do" in str(error)
    assert primary_reader.tags("never/pushed") == []


def test_catalog_of_2500_repositories_is_listed_through_pagination(primary, primary_writer):
    base = images.random_layer(64)
    primary_writer.push_blob("seed", base.digest, base.data, base.size)
    names = [f"team{i % 25}/repo-{i:04d}" for i in range(2500)]
    with ThreadPoolExecutor(16) as pool:
        mounted = list(pool.map(lambda n: primary_writer.mount_blob(n, base.digest, "seed"), names))
    assert all(mounted)
    with FaultProxy(primary.url) as proxy:
        config = RegistryConfig.from_connection({**primary.connection(), "host": proxy.url})
        with RegistryClient(config) as client:
            listed = list(client.catalog(page_size=1000))
        pages = [path for method, path, status in proxy.log if "_catalog" in path]
    assert sorted(listed) == sorted([*names, "seed"])
    assert len(listed) == len(set(listed)) == 2501
    assert len(pages) == 3 and "last=" in pages[1]


def _seeded_chunks(seed: int, size: int):
    rng = random.Random(seed)
    for offset in range(0, size, MiB):
        yield rng.randbytes(min(MiB, size - offset))


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.slow
def test_300_mib_blob_streams_in_constant_memory(primary_writer, primary_reader, secondary_writer):
    size = 300 * MiB
    digest = "sha256:" + hashlib.sha256(b"".join(_seeded_chunks(7, size))).hexdigest()
    primary_writer.push_blob("big", digest, _seeded_chunks(7, size), size)
    # Reset the peak-RSS watermark so the measurement covers the copy alone.
    Path("/proc/self/clear_refs").write_text("5")
    before = _vm("VmRSS")
    secondary_writer.push_blob("big", digest, primary_reader.read_blob("big", digest), size)
    grown = _vm("VmHWM") - before
    print(f"peak RSS grew {grown / MiB:.1f} MiB while copying {size / MiB:.0f} MiB")
    assert secondary_writer.blob_size("big", digest) == size
    assert grown < 64 * MiB, f"peak RSS grew {grown / MiB:.1f} MiB"
    hasher = hashlib.sha256()
    for chunk in secondary_writer.read_blob("big", digest):
        hasher.update(chunk)
    assert "sha256:" + hasher.hexdigest() == digest


def test_corrupt_blob_is_refused_before_commit(
    primary, primary_writer, primary_reader, secondary_writer
):
    layer = images.random_layer(256 * 1024)
    primary_writer.push_blob("app", layer.digest, layer.data, layer.size)
    stored = primary.blob_path(layer.digest)
    stored.write_bytes(b"X" * layer.size)  # bit rot on the primary's disk
    with pytest.raises(DigestMismatchError) as refused:
        secondary_writer.push_blob(
            "app", layer.digest, primary_reader.read_blob("app", layer.digest), layer.size
        )
    assert refused.value.repository == "app" and refused.value.reference == layer.digest
    assert "re-pushed" in str(refused.value)
    assert secondary_writer.blob_size("app", layer.digest) is None


def test_upload_interrupted_mid_patch_resumes_inside_the_client(
    secondary, primary_writer, primary_reader, caplog
):
    """A PATCH cut off: the client asks the registry for the upload's offset and reopens the
    body there; the caller sees one call that succeeded."""
    layer = images.random_layer(3 * MiB + 123)
    primary_writer.push_blob("app", layer.digest, layer.data, layer.size)
    opened: list[int] = []
    sessions: list[str] = []

    def open_body(offset: int):
        opened.append(offset)
        return primary_reader.read_blob("app", layer.digest, offset=offset)

    with writer_through_proxy(secondary) as (proxy, target):
        proxy.inject(Fault(cut=True, method="PATCH", after=1))  # the second chunk is lost
        with caplog.at_level(logging.WARNING, logger="registry_replication.transport"):
            target.upload_blob(
                "app",
                layer.digest,
                layer.size,
                open_body,
                chunk_size=MiB,
                on_session=lambda upload: sessions.append(upload.location),
            )
    assert upload_calls(proxy) == [
        ("POST", 202),
        ("PATCH", 202),
        ("PATCH", "cut"),
        ("GET", 204),
        ("PATCH", 202),
        ("PATCH", 202),
        ("PUT", 201),
    ]
    assert opened == [0, MiB]  # one stream, reopened once at the registry's offset
    assert primary_reader.bytes_read == layer.size + MiB  # only the lost chunk read twice
    assert len(sessions) == 5  # opened, and moved on by each accepted chunk and the status
    assert any(
        f"resuming at byte {MiB}, the registry's offset" in r.getMessage() for r in caplog.records
    )
    assert_holds(secondary, layer)


def test_upload_restarts_when_the_registry_dropped_the_session(
    secondary, primary_writer, primary_reader
):
    """distribution cancels a session whose bytes no longer match its state: start over."""
    layer = images.random_layer(2 * MiB + 5)
    primary_writer.push_blob("app", layer.digest, layer.data, layer.size)
    with writer_through_proxy(secondary) as (proxy, target):
        proxy.inject(
            Fault(cut=True, method="PATCH", after=1),
            Fault(status=404, method="GET", path_contains="/uploads/", code="BLOB_UPLOAD_UNKNOWN"),
        )
        upload_in_chunks(target, layer, primary_reader)
    assert upload_calls(proxy) == [
        ("POST", 202),
        ("PATCH", 202),
        ("PATCH", "cut"),
        ("GET", 404),
        ("DELETE", 204),
        ("POST", 202),
        ("PATCH", 202),
        ("PATCH", 202),
        ("PUT", 201),
    ]
    assert_holds(secondary, layer)


def test_the_retry_budget_starts_again_when_the_registry_accepts_a_chunk(
    secondary, primary_writer, primary_reader, caplog
):
    """``max_retries`` bounds the attempts without progress: each chunk the registry accepts
    starts the count again, so a long upload on a flaky link still gets through."""
    layer = images.random_layer(3 * MiB + 99)
    primary_writer.push_blob("app", layer.digest, layer.data, layer.size)
    with writer_through_proxy(secondary, max_retries=2, backoff_seconds=0.01) as (proxy, target):
        # The second and the third chunk each fail twice: four failures, two per chunk.
        proxy.inject(
            Fault(503, method="PATCH", after=1),
            Fault(503, method="PATCH"),
            Fault(503, method="PATCH", after=1),
            Fault(503, method="PATCH"),
        )
        with caplog.at_level(logging.WARNING, logger="registry_replication.transport"):
            upload_in_chunks(target, layer, primary_reader)
        patches = [outcome for method, _, outcome in proxy.log if method == "PATCH"]
    assert patches == [202, 503, 503, 202, 503, 503, 202]
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert [line.split("; retry ")[1][:6] for line in retries] == ["1 of 2", "2 of 2"] * 2
    assert all(
        line.startswith(
            f"upload of app@{layer.digest} to {proxy.url} interrupted: "
            f"upload chunk app on {proxy.url}: HTTP 503"
        )
        for line in retries
    )
    assert_holds(secondary, layer)


def test_cross_repository_mount(primary_writer):
    layer = images.random_layer(4096)
    primary_writer.push_blob("source", layer.digest, layer.data, layer.size)
    assert primary_writer.mount_blob("target", layer.digest, "source") is True
    assert primary_writer.blob_size("target", layer.digest) == layer.size
    absent = images.random_layer(16)
    assert primary_writer.mount_blob("target", absent.digest, "source") is False


@pytest.fixture
def proxied(open_registry):
    """An unauthenticated registry behind a fault proxy, and a client with fast backoff."""
    with FaultProxy(open_registry.url) as proxy:
        config = RegistryConfig(proxy.url, max_retries=3, backoff_seconds=0.01)
        with RegistryClient(config, writable=True) as client:
            images.push(client, "app", images.ImageFactory().make(), ["v1"])
            proxy.log.clear()
            yield proxy, client


def test_503_then_200_is_retried_and_logged(proxied, caplog):
    proxy, client = proxied
    proxy.inject(Fault(503), Fault(502))
    with caplog.at_level(logging.WARNING, logger="registry_replication.transport"):
        assert client.tags("app") == ["v1"]
    assert [status for _, _, status in proxy.log] == [503, 502, 200]
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2
    assert "HTTP 503" in retries[0] and "retry 1 of 3" in retries[0]
    assert retries[0].startswith(f"list tags app on {proxy.url}: HTTP 503")


def test_429_honours_retry_after(proxied, caplog):
    proxy, client = proxied
    proxy.inject(Fault(429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="registry_replication.transport"):
        assert client.head_manifest("app", "v1") is not None
    assert time.monotonic() - started >= 1.0
    assert [status for _, _, status in proxy.log] == [429, 200]
    assert "(Retry-After)" in caplog.records[0].getMessage()


def test_503_retry_after_is_honoured_and_capped(proxied, caplog, monkeypatch):
    proxy, client = proxied
    monkeypatch.setattr("registry_replication.transport.retry.MAX_RETRY_SLEEP_SECONDS", 1.5)
    proxy.inject(
        Fault(503, headers={"Retry-After": "1"}), Fault(503, headers={"Retry-After": "3600"})
    )  # an hour: capped
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="registry_replication.transport"):
        assert client.tags("app") == ["v1"]
    waited = time.monotonic() - started
    assert 2.5 <= waited < 10, waited
    assert [status for _, _, status in proxy.log] == [503, 503, 200]
    lines = [r.getMessage() for r in caplog.records]
    assert "in 1.0s (Retry-After)" in lines[0] and "in 1.5s (Retry-After)" in lines[1]


def test_cut_connection_is_retried(proxied):
    proxy, client = proxied
    proxy.inject(Fault(cut=True))
    assert client.tags("app") == ["v1"]
    assert [status for _, _, status in proxy.log] == ["cut", 200]


def test_retries_are_bounded(proxied):
    proxy, client = proxied
    proxy.inject(*[Fault(503)] * 10)
    with pytest.raises(RegistryUnavailableError) as gave_up:
        client.tags("app")
    assert len(proxy.log) == 4  # the first try and 3 retries
    assert gave_up.value.status == 503 and "app" in str(gave_up.value)


def test_unreachable_registry_error_says_what_to_do():
    config = RegistryConfig(
        "http://127.0.0.1:9", auth="anonymous", max_retries=1, backoff_seconds=0.01
    )
    with RegistryClient(config) as client, pytest.raises(RegistryUnavailableError) as down:
        client.tags("app")
    assert "http://127.0.0.1:9" in str(down.value) and "running and reachable" in str(down.value)
