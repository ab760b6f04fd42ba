"""The read-once fan-out's ``Tee`` against real registries: one read of the primary into three
uploads, legs that fail, lag, stall or open late, and a primary that lies about a digest."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_replication.transport.client import RegistryClient
from registry_replication.transport.errors import (
    DigestMismatchError,
    RegistryError,
)
from registry_replication.transport.tee import Tee
from registry_replication.transport.upload import OpenBody
from replication_harness import images
from replication_harness.legs import FAIL, KINDS, OK, faulty
from replication_harness.registry import LocalRegistry, open_client
from replication_harness.servers import Fault, FaultProxy

KiB, MiB = 1 << 10, 1 << 20
LEGS = ("s1", "s2", "s3")


class Reader:
    """The blob on the primary from an offset, its bytes counted."""

    def __init__(self, primary: RegistryClient, digest: str) -> None:
        self.primary, self.digest, self.bytes = primary, digest, 0
        self._lock = threading.Lock()

    def __call__(self, offset: int) -> Iterator[bytes]:
        for chunk in self.primary.read_blob("app", self.digest, offset=offset):
            with self._lock:
                self.bytes += len(chunk)
            yield chunk


def tee_of(reader: Reader, layer: images.Blob, **options: float) -> Tee:
    """A tee of ``layer`` from the primary (counted by ``reader``) to the three legs."""
    return Tee(
        reader,
        layer.size,
        LEGS,
        repository="app",
        digest=layer.digest,
        **options,
    )


def legs_via(
    registries: dict[str, LocalRegistry], leg: str, proxy: FaultProxy, retries: int = 3
) -> dict[str, RegistryClient]:
    """Writable clients of the three legs, ``leg``'s through ``proxy``."""
    targets = {name: open_client(registries[name].url, writable=True) for name in LEGS}
    targets[leg] = open_client(proxy.url, writable=True, retries=retries)
    return targets


@pytest.fixture
def registries(start_registry) -> dict[str, LocalRegistry]:
    """An open primary and three open secondaries."""
    return {name: start_registry(name) for name in ("primary", *LEGS)}


def push(registries: dict[str, LocalRegistry], size: int) -> images.Blob:
    layer = images.random_layer(size)
    with open_client(registries["primary"].url, writable=True) as writer:
        writer.push_blob("app", layer.digest, layer.data, layer.size)
    return layer


def fan_out(
    tee: Tee,
    targets: dict[str, RegistryClient],
    layer: images.Blob,
    *,
    chunk_size: int = 512 * KiB,
    wrap: Callable[[str, OpenBody], OpenBody] = lambda leg, body: body,
) -> dict[str, BaseException | None]:
    """Each leg's upload in its own thread, as ``FanoutCopier`` runs them; their errors."""
    errors: dict[str, BaseException | None] = {}

    def leg(name: str) -> None:
        try:
            targets[name].upload_blob(
                "app",
                layer.digest,
                layer.size,
                wrap(name, tee.open_for(name)),
                chunk_size=chunk_size,
            )
            errors[name] = None
        except BaseException as exc:  # noqa: BLE001 - the test reads each leg's outcome
            errors[name] = exc
        finally:
            tee.leave(name)

    threads = [threading.Thread(target=leg, args=(name,)) for name in targets]
    with tee:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def assert_exact(registry: LocalRegistry, layer: images.Blob) -> None:
    with open_client(registry.url) as reader:
        assert b"".join(reader.read_blob("app", layer.digest)) == layer.data


def assert_absent(registry: LocalRegistry, layer: images.Blob) -> None:
    with open_client(registry.url) as reader:
        assert not reader.has_blob("app", layer.digest)


def no_tee_threads() -> bool:
    return not any(t.name == "tee-producer" for t in threading.enumerate())


def test_three_legs_get_exact_bytes_from_one_read(registries):
    layer = push(registries, 3 * MiB + 4321)
    with FaultProxy(registries["primary"].url) as proxy, open_client(proxy.url) as primary:
        reader = Reader(primary, layer.digest)
        targets = {name: open_client(registries[name].url, writable=True) for name in LEGS}
        tee = tee_of(reader, layer, window=MiB)
        errors = fan_out(tee, targets, layer)
        gets = [p for method, p, _ in proxy.log if method == "GET" and layer.digest in p]
        served = proxy.body_bytes_sent
    assert errors == {name: None for name in LEGS}
    for name in LEGS:
        assert_exact(registries[name], layer)
    assert len(gets) == 1
    assert reader.bytes == served == layer.size  # the primary served the blob once
    assert tee.detached == []
    assert no_tee_threads()


