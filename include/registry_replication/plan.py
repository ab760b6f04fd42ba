"""Plan a copy: which blobs to transfer or mount, and which manifests to push, in batches.

Blobs first, manifests after: a blob needed by several repositories crosses the network from
the primary once, into one repository; the others get it by cross-repository mount on the
secondary. Plans and batches are plain JSON (digests, not manifest bodies) so that an
orchestrator can pass them between tasks.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from registry_replication import mediatypes as mt
from registry_replication.client import Manifest, RegistryClient
from registry_replication.errors import RegistryError
from registry_replication.outcomes import human_size

log = logging.getLogger(__name__)

DEFAULT_BATCH_BYTES = 1 << 30
MAX_BATCHES = 256  # far below Airflow's max_map_length (1024)
# Blobs per copy task: bounds a task's records, results and log, whatever the blobs' sizes.
MAX_BLOBS_PER_BATCH = 1000


@dataclass(frozen=True)
class WantedTag:
    """A tag the secondary should point at ``digest``, the primary's (as the caller knows it)."""

    repository: str
    tag: str
    digest: str


@dataclass
class BlobTask:
    """Put one blob into ``target`` (and then ``mounts``) on the secondary.

    The bytes come from ``source`` on the primary, unless ``mount_from`` names a secondary
    repository that already holds them.
    """

    digest: str
    size: int
    source: str
    target: str
    mounts: list[str] = field(default_factory=list)
    mount_from: str | None = None

    @property
    def repositories(self) -> list[str]:
        return [self.target, *self.mounts]


@dataclass
class ImageTask:
    """Push one manifest (children first, by digest) and then point its tags at it."""

    repository: str
    digest: str
    media_type: str
    tags: list[str]
    children: list[str] = field(default_factory=list)  # digests, in push order
    blobs: list[str] = field(default_factory=list)  # every blob it needs, children's included

    @property
    def label(self) -> str:
        more = f" +{len(self.tags) - 1} more" if len(self.tags) > 1 else ""
        return f"{self.repository}:{self.tags[0]}{more}" if self.tags else self.repository


@dataclass
class Skipped:
    """An image the plan leaves out, and why (unsupported type, unreadable manifest)."""

    repository: str
    tags: list[str]
    digest: str
    media_type: str
    reason: str


@dataclass
class Plan:
    blobs: list[BlobTask] = field(default_factory=list)
    images: list[ImageTask] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # Manifests read while planning, for an in-process copy to reuse (never serialised).
    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict, repr=False)

    @property
    def transfer_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.mount_from is None)

    def blob_batches(
        self, batch_bytes: int = DEFAULT_BATCH_BYTES, max_batches: int = MAX_BATCHES,
        max_blobs: int = MAX_BLOBS_PER_BATCH,
    ) -> list[list[BlobTask]]:
        """Batches of about ``batch_bytes`` and at most ``max_blobs`` blobs each (unless that
        would take more than ``max_batches``), balanced by bytes (largest blob first)."""
        if not self.blobs:
            return []
        wanted = max(1, math.ceil(self.transfer_bytes / batch_bytes),
                     math.ceil(len(self.blobs) / max_blobs))
        count = min(max_batches, len(self.blobs), wanted)
        cap = max(max_blobs, math.ceil(len(self.blobs) / count))
        heap = [(0, i) for i in range(count)]
        batches: list[list[BlobTask]] = [[] for _ in range(count)]
        for task in sorted(self.blobs, key=lambda t: (-_cost(t), t.digest)):
            load, i = heapq.heappop(heap)
            batches[i].append(task)
            if len(batches[i]) < cap:  # a full batch takes no more
                heapq.heappush(heap, (load + _cost(task), i))
        return batches

    def image_batches(
        self, batch_size: int = 100, max_batches: int = MAX_BATCHES
    ) -> list[list[ImageTask]]:
        if not self.images:
            return []
        size = max(batch_size, math.ceil(len(self.images) / max_batches))
        return [self.images[i : i + size] for i in range(0, len(self.images), size)]

    def to_dict(self) -> dict[str, object]:
        return {
            "blobs": [asdict(b) for b in self.blobs],
            "images": [asdict(i) for i in self.images],
            "skipped": [asdict(s) for s in self.skipped],
        }

    @classmethod
    def from_dict(cls, data: dict[str, list[dict]]) -> Plan:
        return cls(
            [BlobTask(**b) for b in data.get("blobs", [])],
            [ImageTask(**i) for i in data.get("images", [])],
            [Skipped(**s) for s in data.get("skipped", [])],
        )


