"""Plan a copy: which blobs to transfer or mount, and which manifests to push, in batches.

Blobs first, manifests after: a blob needed by several repositories crosses the network from
the primary once, into one repository; the others get it by cross-repository mount on the
secondary. A plan holds digests, not manifest bodies (the manifests it read stay in
``Plan.manifests`` for an in-process copy): the DAGs write its batches to the run's folder as
Parquet (``engine.artifacts``), and the CLI prints it as JSON (``Plan.to_dict``).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from registry_replication.engine.walk import ManifestCache, UnsupportedError, Walk
from registry_replication.outcomes import human_size
from registry_replication.settings import Settings
from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import Manifest, RegistryClient
from registry_replication.transport.errors import (
    LimitExceeded,
    NotFoundError,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailableError,
)
from registry_replication.transport.reference import Digest, Repository, Tag

log = logging.getLogger(__name__)

MAX_BATCHES = 256  # far below Airflow's max_map_length (1024)
# Images per push_manifests task, at least: each task costs about 0.15 s of its own (leases, the
# run folder, XCom) and drains its requests in flight at its end, so fewer, larger tasks push
# faster (5,000 tags: 50 tasks 33.4 s, 5 tasks 25.5 s), while 1,000 images are still a small
# unit to retry and to hold in memory.
IMAGE_BATCH = 1000
# Blobs per copy task: bounds a task's records, results and log, whatever the blobs' sizes.
MAX_BLOBS_PER_BATCH = 1000


@dataclass(frozen=True)
class WantedTag:
    """A tag the secondary should point at ``digest``, the primary's (as the caller knows it)."""

    repository: Repository
    tag: Tag
    digest: Digest


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
    """An image the plan leaves out, and why (unsupported type, unreadable manifest).

    ``permanent``: the object itself is the reason (malformed, unsupported, past a bound), so
    asking again changes nothing until it is pushed again; otherwise the registry could not
    answer (down, refusing us, too slow), and a later try may succeed.
    """

    repository: str
    tags: list[str]
    digest: str
    media_type: str
    reason: str
    permanent: bool = True


@dataclass
class Plan:
    blobs: list[BlobTask] = field(default_factory=list)
    images: list[ImageTask] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # Manifests read while planning, for an in-process copy to reuse (never serialised).
    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict, repr=False)
    cache: ManifestCache = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.cache = ManifestCache(self.manifests)

    @property
    def transfer_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.mount_from is None)

    def blob_batches(
        self,
        batch_bytes: int = Settings.blob_batch_bytes,
        max_batches: int = MAX_BATCHES,
        max_blobs: int = MAX_BLOBS_PER_BATCH,
    ) -> list[list[BlobTask]]:
        """Batches of about ``batch_bytes`` and at most ``max_blobs`` blobs each (unless that
        would take more than ``max_batches``), balanced by bytes (largest blob first)."""
        if not self.blobs:
            return []
        wanted = max(
            1, math.ceil(self.transfer_bytes / batch_bytes), math.ceil(len(self.blobs) / max_blobs)
        )
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
        self, batch_size: int = IMAGE_BATCH, max_batches: int = MAX_BATCHES
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
    images = sorted(tags_of.items())

    def image_task(item: tuple[tuple[str, str], set[str]]) -> tuple[ImageTask | None, dict]:
        return _image_task(primary, *item[0], sorted(item[1]), plan)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="plan") as pool:
        # An image whose manifest the listing read, and no index, needs no request: it is walked
        # here rather than as a future of its own (at 100,000 images, seconds of futures and
        # thread switches); the others read their manifests in the pool meanwhile.
        reading = {
            i: pool.submit(image_task, item)
            for i, item in enumerate(images)
            if not _read_whole(plan, item[0])
        }
        sizes: dict[str, int] = {}
        # digest -> repositories needing it (a dict as an ordered set: a blob every repository
        # shares is looked up once per image, not scanned for)
        needed: dict[str, dict[str, None]] = defaultdict(dict)
        for i, item in enumerate(images):  # each image's sizes are let go once merged
            future = reading.pop(i, None)
            task, blob_sizes = future.result() if future else image_task(item)
            if task is None:
                continue
            plan.images.append(task)
            sizes.update(blob_sizes)
            for digest in task.blobs:
                needed[digest][task.repository] = None
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
        len(plan.images),
        len(plan.blobs),
        sum(1 for b in plan.blobs if b.mount_from is None),
        human_size(plan.transfer_bytes),
        len(plan.skipped),
    )
    return plan


def _read_whole(plan: Plan, image: tuple[str, str]) -> bool:
    """Whether the image's manifest was read and has no children to read."""
    manifest = plan.manifests.get(image)
    return manifest is not None and manifest.media_type not in mt.INDEXES


def _image_task(
    primary: RegistryClient, repository: str, digest: str, tags: list[str], plan: Plan
) -> tuple[ImageTask | None, dict[str, int]]:
    """The image's task, or None once it is recorded as skipped: whatever its manifests raise
    (any exception, a bound exceeded, its time budget spent) is this image's outcome alone."""
    walk = Walk(primary, repository, plan.cache)
    try:
        manifest = walk.fetch(digest)
        walk.collect(manifest, depth=0)
    except Exception as exc:  # noqa: BLE001 - the unit's boundary: nothing escapes one image
        reason = _reason(exc)
        media_type = getattr(exc, "media_type", "") or walk.media_type
        permanent = not _may_pass(exc)
    else:
        task = ImageTask(
            repository, digest, manifest.media_type, tags, walk.children, sorted(walk.sizes)
        )
        return task, walk.sizes
    log.warning("skipping %s@%s (tags %s): %s", repository, digest, ", ".join(tags), reason)
    plan.skipped.append(Skipped(repository, tags, digest, media_type, reason, permanent))
    return None, {}


def _may_pass(exc: Exception) -> bool:
    """Whether asking again may succeed: the registry, not the object, failed (down, refusing
    our credentials, the image gone meanwhile, or slower than the time budget)."""
    if isinstance(exc, LimitExceeded):
        return exc.setting == "image_plan_seconds"
    return isinstance(exc, (RegistryUnavailableError, RegistryAuthError, NotFoundError))


def _reason(exc: Exception) -> str:
    if isinstance(exc, (RegistryError, UnsupportedError)):
        return str(exc)
    if isinstance(exc, RecursionError):  # a bound should have held first: say so plainly
        return "the manifest nests too deeply to read (RecursionError); delete or re-push it"
    # Anything else the manifest's contents raised: malformed for what it claims to be.
    return (
        f"malformed manifest ({type(exc).__name__}: {str(exc)[:200]}); delete or re-push "
        "it on the primary"
    )


def _has_blob(secondary: RegistryClient, repository: str, digest: str) -> bool:
    # Not contained per blob: the digest is validated, so only the secondary itself can fail
    # here (down, refusing us), and that ends the run at once rather than blob by blob.
    return secondary.has_blob(repository, digest)


def _cost(task: BlobTask) -> int:
    # A mount moves no bytes but still costs a request; count it as a small blob.
    return 64 * 1024 if task.mount_from else max(task.size, 64 * 1024)


def batch_label(batch: Sequence[BlobTask], index: int, total: int) -> str:
    size = sum(t.size for t in batch if t.mount_from is None)
    return f"blobs {index + 1}/{total} ({human_size(size)})"
