"""Copy blobs and manifests from the primary to the secondary.

Blobs stream primary -> secondary in constant memory, verified against their digest, several
in parallel; the secondary's client uploads each one (``RegistryClient.upload_blob``: ``PATCH``
chunks above the chunk size, resumed from the registry's offset after an interruption).
Manifests are pushed with the primary's exact bytes and media type, children before their
index, tags last; the registry itself refuses a manifest whose blobs are not there, so the
secondary never serves an incomplete tag. Every outcome is a record (``BlobResult``,
``ImageResult``) for logs and summaries.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field

from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import BlobTask, ImageTask, Plan
from registry_replication.outcomes import (
    NOT_PUSHED,
    BlobOutcome,
    ImageOutcome,
    describe,
    failed_digests,
    human_size,
)
from registry_replication.store.record import TagRecord
from registry_replication.transport.client import Descriptor, Manifest, RegistryClient
from registry_replication.transport.upload import MiB, OpenBody, Upload

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 128 * MiB
# Tags per batch of tag writes: one intent and one record transaction in the store each.
TAG_BATCH = 64
# What one tag write came to.
_WRITTEN, _FOUND, _MOVED = "written", "found", "moved"


@dataclass
class BlobResult:
    repository: str
    digest: str
    size: int
    outcome: BlobOutcome
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    status: int | None = None
    code: str | None = None

    def log_line(self) -> str:
        rate = (
            f", {self.bytes / MiB / self.seconds:.1f} MiB/s" if self.bytes and self.seconds else ""
        )
        line = (
            f"blob {self.outcome:<7} {self.repository}@{self.digest} "
            f"{human_size(self.size)} in {self.seconds:.2f}s{rate}"
        )
        return f"{line}: {self.error}" if self.error else line


@dataclass
class ImageResult:
    repository: str
    digest: str
    tags: list[str]
    media_type: str
    outcome: ImageOutcome
    manifests_pushed: int = 0
    seconds: float = 0.0
    error: str | None = None
    # Tags the primary moved (to this digest, or None: deleted) after the plan: left to the
    # writer that replicates the newer state, never overwritten with the planned one.
    moved: dict[str, str | None] = field(default_factory=dict)

    def log_line(self) -> str:
        line = (
            f"image {self.outcome:<7} {self.repository}:{','.join(self.tags)} {self.digest} "
            f"({self.manifests_pushed} manifests pushed)"
        )
        if self.moved:
            line += "; moved on the primary since the plan, left to the newer writer: " + ", ".join(
                f"{tag} -> {digest or 'deleted'}" for tag, digest in sorted(self.moved.items())
            )
        return f"{line}: {self.error}" if self.error else line


@dataclass
class _Progress:
    """Bytes moved so far, logged every ``progress_interval`` seconds while a transfer runs."""

    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        pct = 100 * self.done / self.total if self.total else 100
        eta = (self.total - self.done) / rate if rate and self.total > self.done else 0
        return (
            f"progress: {human_size(self.done)} of {human_size(self.total)} ({pct:.0f}%), "
            f"{rate / MiB:.1f} MiB/s, ETA {eta:.0f}s"
        )


def _log_result(result: BlobResult | ImageResult) -> None:
    failed = result.outcome in (BlobOutcome.FAILED, *NOT_PUSHED)
    (log.error if failed else log.info)(result.log_line())


@dataclass(eq=False)  # a copier is one object with its own state, equal only to itself
class Copier:
    """Copies blob and image tasks with a bounded number of transfers in flight.

    ``recheck=False`` trusts a plan made moments ago in this process and skips the existence
    checks before each blob and tag; tasks that run later (Airflow batches, retries) keep them,
    so a rerun never transfers what is already there.

    ``parallelism``: blob transfers, or batches of tag writes, in flight; ``concurrency``:
    manifest requests in flight.

    ``leases``: tags are written only under the repository's lease, and only while the primary
    still has the planned digest (checked just before each write)."""

    primary: RegistryClient
    secondary: RegistryClient
    _: KW_ONLY
    leases: Leases
    parallelism: int = 8
    concurrency: int = 16
    chunk_size: int = DEFAULT_CHUNK_SIZE
    progress_interval: float = 10.0
    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict, repr=False)
    on_result: Callable[[BlobResult | ImageResult], None] = _log_result
    recheck: bool = True
    record: TagRecord = field(init=False, repr=False)  # what cheap runs read instead of listing
    _progress: _Progress | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.record = TagRecord(self.leases.store, self.leases.secondary)

    # -- blobs ----------------------------------------------------------------------------------

    def copy_blobs(self, tasks: Sequence[BlobTask]) -> list[BlobResult]:
        self.cancel_abandoned_uploads()
        total = sum(t.size for t in tasks if t.mount_from is None)
        self._progress = _Progress(total)
        stop = threading.Event()
        reporter = threading.Thread(target=self._report, args=(stop,), daemon=True)
        reporter.start()
        try:
            with ThreadPoolExecutor(self.parallelism, thread_name_prefix="copy") as pool:
                results = [r for batch in pool.map(self.copy_blob, tasks) for r in batch]
        finally:
            stop.set()
            reporter.join()
        return results

    def _report(self, stop: threading.Event) -> None:
        while not stop.wait(self.progress_interval):
            log.info(self._progress.line())

    def copy_blob(self, task: BlobTask, open_body: OpenBody | None = None) -> list[BlobResult]:
        """Put the blob into every repository of the task; one result per repository.
        ``open_body``: the target's bytes from elsewhere than a read of the primary (a fan-out)."""
        results = [self._mount_or_copy(task, task.target, task.mount_from, open_body)]
        source_ok = results[0].outcome != BlobOutcome.FAILED
        for repository in task.mounts:
            results.append(
                self._mount_or_copy(task, repository, task.target if source_ok else None)
            )
        for result in results:
            self.on_result(result)
        return results

    def _mount_or_copy(
        self,
        task: BlobTask,
        repository: str,
        mount_from: str | None,
        open_body: OpenBody | None = None,
    ) -> BlobResult:
        started = time.monotonic()
        result = BlobResult(repository, task.digest, task.size, BlobOutcome.SKIPPED)
        try:
            if self.recheck and self.secondary.has_blob(repository, task.digest):
                pass  # already there: a rerun never transfers it again
            elif mount_from and self.secondary.mount_blob(repository, task.digest, mount_from):
                result.outcome = BlobOutcome.MOUNTED
            else:
                result.bytes = self._transfer(task, repository, open_body)
                result.outcome = BlobOutcome.COPIED
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this blob, this repository
            result.outcome = BlobOutcome.FAILED
            result.error = describe(exc)
            result.status = getattr(exc, "status", None)
            result.code = getattr(exc, "code", None)
        result.seconds = time.monotonic() - started
        return result

    def cancel_abandoned_uploads(self) -> None:
        """Cancel the upload sessions that writers killed mid-upload left open on the secondary."""
        for upload in self.leases.abandoned_uploads():
            if self.secondary.cancel_upload(Upload(upload["repository"], upload["location"])):
                log.info(
                    "cancelled an upload session a stopped writer left open in %s (%s)",
                    upload["repository"],
                    upload["location"].split("?")[0],
                )

    def _transfer(self, task: BlobTask, repository: str, source: OpenBody | None = None) -> int:
        """Stream the blob from the primary into the secondary; returns the bytes read.

        The secondary's client uploads it (and resumes it after an interruption, reopening the
        primary's stream at the registry's offset); its sessions are recorded in the store
        while open, so the next writer cancels those of a writer killed mid-upload.
        """
        read = 0
        tracked: set[str] = set()

        def open_body(offset: int) -> Iterator[bytes]:
            nonlocal read
            chunks = (
                source(offset)
                if source
                else self.primary.read_blob(task.source, task.digest, offset=offset)
            )
            for chunk in chunks:
                read += len(chunk)
                if self._progress:
                    self._progress.add(len(chunk))
                yield chunk

        def track(upload: Upload) -> None:
            tracked.add(self.leases.track_upload(self.secondary.url, repository, upload.location))

        try:
            self.secondary.upload_blob(
                repository,
                task.digest,
                task.size,
                open_body,
                chunk_size=self.chunk_size,
                on_session=track,
            )
        finally:
            for resource in tracked:
                self.leases.forget(resource)
        return read

    # -- manifests ------------------------------------------------------------------------------

    def push_images(
        self, tasks: Sequence[ImageTask], failed_blobs: Iterable[str] = ()
    ) -> list[ImageResult]:
        """Push images a batch at a time (one repository's, up to ``TAG_BATCH`` tags),
        ``parallelism`` batches at once (while one writes the store, the others' requests are in
        flight), their requests ``concurrency`` in flight; results in ``tasks``' order."""
        failed = set(failed_blobs)
        batches: list[list[ImageTask]] = []
        for _repository, group in itertools.groupby(
            sorted(range(len(tasks)), key=lambda i: tasks[i].repository),
            key=lambda i: tasks[i].repository,
        ):
            batch: list[ImageTask] = []
            for i in group:
                if sum(len(t.tags) for t in batch) + len(tasks[i].tags) > TAG_BATCH and batch:
                    batches.append(batch)
                    batch = []
                batch.append(tasks[i])
            batches.append(batch)
        with (
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="push") as requests,
            ThreadPoolExecutor(self.parallelism, thread_name_prefix="push-batch") as batcher,
        ):
            done = batcher.map(lambda b: self._push_batch(b, failed, requests), batches)
            by_task = {
                id(t): r for batch, results in zip(batches, done) for t, r in zip(batch, results)
            }
        return [by_task[id(t)] for t in tasks]

    def _push_batch(
        self, tasks: Sequence[ImageTask], failed_blobs: set[str], requests: ThreadPoolExecutor
    ) -> list[ImageResult]:
        """One repository's images: children first (by digest), then, under the repository's
        lease, one intent for every tag of the batch, each tag's compare-and-set and write,
        and one record of what the secondary acknowledged."""
        started = time.monotonic()
        repository = tasks[0].repository
        results = [
            ImageResult(t.repository, t.digest, t.tags, t.media_type, ImageOutcome.SKIPPED)
            for t in tasks
        ]
        ready = []
        for task, result in zip(tasks, results):
            blocked = sorted(set(task.blobs) & failed_blobs)
            if blocked:
                result.outcome = ImageOutcome.BLOCKED
                result.error = (
                    f"not pushed: blob {blocked[0]}"
                    + (f" and {len(blocked) - 1} more" if len(blocked) > 1 else "")
                    + " failed to copy; fix that blob and rerun"
                )
            else:
                ready.append((task, result))
        ready = [pair for pair, ok in zip(ready, requests.map(self._push_children, ready)) if ok]
        writes = [(task, result, tag) for task, result in ready for tag in task.tags]
        if writes:
            try:
                self._write_tags(repository, writes, requests)
            except Exception as exc:  # noqa: BLE001 - the unit's boundary: this batch's images
                for _, result in ready:
                    result.outcome, result.error = ImageOutcome.FAILED, describe(exc)
        seconds = (time.monotonic() - started) / max(1, len(tasks))
        for _, result in ready:
            if result.outcome != ImageOutcome.FAILED:
                result.outcome = (
                    ImageOutcome.PUSHED if result.manifests_pushed else ImageOutcome.SKIPPED
                )
        for result in results:
            result.seconds = seconds  # the batch's time, shared by its images
            self.on_result(result)
        return results

    def _write_tags(
        self,
        repository: str,
        writes: list[tuple[ImageTask, ImageResult, str]],
        requests: ThreadPoolExecutor,
    ) -> None:
        """The batch's tags, under the repository's lease."""
        with self.leases.repository(repository):
            # Intent first, for the whole batch: a writer killed before the record leaves
            # "unknown" on every tag it may have written, never a stale digest. (A tag that
            # moved keeps its intent: the next cheap run asks the secondary about it.)
            self.record.intend(repository, [tag for _, _, tag in writes], self.leases.owner)
            landed = {}
            for (task, result, tag), outcome in zip(
                writes, requests.map(lambda w: self._write_tag(*w), writes)
            ):
                if isinstance(outcome, Exception):
                    result.outcome, result.error = ImageOutcome.FAILED, describe(outcome)
                elif outcome != _MOVED:
                    landed[tag] = (task.digest, task.media_type)
                    result.manifests_pushed += outcome == _WRITTEN
            self.record.record_all(repository, landed, self.leases.owner)

    def _push_children(self, item: tuple[ImageTask, ImageResult]) -> bool:
        """An index's children, by digest: no tag moves, so no lease needed (nor a check first
        without ``recheck``: pushing one again changes nothing). False: failed."""
        task, result = item
        try:
            for child in task.children:
                if not self.recheck or self.secondary.head_manifest(task.repository, child) is None:
                    self._push(task.repository, child, child)
                    result.manifests_pushed += 1
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this image
            result.outcome, result.error = ImageOutcome.FAILED, describe(exc)
            return False
        return True

    def _write_tag(self, task: ImageTask, result: ImageResult, tag: str) -> str | Exception:
        """``_push_tag``, its failure returned rather than raised (one tag fails its image)."""
        try:
            return self._push_tag(task, tag, result)
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this tag's image
            return exc

    def _push_tag(self, task: ImageTask, tag: str, result: ImageResult) -> str:
        """Point ``tag`` at the planned digest, if the primary still does (compare-and-set,
        conditional: 304 when the tag is unchanged, without the registry reading the
        manifest). Returns ``_WRITTEN``, ``_FOUND`` (already there) or ``_MOVED``."""
        planned = Descriptor(task.digest, task.media_type)
        now = self.primary.head_manifest(task.repository, tag, known=planned)
        if now is None or now.digest != task.digest:
            result.moved[tag] = now.digest if now else None
            return _MOVED
        if self.recheck:
            current = self.secondary.head_manifest(task.repository, tag, known=planned)
            if current is not None and current.digest == task.digest:
                return _FOUND
        self.leases.check()
        self._push(task.repository, task.digest, tag)
        return _WRITTEN

    def _push(self, repository: str, digest: str, reference: str) -> None:
        manifest = self.manifests.get((repository, digest))
        if manifest is None:
            manifest = self.primary.get_manifest(repository, digest)
            self.manifests[(repository, digest)] = manifest
        self.secondary.put_manifest(repository, reference, manifest.raw, manifest.media_type)


def copy_plan(
    primary: RegistryClient,
    secondary: RegistryClient,
    plan: Plan,
    *,
    leases: Leases,
    recheck: bool,
    parallelism: int,
    concurrency: int = 16,
    chunk_size: int | None = None,
    on_copied: Callable[[int], None] | None = None,
) -> tuple[list[BlobResult], list[ImageResult]]:
    """A plan made in this process, copied by one ``Copier`` (with the manifests the plan
    read): its blobs, then its images (an image whose blobs failed is not pushed).
    ``on_copied``: the bytes the blobs copied, before the images are pushed."""
    copier = Copier(
        primary,
        secondary,
        leases=leases,
        parallelism=parallelism,
        concurrency=concurrency,
        chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
        manifests=plan.manifests,
        recheck=recheck,
    )
    blobs = copier.copy_blobs(plan.blobs)
    if on_copied is not None:
        on_copied(sum(r.bytes for r in blobs))
    return blobs, copier.push_images(plan.images, failed_digests(blobs))
