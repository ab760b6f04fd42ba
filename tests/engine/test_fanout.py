"""``FanoutCopier``: three secondaries' blob plans with each blob read from the primary once,
against real registries (the primary behind a proxy that counts what it served)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_replication.engine.copy import Copier
from registry_replication.engine.fanout import FanoutCopier, fanout_tasks
from registry_replication.engine.plan import BlobTask
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.legs import FAIL, KINDS, OK, faulty
from replication_harness.registry import LocalRegistry, open_client
from replication_harness.servers import Fault, FaultProxy

KiB, MiB = 1 << 10, 1 << 20
NAMES = ("s1", "s2", "s3")
BUFFER = 512 * KiB  # the in-memory threshold in these tests (4 MiB in production)


@pytest.fixture
def sites(start_registry) -> dict[str, LocalRegistry]:
    """An open primary and three open secondaries."""
    return {name: start_registry(name) for name in ("primary", *NAMES)}


@pytest.fixture
def counted(sites) -> Iterator[tuple[FaultProxy, RegistryClient]]:
    """The replicator's read-only client of the primary, through a proxy that counts the
    bytes the primary served."""
    with FaultProxy(sites["primary"].url) as proxy, open_client(proxy.url) as primary:
        yield proxy, primary


def push(registry: LocalRegistry, repository: str, *layers: images.Blob) -> None:
    with open_client(registry.url, writable=True) as writer:
        for layer in layers:
            writer.push_blob(repository, layer.digest, layer.data, layer.size)


def read_back(registry: LocalRegistry, repository: str, layer: images.Blob) -> bytes:
    with open_client(registry.url) as reader:
        return b"".join(reader.read_blob(repository, layer.digest))


def fanout(
    primary: RegistryClient, targets: dict[str, RegistryClient], leases, **options
) -> FanoutCopier:
    copiers = {
        name: Copier(primary, target, leases=leases, chunk_size=MiB)
        for name, target in targets.items()
    }
    return FanoutCopier(primary, copiers, buffer_bytes=BUFFER, window=MiB, **options)


def task(layer: images.Blob, **fields) -> BlobTask:
    return BlobTask(layer.digest, layer.size, "app", "app", **fields)


def test_every_blob_is_read_once_into_three_secondaries(sites, counted, leases):
    proxy, primary = counted
    # Empty, below and above the in-memory threshold, several read and upload chunks.
    sizes = (0, 100 * KiB, 700 * KiB, 3 * MiB + 123)
    empty, small, mid, large = (images.random_layer(n) for n in sizes)
    layers = (empty, small, mid, large)
    push(sites["primary"], "app", *layers)
    push(sites["s2"], "app", small)  # already there: skipped
    push(sites["s3"], "base", mid)  # mountable from another repository
    plans = {
        "s1": [task(empty), task(small), task(mid), task(large, mounts=["other"])],
        "s2": [task(empty), task(small), task(mid), task(large)],
        "s3": [task(empty), task(small), task(mid, mount_from="base"), task(large)],
    }
    targets = {name: open_client(sites[name].url, writable=True) for name in NAMES}
    copier = fanout(primary, targets, leases)
    started = time.monotonic()
    results = copier.copy_blobs(plans)
    seconds = time.monotonic() - started

    outcomes = {
        name: [(r.repository, r.digest, r.outcome) for r in rs] for name, rs in results.items()
    }
    assert outcomes["s1"] == [
        ("app", empty.digest, "copied"),
        ("app", small.digest, "copied"),
        ("app", mid.digest, "copied"),
        ("app", large.digest, "copied"),
        ("other", large.digest, "mounted"),
    ]
    assert [o for _, _, o in outcomes["s2"]] == ["copied", "skipped", "copied", "copied"]
    assert [o for _, _, o in outcomes["s3"]] == ["copied", "copied", "mounted", "copied"]
    for name in NAMES:
        for layer in layers:
            assert read_back(sites[name], "app", layer) == layer.data, (name, layer.size)
    assert read_back(sites["s1"], "other", large) == large.data
    # Each blob some secondary needed bytes of was read once: by our count and the primary's.
    unique = small.size + mid.size + large.size
    assert copier.primary_bytes == unique
    assert proxy.body_bytes_sent == unique <= 1.2 * unique
    assert copier.detached == []
    assert len(fanout_tasks(plans)) == 4
    print(f"fan-out: {proxy.body_bytes_sent} primary bytes for {unique} unique, {seconds:.2f}s")
    assert not [t for t in threading.enumerate() if t.name.startswith(("tee", "fanout"))]


def test_a_secondary_cut_mid_upload_fails_alone(sites, counted, leases):
    proxy, primary = counted
    layers = [images.random_layer(n) for n in (2 * MiB + 7, 200 * KiB)]  # teed, in memory
    push(sites["primary"], "app", *layers)
    with FaultProxy(sites["s2"].url) as cutting:
        targets = {name: open_client(sites[name].url, writable=True) for name in NAMES}
        targets["s2"] = open_client(cutting.url, writable=True, retries=1)
        # s2 opens its first upload, then every upload request to it is cut (mid-upload):
        # its legs fail, the others go on.
        uploads = "/blobs/uploads/"
        cutting.inject(Fault(cut=True, path_contains=uploads, after=1))
        cutting.inject(*(Fault(cut=True, path_contains=uploads) for _ in range(20)))
        copier = fanout(primary, targets, leases, parallelism=1)
        results = copier.copy_blobs({name: [task(x) for x in layers] for name in NAMES})
        s2_log = [(method, outcome) for method, _, outcome in cutting.log]
    assert s2_log[:3] == [("HEAD", 404), ("POST", 202), ("PATCH", "cut")], s2_log
    for name in ("s1", "s3"):
        assert [r.outcome for r in results[name]] == ["copied", "copied"]
        for layer in layers:
            assert read_back(sites[name], "app", layer) == layer.data
    for result, layer in zip(results["s2"], layers):
        assert result.outcome == "failed"
        assert result.digest == layer.digest
        assert result.error.startswith("secondary s2: ")
        assert "What to do:" in result.error
    with open_client(sites["s2"].url) as reader:
        assert not any(reader.has_blob("app", layer.digest) for layer in layers)
    # s2's retries read the small blob from memory, the large one from the tee or alone.
    assert sum(x.size for x in layers) <= copier.primary_bytes <= 3 * sum(x.size for x in layers)


def test_a_stopped_secondary_is_tried_once_then_left(sites, counted, leases):
    _, primary = counted
    layers = [images.random_layer(n) for n in (100 * KiB, 1 * MiB + 5, 300 * KiB)]
    push(sites["primary"], "app", *layers)
    targets = {name: open_client(sites[name].url, writable=True, retries=1) for name in NAMES}
    sites["s3"].stop()
    copier = fanout(primary, targets, leases, parallelism=1)
    results = copier.copy_blobs({name: [task(x) for x in layers] for name in NAMES})
    for name in ("s1", "s2"):
        assert [r.outcome for r in results[name]] == ["copied"] * 3
        for layer in layers:
            assert read_back(sites[name], "app", layer) == layer.data
    first, *later = results["s3"]
    assert first.outcome == "failed" and "no answer from the registry" in first.error
    for result, layer in zip(later, layers[1:]):
        assert result.outcome == "failed"
        assert result.error.startswith(
            "secondary s3: not tried: s3 was unavailable earlier in this copy (ping on "
        )
        assert f"retries app@{layer.digest}" in result.error
    assert copier.primary_bytes == sum(x.size for x in layers)


@pytest.mark.parametrize("size", [300 * KiB, 2 * MiB + 11], ids=["in memory", "teed"])
def test_a_primary_digest_mismatch_fails_every_leg_and_commits_nothing(
    sites, counted, leases, size
):
    _, primary = counted
    layer = images.random_layer(size)
    push(sites["primary"], "app", layer)
    path = sites["primary"].blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    targets = {name: open_client(sites[name].url, writable=True) for name in NAMES}
    results = fanout(primary, targets, leases).copy_blobs({name: [task(layer)] for name in NAMES})
    for name in NAMES:
        (result,) = results[name]
        assert result.outcome == "failed" and result.code == "DIGEST_INVALID", result.error
        assert "corrupt at the source" in result.error
        with open_client(sites[name].url) as reader:
            assert not reader.has_blob("app", layer.digest)


def test_a_slow_secondary_is_detached_and_finishes_on_its_own_read(sites, counted, leases):
    proxy, primary = counted
    layer = images.random_layer(5 * MiB + 3)
    push(sites["primary"], "app", layer)
    with FaultProxy(sites["s3"].url) as slow:
        targets = {name: open_client(sites[name].url, writable=True) for name in NAMES}
        targets["s3"] = open_client(slow.url, writable=True)
        held = slow.hold("PATCH")  # s3 answers its first chunk late
        releaser = threading.Timer(2.0, held.release)
        releaser.start()
        copier = fanout(primary, targets, leases, lag_seconds=0.3)
        results = copier.copy_blobs({name: [task(layer)] for name in NAMES})
        releaser.join()
    for name in NAMES:
        assert [r.outcome for r in results[name]] == ["copied"], results[name]
        assert read_back(sites[name], "app", layer) == layer.data
    assert copier.detached == [("s3", layer.digest)]
    print(f"fan-out with a detached leg: {proxy.body_bytes_sent} primary bytes for {layer.size}")
    # The shared read, then s3's own read of what it had not had.
    assert layer.size < copier.primary_bytes == proxy.body_bytes_sent < 2 * layer.size


def test_a_small_blob_longer_than_planned_is_refused_as_it_arrives(sites, counted, leases):
    _, primary = counted
    layer = images.random_layer(100 * KiB)
    push(sites["primary"], "app", layer)
    planned = BlobTask(layer.digest, layer.size - 1000, "app", "app")  # the plan's size is short
    targets = {name: open_client(sites[name].url, writable=True) for name in NAMES}
    results = fanout(primary, targets, leases).copy_blobs({name: [planned] for name in NAMES})
    for name in NAMES:
        (result,) = results[name]
        assert result.outcome == "failed" and result.code == "SIZE_INVALID", result.error
        with open_client(sites[name].url) as reader:
            assert not reader.has_blob("app", layer.digest)


# -- the class of leg failures, through the engine ---------------------------------------------


class Faulty(Copier):
    """A secondary's ``Copier`` whose leg meets ``pattern`` at a fraction of each blob: a
    failure its upload does not retry, a dropped connection it does, or a pause past the lag."""

    pattern: tuple[str, float] = (OK, 0.0)

    def copy_blob(self, task: BlobTask, open_body=None):
        kind, where = self.pattern
        return super().copy_blob(task, faulty(open_body, kind, int(where * task.size), 0.6))


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sizes=st.tuples(st.integers(1, 400 * KiB), st.integers(600 * KiB, 3 * MiB)),
    patterns=st.tuples(*(st.tuples(st.sampled_from(KINDS), st.floats(0, 0.999)) for _ in NAMES)),
)
def test_any_pattern_of_leg_failures_is_contained(sites, counted, leases, sizes, patterns):
    """In memory or teed, whichever legs fail at whichever byte: the others commit exact
    bytes, each failed leg is a failed result naming its secondary, nothing hangs, no thread
    is left, and the primary is read at most once more per troubled leg."""
    _, primary = counted
    layers = [images.random_layer(n) for n in sizes]
    push(sites["primary"], "app", *layers)
    copiers = {}
    for name, pattern in zip(NAMES, patterns):
        copiers[name] = Faulty(
            primary,
            open_client(sites[name].url, writable=True),
            leases=leases,
            chunk_size=512 * KiB,
        )
        copiers[name].pattern = pattern
    copier = FanoutCopier(primary, copiers, buffer_bytes=BUFFER, window=256 * KiB, lag_seconds=0.2)
    started = time.monotonic()
    results = copier.copy_blobs({name: [task(x) for x in layers] for name in NAMES})
    assert time.monotonic() - started < 60
    for name, (kind, _) in zip(NAMES, patterns):
        for result, layer in zip(results[name], layers):
            if kind == FAIL:
                assert result.outcome == "failed", (name, patterns)
                assert result.error.startswith(f"secondary {name}: ") and "DENIED" in result.error
                with open_client(sites[name].url) as reader:
                    assert not reader.has_blob("app", layer.digest)
            else:
                assert result.outcome == "copied", (name, patterns, result.error)
                assert read_back(sites[name], "app", layer) == layer.data
    troubled = sum(kind != OK for kind, _ in patterns)
    assert copier.primary_bytes <= (1 + troubled) * sum(sizes)
    assert not [t for t in threading.enumerate() if t.name.startswith(("tee", "fanout"))]
