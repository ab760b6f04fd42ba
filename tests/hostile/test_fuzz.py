"""Hostile primaries, generated: no pushed object stops replication.

``hypothesis`` generates the class, not an instance:
- against a real distribution 2.8, everything it accepts: graphs of manifests of any shape
  (images with unknown fields nested to any depth, indexes of any fan-out listing any earlier
  manifest, repeats and diamonds included), under small bounds so that every edge is reached
  in a few manifests;
- against a small fake registry, what no conforming registry sends: sizes of ``1e400``, ``-1``,
  ``true`` or 5,000 digits, digests out of grammar, non-object descriptors, ``Link`` loops,
  bodies past their bound, JSON nested past its bound in listings.

After each example: the healthy image beside it is replicated byte for byte, the hostile one
is replicated exactly or named with its reason, no manifest is fetched twice, and the time
and memory an example took are recorded (printed at the end: ``pytest -s``).

Profiles: ``ci`` (the default, a few minutes) and ``long`` (``HYPOTHESIS_PROFILE=long``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count

import psutil
import pytest
from fake_http import FakeServer, Received, Reply
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_replication.engine.leases import Leases
from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from replication_harness import images
from replication_harness.images import Image
from replication_harness.servers import FaultProxy

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Small bounds: every edge within a few manifests (the defaults are the same code).
BOUNDS = {
    "max_json_depth": 16,
    "max_index_depth": 4,
    "max_index_children": 3,
    "max_manifests_per_image": 8,
}
SETTINGS = tuple(BOUNDS)
EXAMPLE_SECONDS = 60
names = count()


@dataclass
class Measured:
    """The largest time and RSS growth any example reached, per suite."""

    seconds: dict[str, float] = field(default_factory=Counter)
    rss_mib: dict[str, float] = field(default_factory=Counter)
    examples: Counter[str] = field(default_factory=Counter)

    def add(self, suite: str, seconds: float, rss_mib: float) -> None:
        self.examples[suite] += 1
        self.seconds[suite] = max(self.seconds[suite], seconds)
        self.rss_mib[suite] = max(self.rss_mib[suite], rss_mib)


MEASURED = Measured()


@pytest.fixture(scope="module", autouse=True)
def report_measured():
    yield
    for suite, n in MEASURED.examples.items():
        print(
            f"\nfuzz {suite}: {n} examples; slowest {MEASURED.seconds[suite]:.2f}s, "
            f"largest RSS growth {MEASURED.rss_mib[suite]:.1f} MiB"
        )


# -- a real distribution 2.8 ------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """An image (``children`` empty, ``extra_depth`` levels of unknown field) or an index
    listing earlier nodes by position (repeats allowed)."""

    extra_depth: int = 0
    layers: int = 1
    children: tuple[int, ...] = ()


@st.composite
def manifest_graphs(draw: st.DrawFn) -> list[Node]:
    """Images, then indexes over anything before them; the last node is the tagged one."""
    nodes = [
        Node(draw(st.integers(0, 24)), draw(st.integers(0, 2)))
        for _ in range(draw(st.integers(1, 3)))
    ]
    for _ in range(draw(st.integers(0, 7))):
        nodes.append(
            Node(
                children=tuple(
                    draw(st.lists(st.integers(0, len(nodes) - 1), min_size=1, max_size=4))
                )
            )
        )
    return nodes


def build(nodes: list[Node], factory: images.ImageFactory) -> list[Image]:
    built: list[Image] = []
    for node in nodes:
        if node.children:
            listed = [built[i] for i in node.children]
            body = {
                "schemaVersion": 2,
                "mediaType": mt.OCI_INDEX,
                "manifests": [child.descriptor() for child in listed],
            }
            unique = tuple({c.digest: c for c in listed}.values())
            built.append(Image(json.dumps(body).encode(), mt.OCI_INDEX, (), unique))
        else:
            base = factory.make(node.layers)
            nested = "[" * node.extra_depth + "]" * node.extra_depth
            raw = json.dumps(json.loads(base.raw))[:-1] + f', "x": {nested or 0}}}'
            built.append(Image(raw.encode(), base.media_type, base.blobs))
    return built


def closure(nodes: list[Node]) -> set[int]:
    """The tagged (last) node and everything it lists, at any depth."""
    found: set[int] = set()
    stack = [len(nodes) - 1]
    while stack:
        i = stack.pop()
        if i not in found:
            found.add(i)
            stack.extend(nodes[i].children)
    return found


def json_depth(value: object) -> int:
    """Nesting of lists and objects, the plain recursive way (the oracle, not the code)."""
    if isinstance(value, dict):
        return 1 + max(map(json_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(json_depth, value), default=0)
    return 0


def expected_violations(nodes: list[Node], built: list[Image]) -> set[str]:
    """The bounds the tagged node's closure exceeds, computed from the graph."""
    found: set[str] = set()
    top = len(nodes) - 1
    reached = closure(nodes)
    height: dict[int, int] = {}
    for i, node in enumerate(nodes):  # children come before their index
        height[i] = 1 + max(height[c] for c in node.children) if node.children else 0
    for i in reached:
        node = nodes[i]
        if json_depth(json.loads(built[i].raw)) > BOUNDS["max_json_depth"]:
            found.add("max_json_depth")
        if len(node.children) > BOUNDS["max_index_children"]:
            found.add("max_index_children")
    if height[top] > BOUNDS["max_index_depth"]:
        found.add("max_index_depth")
    if len(reached) > BOUNDS["max_manifests_per_image"]:
        found.add("max_manifests_per_image")
    return found


