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

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from registry_replication.client import Manifest, RegistryClient, Upload
from registry_replication.leases import Leases
from registry_replication.outcomes import (
    NOT_PUSHED,
    BlobOutcome,
    ImageOutcome,
    describe,
    human_size,
)
from registry_replication.plan import BlobTask, ImageTask
from registry_replication.recorded_tags import TagRecord

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_CHUNK_SIZE = 128 * MiB


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
        rate = f", {self.bytes / MiB / self.seconds:.1f} MiB/s" if self.bytes and self.seconds else ""
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
                f"{tag} -> {digest or 'deleted'}" for tag, digest in sorted(self.moved.items()))
        return f"{line}: {self.error}" if self.error else line


@dataclass
class _Progress:
    """Bytes moved so far, logged every ``interval`` seconds while a transfer runs."""

    total: int
    interval: float
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


class Copier:
    """Copies blob and image tasks with a bounded number of transfers in flight."""

    def __init__(
        self,
        primary: RegistryClient,
        secondary: RegistryClient,
        *,
        leases: Leases,
        parallelism: int = 8,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress_interval: float = 10.0,
        manifests: dict[tuple[str, str], Manifest] | None = None,
        on_result: Callable[[BlobResult | ImageResult], None] | None = None,
        recheck: bool = True,
    ) -> None:
        """``recheck=False`` trusts a plan made moments ago in this process and skips the
        existence checks before each blob and tag; tasks that run later (Airflow batches,
        retries) keep them, so a rerun never transfers what is already there.

        ``leases``: tags are written only under the repository's lease, and only while the
        primary still has the planned digest (checked just before each write)."""
        self.primary = primary
        self.secondary = secondary
        self.leases = leases
        self.parallelism = parallelism
        self.chunk_size = chunk_size
        self.progress_interval = progress_interval
        self.manifests = manifests if manifests is not None else {}
        self.on_result = on_result or _log_result
        self.recheck = recheck
        self.record = TagRecord(leases.store)  # what cheap runs read instead of listing
        self._progress: _Progress | None = None

    # -- blobs ----------------------------------------------------------------------------------

    def copy_blobs(self, tasks: Sequence[BlobTask]) -> list[BlobResult]:
        self.cancel_abandoned_uploads()
        total = sum(t.size for t in tasks if t.mount_from is None)
        self._progress = _Progress(total, self.progress_interval)
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

    def copy_blob(self, task: BlobTask) -> list[BlobResult]:
        """Put the blob into every repository of the task; one result per repository."""
        results = [self._into_target(task)]
        source_ok = results[0].outcome != BlobOutcome.FAILED
        for repository in task.mounts:
            results.append(self._mount_or_copy(task, repository, task.target if source_ok else None))
        for result in results:
            self.on_result(result)
        return results

    def _into_target(self, task: BlobTask) -> BlobResult:
        return self._mount_or_copy(task, task.target, task.mount_from)

    def _mount_or_copy(self, task: BlobTask, repository: str, mount_from: str | None) -> BlobResult:
        started = time.monotonic()
        result = BlobResult(repository, task.digest, task.size, BlobOutcome.SKIPPED)
        try:
            if self.recheck and self.secondary.blob_size(repository, task.digest) is not None:
                pass  # already there: a rerun never transfers it again
            elif mount_from and self.secondary.mount_blob(repository, task.digest, mount_from):
                result.outcome = BlobOutcome.MOUNTED
            else:
                result.bytes = self._transfer(task, repository)
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
                log.info("cancelled an upload session a stopped writer left open in %s (%s)",
                         upload["repository"], upload["location"].split("?")[0])

    def _transfer(self, task: BlobTask, repository: str) -> int:
        """Stream the blob from the primary into the secondary; returns the bytes read.

        The secondary's client uploads it (and resumes it after an interruption, reopening the
        primary's stream at the registry's offset); its sessions are recorded in the store
        while open, so the next writer cancels those of a writer killed mid-upload.
        """
        read = 0
        tracked: set[str] = set()

        def open_body(offset: int) -> Iterator[bytes]:
            nonlocal read
            for chunk in self.primary.read_blob(task.source, task.digest, offset=offset):
                read += len(chunk)
                if self._progress:
                    self._progress.add(len(chunk))
                yield chunk

        def track(upload: Upload) -> None:
            tracked.add(self.leases.track_upload(self.secondary.url, repository, upload.location))

        try:
            self.secondary.upload_blob(repository, task.digest, task.size, open_body,
                                       chunk_size=self.chunk_size, on_session=track)
        finally:
            for resource in tracked:
                self.leases.forget(resource)
        return read

    # -- manifests ------------------------------------------------------------------------------

    def push_images(
        self, tasks: Sequence[ImageTask], failed_blobs: Iterable[str] = ()
    ) -> list[ImageResult]:
        failed = set(failed_blobs)
        with ThreadPoolExecutor(self.parallelism, thread_name_prefix="push") as pool:
            return list(pool.map(lambda t: self.push_image(t, failed), tasks))

    def push_image(self, task: ImageTask, failed_blobs: set[str] | None = None) -> ImageResult:
        started = time.monotonic()
        result = ImageResult(task.repository, task.digest, task.tags, task.media_type,
                             ImageOutcome.SKIPPED)
        blocked = sorted(set(task.blobs) & (failed_blobs or set()))
        if blocked:
            result.outcome = ImageOutcome.BLOCKED
            result.error = (
                f"not pushed: blob {blocked[0]}" + (f" and {len(blocked) - 1} more" if len(blocked) > 1 else "")
                + " failed to copy; fix that blob and rerun"
            )
        else:
            try:
                for child in task.children:  # by digest: no tag moves, so no lease needed
                    if self.secondary.head_manifest(task.repository, child) is None:
                        self._push(task.repository, child, child)
                        result.manifests_pushed += 1
                with self.leases.repository(task.repository):
                    for tag in task.tags:  # the tags go last, once everything they need is there
                        self._push_tag(task, tag, result)
                result.outcome = (ImageOutcome.PUSHED if result.manifests_pushed
                                  else ImageOutcome.SKIPPED)
            except Exception as exc:  # noqa: BLE001 - the unit's boundary: this image
                result.outcome = ImageOutcome.FAILED
                result.error = describe(exc)
        result.seconds = time.monotonic() - started
        self.on_result(result)
        return result

    def _push_tag(self, task: ImageTask, tag: str, result: ImageResult) -> None:
        """Point ``tag`` at the planned digest, if the primary still does (compare-and-set)."""
        now = self.primary.head_manifest(task.repository, tag)
        if now is None or now.digest != task.digest:
            result.moved[tag] = now.digest if now else None
            return
        if self.recheck:
            current = self.secondary.head_manifest(task.repository, tag)
            if current is not None and current.digest == task.digest:
                self.record.record(task.repository, tag, task.digest, self.leases.owner,
                                   task.media_type)
                return
        # Intent first: a writer killed after the PUT leaves "unknown", never a stale digest.
        self.record.intend(task.repository, [tag], self.leases.owner)
        self.leases.check()
        self._push(task.repository, task.digest, tag)
        self.record.record(task.repository, tag, task.digest, self.leases.owner, task.media_type)
        result.manifests_pushed += 1

    def _push(self, repository: str, digest: str, reference: str) -> None:
        manifest = self.manifests.get((repository, digest))
        if manifest is None:
            manifest = self.primary.get_manifest(repository, digest)
            self.manifests[(repository, digest)] = manifest
        self.secondary.put_manifest(repository, reference, manifest.raw, manifest.media_type)


def _log_result(result: BlobResult | ImageResult) -> None:
    failed = result.outcome in (BlobOutcome.FAILED, *NOT_PUSHED)
    (log.error if failed else log.info)(result.log_line())