def test_a_lagging_leg_is_detached_and_reads_the_rest_alone(registries):
    layer = push(registries, 4 * MiB + 17)
    with (
        open_client(registries["primary"].url) as primary,
        FaultProxy(registries["s2"].url) as slow,
    ):
        reader = Reader(primary, layer.digest)
        targets = legs_via(registries, "s2", slow)
        held = slow.hold("PATCH")  # s2's first chunk waits for its answer...
        releaser = threading.Timer(2.0, held.release)  # ...well past the lag bound
        releaser.start()
        tee = tee_of(reader, layer, window=MiB, lag_seconds=0.3)
        started = time.monotonic()
        finished: dict[str, float] = {}

        def timed(name: str, body: OpenBody) -> OpenBody:
            def open_body(offset: int) -> Iterable[bytes]:
                yield from body(offset)
                finished[name] = time.monotonic() - started

            return open_body

        errors = fan_out(tee, targets, layer, chunk_size=MiB, wrap=timed)
        releaser.join()
    assert errors == {name: None for name in LEGS}
    for name in LEGS:
        assert_exact(registries[name], layer)
    assert tee.detached == ["s2"]
    # The others did not wait for s2's answer; s2 read what it had not had, from the primary.
    assert finished["s1"] < 2.0 and finished["s3"] < 2.0
    assert layer.size < reader.bytes < 2 * layer.size


def test_a_leg_refused_mid_upload_fails_alone(registries):
    layer = push(registries, 3 * MiB)
    with open_client(registries["primary"].url) as primary, FaultProxy(registries["s2"].url) as bad:
        reader = Reader(primary, layer.digest)
        targets = legs_via(registries, "s2", bad, retries=1)
        bad.inject(*(Fault(status=403, method="PATCH", after=1, code="DENIED") for _ in range(3)))
        tee = tee_of(reader, layer, window=MiB)
        errors = fan_out(tee, targets, layer)
    assert errors["s1"] is None and errors["s3"] is None
    assert isinstance(errors["s2"], RegistryError) and errors["s2"].status == 403
    assert_exact(registries["s1"], layer)
    assert_exact(registries["s3"], layer)
    assert_absent(registries["s2"], layer)
    assert reader.bytes == layer.size
    assert no_tee_threads()


def test_a_primary_digest_mismatch_commits_nothing_anywhere(registries):
    layer = push(registries, 3 * MiB)
    path = registries["primary"].blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) - 10] ^= 0xFF  # same size, wrong bytes near the end
    path.write_bytes(bytes(data))
    with open_client(registries["primary"].url) as primary:
        targets = {name: open_client(registries[name].url, writable=True) for name in LEGS}
        tee = Tee(
            Reader(primary, layer.digest), layer.size, LEGS, repository="app", digest=layer.digest
        )
        errors = fan_out(tee, targets, layer)
    for name in LEGS:
        assert isinstance(errors[name], DigestMismatchError), errors[name]
        assert errors[name].code == "DIGEST_INVALID"
        assert_absent(registries[name], layer)


def test_a_primary_cut_mid_stream_sends_every_leg_to_read_alone(registries):
    layer = push(registries, 3 * MiB + 5)
    with FaultProxy(registries["primary"].url) as proxy, open_client(proxy.url) as primary:
        proxy.inject(Fault(cut_after_bytes=MiB + 100, method="GET", path_contains="/blobs/"))
        reader = Reader(primary, layer.digest)
        targets = {name: open_client(registries[name].url, writable=True) for name in LEGS}
        tee = tee_of(reader, layer, window=MiB)
        errors = fan_out(tee, targets, layer)
    assert errors == {name: None for name in LEGS}
    for name in LEGS:
        assert_exact(registries[name], layer)
    assert sorted(tee.detached) == sorted(LEGS)
    assert reader.bytes <= 4 * layer.size  # at most one partial read each


def test_a_leg_that_opens_late_reads_alone(registries):
    layer = push(registries, 2 * MiB)
    with (
        open_client(registries["primary"].url) as primary,
        FaultProxy(registries["s3"].url) as late,
    ):
        reader = Reader(primary, layer.digest)
        targets = legs_via(registries, "s3", late)
        held = late.hold("POST")  # s3 is still opening its session
        releaser = threading.Timer(1.0, held.release)
        releaser.start()
        tee = Tee(
            reader, layer.size, LEGS, repository="app", digest=layer.digest, attach_seconds=0.2
        )
        errors = fan_out(tee, targets, layer)
        releaser.join()
    assert errors == {name: None for name in LEGS}
    for name in LEGS:
        assert_exact(registries[name], layer)
    assert reader.bytes == 2 * layer.size