def push_graph(client: RegistryClient, repository: str, built: list[Image], tag: str) -> None:
    for img in built[:-1]:  # in order: whatever an index lists is already there
        images.push(client, repository, img)
    images.push(client, repository, built[-1], [tag])


@pytest.fixture
def healthy(primary_writer) -> tuple[str, str]:
    digest = images.push(primary_writer, "healthy/app", images.ImageFactory().multi_arch(), ["v1"])
    return "healthy/app", digest


@given(nodes=manifest_graphs())
def test_any_graph_of_manifests_a_real_registry_accepts(
    nodes, primary, secondary, primary_writer, secondary_reader, store, healthy
):
    repository = f"fuzz/graph{next(names)}"
    built = build(nodes, images.ImageFactory(layer_size=64))
    push_graph(primary_writer, repository, built, "v1")
    violations = expected_violations(nodes, built)
    distinct = len({img.digest for img in built})

    process, started = psutil.Process(), time.monotonic()
    rss_before = process.memory_info().rss
    with FaultProxy(primary.url) as proxy:
        config = RegistryConfig.from_connection({**primary.connection(**BOUNDS), "host": proxy.url})
        with (
            RegistryClient(config) as source,
            RegistryClient(secondary.client_config(), writable=True) as target,
        ):
            report = run_sync(
                source,
                target,
                SyncOptions(repositories=[repository, healthy[0]], prune=False),
                leases=Leases(store, "registry_secondary"),
            )
        gets = sum(
            1
            for method, path, _ in proxy.log
            if method == "GET" and f"/{repository}/manifests/" in path
        )
    seconds = time.monotonic() - started
    MEASURED.add("real registry", seconds, (process.memory_info().rss - rss_before) / 2**20)

    assert secondary_reader.get_manifest(*healthy).raw == primary_writer.get_manifest(*healthy).raw
    assert gets <= distinct, (gets, distinct)
    # Named by the listing (a full run reads a tag's manifest whole) or by the plan.
    named = [s.reason for s in report.plan.skipped if s.repository == repository]
    named += [p["reason"] for p in report.primary.problems if p["repository"] == repository]
    if violations:
        (reason,) = named
        assert any(setting in reason for setting in violations), (violations, reason)
        assert secondary_reader.head_manifest(repository, "v1") is None
    else:
        assert not named, named
        assert secondary_reader.get_manifest(repository, "v1").raw == built[-1].raw
        for i in closure(nodes):  # every child too, byte for byte
            assert secondary_reader.get_manifest(repository, built[i].digest).raw == built[i].raw
    assert seconds < EXAMPLE_SECONDS


# -- what no conforming registry sends: a fake primary ------------------------------------------


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


SIZES = st.sampled_from(
    ["1e400", "-1", "true", '"12"', "1" * 5000, "null", "[]", "18446744073709551616", "1.5"]
)
DIGESTS = st.sampled_from(["sha256:xyz", "", "md5:" + "0" * 32, "sha256:" + "A" * 64, "../x"])
HOSTILE_KINDS = st.one_of(
    st.tuples(st.just("size"), SIZES),
    st.tuples(st.just("digest"), DIGESTS),
    st.tuples(st.just("descriptor"), st.sampled_from(["1", '"x"', "null", "[]"])),
    st.tuples(st.just("deep listing"), st.integers(17, 3000)),
    st.tuples(st.just("link loop"), st.integers(1, 3)),
    st.tuples(st.just("huge manifest"), st.integers(1, 4)),
    st.tuples(st.just("endless manifest"), st.just(0)),
)


