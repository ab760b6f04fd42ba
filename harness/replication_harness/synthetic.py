"""Synthetic corpora for the benchmarks, pushed concurrently into a primary.

Two layouts over ``--repos`` repositories holding ``--tags`` tags in total (round-robin; half
the repositories Docker v2 media types, half OCI; every tenth image a multi-arch index):

* ``plan_corpus``: about ``unique_mib`` MiB of unique layer bytes, two unique top layers per
  image over a few base layer sets shared across repositories (the byte-copy benchmark);
* ``plan_scale_corpus``: the same repositories, tags and media types, but every manifest is
  made of blobs shared within its repository (the base set, two of a small pool of top
  layers, one config per architecture), so N tags cost N manifest ``PUT``\\ s and a few
  hundred blob uploads: a registry of 100,000 tags is pushed in minutes (the scale benchmark).

``generate`` pushes either; ``ensure_generated`` skips that when the same corpus is already in
the registry's storage (a marker file), so a long run can reuse a primary filled earlier.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import RegistryClient
from replication_harness.images import Blob, Image, image, index, shared_config
from replication_harness.registry import LocalRegistry

MiB = 1 << 20
BASE_LAYER_SHARES = (0.6, 0.3, 0.1)  # a base set: a big OS layer, a runtime, a small tweak
BASE_FRACTION = 0.25  # of the unique bytes, in the shared base sets
TOP_LAYERS = 2  # unique layers per image (per platform)


@dataclass
class TagSpec:
    repository: str
    tag: str
    docker: bool
    base: int  # which base layer set
    platforms: list[tuple[str, list[int]]]  # (architecture, unique top layer sizes)
    number: int = 0  # the tag's position in its repository (the scale layout's layer pair)


@dataclass
class Corpus:
    repositories: list[str]
    specs: list[TagSpec]
    base_sets: list[list[bytes]] = field(default_factory=list)
    # The scale layout: per repository, its pool of top layers (empty: unique top layers).
    pools: dict[str, list[bytes]] = field(default_factory=dict)
    blobs: dict[str, tuple[int, str]] = field(default_factory=dict)  # digest -> (size, a repo)
    repo_blobs: set[tuple[str, str]] = field(default_factory=set)
    manifests: int = 0
    manifest_bytes: int = 0
    seconds: float = 0.0
    parameters: dict[str, object] = field(default_factory=dict)
    # Shared blobs built once (each hashes its bytes once): (kind, key, docker) -> Blob.
    shared: dict[tuple[object, ...], Blob] = field(default_factory=dict, repr=False)

    def blob(self, key: tuple[object, ...], make: Callable[[], Blob]) -> Blob:
        found = self.shared.get(key)
        if found is None:
            found = self.shared.setdefault(key, make())
        return found

    @property
    def tags(self) -> int:
        return len(self.specs)

    @property
    def indexes(self) -> int:
        return sum(1 for s in self.specs if len(s.platforms) > 1)

    @property
    def unique_bytes(self) -> int:
        return sum(size for size, _ in self.blobs.values())

    @property
    def logical_bytes(self) -> int:
        """Blob bytes counted once per repository holding them (what no dedup would move)."""
        return sum(self.blobs[d][0] for _, d in self.repo_blobs)


def _layout(
    repos: int, tags: int, base_sets: int, unique_mib: float, seed: int
) -> tuple[Corpus, random.Random, int]:
    rng = random.Random(seed)
    width = max(2, len(str(repos - 1)))
    names = [f"app-{i:0{width}d}" for i in range(repos)]
    budget = int(unique_mib * MiB)
    base_budget = int(budget * BASE_FRACTION) // base_sets
    corpus = Corpus(names, [])
    corpus.base_sets = [
        [rng.randbytes(max(1024, int(base_budget * share))) for share in BASE_LAYER_SHARES]
        for _ in range(base_sets)
    ]
    per_repo: dict[str, int] = {}
    for i in range(tags):
        repo = names[i % repos]
        n = per_repo[repo] = per_repo.get(repo, -1) + 1
        archs = ["amd64", "arm64"] if i % 10 == 9 else ["amd64"]
        corpus.specs.append(
            TagSpec(
                repo,
                f"v{n}.0",
                docker=(i % repos) % 2 == 1,
                base=(i % repos) % base_sets,
                platforms=[(arch, []) for arch in archs],
                number=n,
            )
        )
    top_budget = max(0, budget - sum(len(b) for s in corpus.base_sets for b in s))
    return corpus, rng, top_budget


def plan_corpus(repos: int, tags: int, unique_mib: float, base_sets: int, seed: int) -> Corpus:
    """Unique top layers per image, log-normal sizes (a few big layers, many small ones)."""
    corpus, rng, top_budget = _layout(repos, tags, base_sets, unique_mib, seed)
    slots = [
        sizes for spec in corpus.specs for _, sizes in spec.platforms for _ in range(TOP_LAYERS)
    ]
    weights = [rng.lognormvariate(0, 1) for _ in slots]
    scale = top_budget / sum(weights)
    for sizes, weight in zip(slots, weights):
        sizes.append(max(256, int(weight * scale)))
    corpus.parameters = {
        "layout": "unique",
        "repos": repos,
        "tags": tags,
        "unique_mib": unique_mib,
        "base_sets": base_sets,
        "seed": seed,
    }
    return corpus


def pool_size(tags_per_repository: int) -> int:
    """Top layers per repository so that every tag gets its own ordered pair of them."""
    return max(2, math.ceil((1 + math.sqrt(1 + 4 * tags_per_repository)) / 2))


def plan_scale_corpus(
    repos: int, tags: int, unique_mib: float, base_sets: int, seed: int
) -> Corpus:
    """Every tag a distinct manifest over blobs its repository shares (see the module doc)."""
    corpus, rng, top_budget = _layout(repos, tags, base_sets, unique_mib, seed)
    pool = pool_size(math.ceil(tags / repos))
    size = max(256, top_budget // max(1, repos * pool))
    corpus.pools = {
        repo: [rng.randbytes(size) for _ in range(pool)] for repo in corpus.repositories
    }
    corpus.parameters = {
        "layout": "scale",
        "repos": repos,
        "tags": tags,
        "unique_mib": unique_mib,
        "base_sets": base_sets,
        "seed": seed,
    }
    return corpus


def _pair(number: int, pool: int) -> tuple[int, int]:
    """The ``number``-th ordered pair of distinct indexes below ``pool``."""
    first, second = divmod(number, pool - 1)
    return first, second + (second >= first)


def image_of(spec: TagSpec, corpus: Corpus) -> Image:
    layer_type = mt.DOCKER_LAYER if spec.docker else mt.OCI_LAYER
    base = [
        corpus.blob(("base", spec.base, i, spec.docker), lambda data=data: Blob(data, layer_type))
        for i, data in enumerate(corpus.base_sets[spec.base])
    ]
    children = []
    for arch, sizes in spec.platforms:
        if corpus.pools:
            pool = corpus.pools[spec.repository]
            top = [
                corpus.blob(
                    ("top", spec.repository, i, spec.docker),
                    lambda pool=pool, i=i: Blob(pool[i], layer_type),
                )
                for i in _pair(spec.number, len(pool))
            ]
            # One config per repository and architecture, shared by its manifests.
            config = corpus.blob(
                ("config", spec.repository, arch, spec.docker),
                lambda arch=arch: shared_config(spec.repository, arch, docker=spec.docker),
            )
            children.append(image([*base, *top], docker=spec.docker, config=config))
        else:
            top = [Blob(os.urandom(size), layer_type) for size in sizes]
            children.append(
                image(
                    [*base, *top],
                    docker=spec.docker,
                    architecture=arch,
                    label=f"{spec.repository}:{spec.tag}",
                )
            )
    return children[0] if len(children) == 1 else index(children, docker=spec.docker)


def generate(primary: LocalRegistry, corpus: Corpus, threads: int) -> None:
    """Build every image and push it, ``threads`` images at a time."""
    started = time.monotonic()
    lock = threading.Lock()
    holders: dict[str, str] = {}  # digest -> a repository on the primary holding it
    pushed: dict[tuple[str, str], threading.Event] = {}  # (repository, blob): set once there

    def push(client: RegistryClient, repo: str, img: Image, tags: Sequence[str]) -> None:
        for blob in img.blobs:
            digest = blob.digest
            with lock:
                corpus.blobs.setdefault(digest, (blob.size, repo))
                corpus.repo_blobs.add((repo, digest))
                holder = holders.get(digest)
                # One upload per repository and blob: distribution rewrites the repository's
                # link file on each upload, and a manifest PUT that reads it meanwhile fails
                # (DIGEST_INVALID).
                uploading = pushed.get((repo, digest))
                if uploading is None:
                    uploading = pushed[(repo, digest)] = threading.Event()
                    mine = True
                else:
                    mine = False
            if not mine:
                uploading.wait()
                continue
            try:
                if not client.has_blob(repo, digest) and not (
                    holder and holder != repo and client.mount_blob(repo, digest, holder)
                ):
                    client.push_blob(repo, digest, blob.data, blob.size)
                with lock:
                    holders.setdefault(digest, repo)
            finally:
                uploading.set()  # a failed upload fails its own push; the waiters' fail later
        for child in img.children:
            push(client, repo, child, ())
        with lock:
            corpus.manifests += 1
            corpus.manifest_bytes += len(img.raw)
        for ref in list(tags) or [img.digest]:
            client.put_manifest(repo, ref, img.raw, img.media_type)

    with RegistryClient(primary.client_config(max_connections=threads), writable=True) as client:
        # Each repository's first image first (base sets first of all, one repository each),
        # so that every later image finds its blobs there, or mounts them.
        firsts: dict[object, TagSpec] = {}
        for spec in corpus.specs:
            firsts.setdefault(spec.base, spec)
        seconds: dict[object, TagSpec] = {}
        for spec in corpus.specs:
            if firsts.get(spec.base) is not spec:
                seconds.setdefault(spec.repository, spec)
        waves = [list(firsts.values()), list(seconds.values())]
        done = {id(s) for wave in waves for s in wave}
        waves.append([s for s in corpus.specs if id(s) not in done])
        with ThreadPoolExecutor(threads) as pool:
            for wave in waves:
                list(
                    pool.map(
                        lambda s: push(client, s.repository, image_of(s, corpus), [s.tag]), wave
                    )
                )
    corpus.seconds = time.monotonic() - started


def ensure_generated(primary: LocalRegistry, corpus: Corpus, threads: int) -> bool:
    """Push ``corpus`` unless the primary's storage already holds it; True if it pushed.

    The marker is written only after every push succeeded, so a half-filled primary is
    filled again (pushes are idempotent).
    """
    marker = primary.workdir / "corpus.json"
    wanted = json.dumps(corpus.parameters, sort_keys=True)
    if marker.exists():
        saved = json.loads(marker.read_text())
        if json.dumps(saved["parameters"], sort_keys=True) == wanted:
            corpus.manifests, corpus.manifest_bytes = saved["manifests"], saved["manifest_bytes"]
            corpus.blobs = {d: (s, r) for d, (s, r) in saved["blobs"].items()}
            corpus.repo_blobs = {tuple(p) for p in saved["repo_blobs"]}
            corpus.seconds = 0.0
            return False
    generate(primary, corpus, threads)
    marker.write_text(
        json.dumps(
            {
                "parameters": corpus.parameters,
                "manifests": corpus.manifests,
                "manifest_bytes": corpus.manifest_bytes,
                "blobs": corpus.blobs,
                "repo_blobs": sorted(corpus.repo_blobs),
                "seconds": corpus.seconds,
            }
        )
    )
    return True