def test_memory_stays_within_the_windows(registries):
    layer = push(registries, 24 * MiB)
    with open_client(registries["primary"].url) as primary:
        targets = {name: open_client(registries[name].url, writable=True) for name in LEGS}
        tee = tee_of(Reader(primary, layer.digest), layer, window=MiB)
        tracemalloc.start()
        try:
            errors = fan_out(tee, targets, layer, chunk_size=4 * MiB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert errors == {name: None for name in LEGS}
    for name in LEGS:
        assert_exact(registries[name], layer)
    # Each leg's window, the piece in its request and the producer's chunk: never the blob.
    print(f"tee peak memory: {peak / MiB:.1f} MiB for a {layer.size / MiB:.0f} MiB blob, 3 legs")
    assert peak < 3 * (MiB + 2 * MiB) + MiB + MiB, peak


def test_closing_the_tee_stops_every_leg_and_joins_the_producer(registries):
    layer = push(registries, 8 * MiB)
    with open_client(registries["primary"].url) as primary:
        targets = {name: open_client(registries[name].url, writable=True) for name in LEGS}
        tee = tee_of(Reader(primary, layer.digest), layer, window=MiB)

        def slow(leg: str, body: OpenBody) -> OpenBody:
            def open_body(offset: int) -> Iterator[bytes]:
                for chunk in body(offset):
                    time.sleep(0.5)
                    yield chunk

            return open_body

        errors: dict[str, BaseException | None] = {}

        def leg(name: str) -> None:
            try:
                targets[name].upload_blob(
                    "app", layer.digest, layer.size, slow(name, tee.open_for(name)), chunk_size=MiB
                )
                errors[name] = None
            except RegistryError as exc:
                errors[name] = exc

        threads = [threading.Thread(target=leg, args=(name,)) for name in LEGS]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        tee.close()  # as on any exception in the fan-out: the legs stop, the producer is joined
        assert no_tee_threads()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    for name in LEGS:
        assert isinstance(errors[name], RegistryError) and errors[name].code == "FANOUT_CLOSED"
        assert_absent(registries[name], layer)


# -- the class of leg failures ---------------------------------------------------------------------

# What happens to a leg when its stream reaches a byte: nothing; a failure its upload does not
# retry; one it retries (the connection dropped); a pause longer than the lag bound.
LAG = 0.2


def _patterned(patterns: dict[str, tuple[str, float]], size: int):
    def wrap(leg: str, body: OpenBody) -> OpenBody:
        kind, where = patterns[leg]
        return faulty(body, kind, int(where * size), 3 * LAG)

    return wrap


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    size=st.integers(min_value=1, max_value=3 * MiB),
    patterns=st.tuples(*(st.tuples(st.sampled_from(KINDS), st.floats(0, 0.999)) for _ in LEGS)),
)
def test_any_pattern_of_leg_failures(registries, size, patterns):
    """Whichever legs fail, at whichever byte: each other leg commits exact bytes, each failing
    leg reports its failure, nothing hangs and no thread is left."""
    plan = dict(zip(LEGS, patterns))
    layer = push(registries, size)
    with open_client(registries["primary"].url) as primary:
        reader = Reader(primary, layer.digest)
        targets = {name: open_client(registries[name].url, writable=True) for name in LEGS}
        tee = tee_of(reader, layer, window=256 * KiB, lag_seconds=LAG, stall_seconds=10)
        started = time.monotonic()
        errors = fan_out(tee, targets, layer, chunk_size=384 * KiB, wrap=_patterned(plan, size))
        elapsed = time.monotonic() - started
    assert elapsed < 30
    for name, (kind, _) in plan.items():
        if kind == FAIL:
            assert isinstance(errors[name], RegistryError) and errors[name].code == "DENIED"
            assert_absent(registries[name], layer)
        else:
            assert errors[name] is None, (name, plan, errors[name])
            assert_exact(registries[name], layer)
    not_ok = sum(kind != OK for kind, _ in plan.values())
    assert reader.bytes <= (1 + not_ok) * size
    assert no_tee_threads()