class FakePrimary:
    """Serves a healthy image in ``good<n>/app`` and one hostile answer in ``bad<n>/app``
    (each example its own names: the secondary and the store outlive an example)."""

    def __init__(self, healthy: Image, kind: str, value: object) -> None:
        self.healthy, self.kind, self.value = healthy, kind, value
        n = next(names)
        self.good, self.bad_name = f"good{n}/app", f"bad{n}/app"
        self.manifests = {healthy.digest: healthy, **{c.digest: c for c in healthy.children}}
        self.blobs = {b.digest: b.data for b in healthy.all_blobs()}
        layer = next(iter(healthy.children[0].blobs)) if healthy.children else healthy.blobs[0]
        self.bad = self._bad_manifest(layer.digest, layer.size)

    def _named(self, path: str) -> str:
        """The path with the example's names as the generic ones."""
        return path.replace(f"/{self.good}/", "/good/app/").replace(
            f"/{self.bad_name}/", "/bad/app/"
        )

    def _bad_manifest(self, digest: str, size: int) -> bytes:
        descriptor = f'{{"mediaType": "{mt.OCI_LAYER}", "digest": "{digest}", "size": {size}}}'
        if self.kind == "size":
            descriptor = descriptor.replace(f'"size": {size}', f'"size": {self.value}')
        elif self.kind == "digest":
            descriptor = descriptor.replace(digest, str(self.value))
        elif self.kind == "descriptor":
            descriptor = str(self.value)
        body = (
            f'{{"schemaVersion": 2, "mediaType": "{mt.OCI_MANIFEST}", '
            f'"config": {descriptor}, "layers": [{descriptor}]}}'
        )
        if self.kind == "huge manifest":  # past max_manifest_bytes, declared or not
            body += " " * (int(self.value) * 9000)
        return body.encode()

    def answer(self, request: Received) -> Reply:
        path = self._named(request.path.split("?")[0])
        json_headers = {"Content-Type": "application/json"}
        if path == "/v2/":
            return Reply(200, json_headers, b"{}")
        if path == "/v2/_catalog":
            return Reply(
                200, json_headers, json.dumps({"repositories": [self.bad_name, self.good]}).encode()
            )
        if path == "/v2/bad/app/tags/list":
            if self.kind == "deep listing":
                depth = int(self.value)
                return Reply(200, json_headers, b'{"tags": ' + b"[" * depth + b"]" * depth + b"}")
            if self.kind == "link loop":
                page = int(request.path.rsplit("page=", 1)[-1]) if "page=" in request.path else 0
                following = (page + 1) % int(self.value)  # back to the first page, for ever
                return Reply(
                    200,
                    {
                        **json_headers,
                        "Link": f'</v2/{self.bad_name}/tags/list?page={following}>; rel="next"',
                    },
                    b'{"tags": ["v1"]}',
                )
            return Reply(200, json_headers, b'{"tags": ["v1"]}')
        if path == "/v2/good/app/tags/list":
            return Reply(200, json_headers, b'{"tags": ["v1"]}')
        if "/manifests/" in path:
            return self._manifest(path, request.method)
        if "/blobs/" in path:
            data = self.blobs.get(path.rsplit("/", 1)[-1])
            if data is None:
                return Reply(404, json_headers, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}')
            return Reply(200, {"Content-Type": "application/octet-stream"}, data)
        return Reply(404, json_headers, b'{"errors": [{"code": "NAME_UNKNOWN"}]}')

    def _manifest(self, path: str, method: str) -> Reply:
        repository, reference = path.removeprefix("/v2/").split("/manifests/")
        if repository == "good/app":
            img = self.healthy if reference == "v1" else self.manifests.get(reference)
            if img is None:
                return Reply(
                    404,
                    {"Content-Type": "application/json"},
                    b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}',
                )
            return Reply(
                200, {"Content-Type": img.media_type, "Docker-Content-Digest": img.digest}, img.raw
            )
        headers = {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": _digest(self.bad)}
        if self.kind == "endless manifest":  # declares no length, sends past any bound
            chunk = b" " * (64 << 10)
            body = b"1\r\n{\r\n" + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 128 + b"0\r\n\r\n"
            return Reply(200, {**headers, "Transfer-Encoding": "chunked"}, body)
        return Reply(200, headers, self.bad)


@given(kind=HOSTILE_KINDS)
def test_anything_a_non_conforming_primary_sends(kind, secondary, secondary_reader, store):
    healthy = images.ImageFactory(layer_size=64).multi_arch()
    fake = FakePrimary(healthy, *kind)
    process, started = psutil.Process(), time.monotonic()
    rss_before = process.memory_info().rss
    with FakeServer(fake.answer) as server:
        config = RegistryConfig.from_connection(
            {
                "conn_type": "oci_registry",
                "host": server.url,
                "extra": {
                    "auth": "anonymous",
                    "max_retries": 0,
                    "max_json_depth": 16,
                    "max_manifest_bytes": 8192,
                    "max_listing_pages": 50,
                },
            }
        )
        with (
            RegistryClient(config) as source,
            RegistryClient(secondary.client_config(), writable=True) as target,
        ):
            report = run_sync(
                source, target, SyncOptions(prune=False), leases=Leases(store, "registry_secondary")
            )
        gets = Counter(
            r.path for r in server.received if r.method == "GET" and "/manifests/" in r.path
        )
    seconds = time.monotonic() - started
    MEASURED.add("fake registry", seconds, (process.memory_info().rss - rss_before) / 2**20)

    assert secondary_reader.get_manifest(fake.good, "v1").raw == healthy.raw
    assert report.failed and secondary_reader.head_manifest(fake.bad_name, "v1") is None
    named = [p["reason"] for p in report.primary.problems if p["repository"] == fake.bad_name]
    named += [s.reason for s in report.plan.skipped if s.repository == fake.bad_name]
    assert named, (kind, report.primary.problems, report.plan.skipped)
    assert max(gets.values()) == 1, gets  # each manifest asked for once
    assert seconds < EXAMPLE_SECONDS