def build_plan(
    primary: RegistryClient,
    secondary: RegistryClient,
    wanted: Iterable[WantedTag],
    *,
    concurrency: int = 16,
    known_manifests: Mapping[tuple[str, str], Manifest] | None = None,
) -> Plan:
    """Plan the copy of every wanted tag: each image (repository, digest) once, with its tags.

    ``known_manifests``: {(repository, digest): manifest} already read (by the listing), not
    read again."""
    tags_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for w in wanted:
        tags_of[(w.repository, w.digest)].add(w.tag)
    plan = Plan()
    for image in tags_of if known_manifests else ():
        if (found := known_manifests.get(image)) is not None:
            plan.manifests[image] = found
    with ThreadPoolExecutor(concurrency, thread_name_prefix="plan") as pool:
        tasks = pool.map(lambda item: _image_task(primary, *item[0], sorted(item[1]), plan),
                         sorted(tags_of.items()))
        sizes: dict[str, int] = {}
        needed: dict[str, list[str]] = defaultdict(list)  # digest -> repositories needing it
        for task, blob_sizes in tasks:  # each image's sizes are let go once merged
            if task is None:
                continue
            plan.images.append(task)
            sizes.update(blob_sizes)
            for digest in task.blobs:
                if task.repository not in needed[digest]:
                    needed[digest].append(task.repository)
        pairs = [(repo, digest) for digest, repos in needed.items() for repo in repos]
        present = dict(zip(pairs, pool.map(lambda p: _has_blob(secondary, *p), pairs)))
    for digest, repos in needed.items():
        holders = [repo for repo in repos if present[(repo, digest)]]
        lacking = [repo for repo in repos if not present[(repo, digest)]]
        if not lacking:
            continue
        plan.blobs.append(
            BlobTask(
                digest=digest,
                size=sizes[digest],
                source=lacking[0],
                target=lacking[0],
                mounts=lacking[1:],
                mount_from=holders[0] if holders else None,
            )
        )
    log.info(
        "plan: %d images to push, %d blobs (%d to transfer, %s), %d skipped",
        len(plan.images), len(plan.blobs), sum(1 for b in plan.blobs if b.mount_from is None),
        human_size(plan.transfer_bytes), len(plan.skipped),
    )
    return plan


def _image_task(
    primary: RegistryClient, repository: str, digest: str, tags: list[str], plan: Plan
) -> tuple[ImageTask | None, dict[str, int]]:
    media_type = ""
    try:
        manifest = _fetch(primary, repository, digest, plan)
        children: list[str] = []
        sizes: dict[str, int] = {}
        _collect(primary, repository, manifest, children, sizes, plan)
    except (RegistryError, UnsupportedError) as exc:
        reason = str(exc)
        media_type = getattr(exc, "media_type", "") or ""
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # A manifest that is not the JSON its media type promises (or names a child digest
        # out of grammar): this image's problem, not the run's.
        reason = f"malformed manifest ({type(exc).__name__}: {str(exc)[:200]}); re-push it"
    else:
        task = ImageTask(repository, digest, manifest.media_type, tags, children, sorted(sizes))
        return task, sizes
    log.warning("skipping %s@%s (tags %s): %s", repository, digest, ", ".join(tags), reason)
    plan.skipped.append(Skipped(repository, tags, digest, media_type, reason))
    return None, {}


class UnsupportedError(Exception):
    def __init__(self, message: str, media_type: str) -> None:
        super().__init__(message)
        self.media_type = media_type


def _fetch(primary: RegistryClient, repository: str, digest: str, plan: Plan) -> Manifest:
    manifest = plan.manifests.get((repository, digest))  # known_manifests
    if manifest is None:
        manifest = primary.get_manifest(repository, digest)
        plan.manifests[(repository, digest)] = manifest
    return manifest


def _collect(
    primary: RegistryClient,
    repository: str,
    manifest: Manifest,
    children: list[str],
    sizes: dict[str, int],
    plan: Plan,
) -> None:
    """Walk a manifest: children (depth first, so they are pushed before their index) and blobs."""
    if manifest.media_type in mt.SCHEMA1:
        raise UnsupportedError(
            "Docker schema 1 manifests are not supported (deprecated, signed per registry); "
            "rebuild and push the image with a current client",
            manifest.media_type,
        )
    # Parsed here and dropped: the plan keeps every manifest's bytes, and a parsed copy of
    # each (``manifest.json`` caches it) would multiply a large plan's memory.
    body = json.loads(manifest.raw)
    if manifest.media_type in mt.INDEXES:
        for child in body.get("manifests") or []:
            child_digest = sys.intern(child["digest"])
            child_manifest = _fetch(primary, repository, child_digest, plan)
            _collect(primary, repository, child_manifest, children, sizes, plan)
            if child_digest not in children:
                children.append(child_digest)
        return
    if manifest.media_type not in mt.IMAGE_MANIFESTS:
        raise UnsupportedError(f"unsupported manifest media type {manifest.media_type!r}", manifest.media_type)
    for descriptor in _blob_descriptors(body):
        if descriptor.get("urls"):
            continue  # foreign, non-distributable layer: lives outside the registry
        # Interned: images share blobs, and a plan holds every image's list of them.
        sizes[sys.intern(descriptor["digest"])] = int(descriptor["size"])


def _blob_descriptors(body: dict) -> Iterable[dict]:
    if body.get("config"):
        yield body["config"]
    yield from body.get("layers") or []


def _has_blob(secondary: RegistryClient, repository: str, digest: str) -> bool:
    return secondary.blob_size(repository, digest) is not None


def _cost(task: BlobTask) -> int:
    # A mount moves no bytes but still costs a request; count it as a small blob.
    return 64 * 1024 if task.mount_from else max(task.size, 64 * 1024)


def batch_label(batch: Sequence[BlobTask], index: int, total: int) -> str:
    size = sum(t.size for t in batch if t.mount_from is None)
    return f"blobs {index + 1}/{total} ({human_size(size)})"

