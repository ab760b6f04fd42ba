"""The read-once blob fan-out: several secondaries' missing blobs, each read from the primary
once.

``FanoutCopier`` groups per-secondary blob plans by digest (``FanoutTask``) and, for each
digest, runs one leg per secondary through that secondary's ``Copier.copy_blob`` (existence
check, mount, upload, the task's mounts: the same outcomes as a copy by that ``Copier``
alone), all fed by one source: a small blob read once into memory (digest-checked), a larger
one through a ``Tee`` (one ``GET`` teed into the uploads). A leg's failure is its result,
never the others': a slow leg is detached and reads on its own, and after a leg finds its
secondary unavailable the later legs to it are recorded failed without being tried (a dead
site would otherwise spend a retry budget per blob).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from registry_replication.engine.copy import BlobResult, Copier
from registry_replication.engine.plan import BlobTask
from registry_replication.engine.sites import unreachable
from registry_replication.outcomes import BlobOutcome
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.errors import (
    RETRY_STATUSES,
    DigestMismatchError,
    RegistryError,
)
from registry_replication.transport.tee import Tee
from registry_replication.transport.upload import MiB, OpenBody

log = logging.getLogger(__name__)

# Blobs up to this size are read into memory once (configs and small layers: most blobs).
FANOUT_BUFFER_BYTES = 4 * MiB


@dataclass
class FanoutTask:
    """One blob and the secondaries that lack it: each leg is that secondary's ``BlobTask``."""

    digest: str
    size: int
    source: str  # a repository of the primary that holds it
    legs: dict[str, BlobTask]


def fanout_tasks(plans: Mapping[str, Sequence[BlobTask]]) -> list[FanoutTask]:
    """The secondaries' blob tasks grouped by digest, in the order they first appear (a
    secondary with the same digest twice gets a second group)."""
    groups: dict[str, list[FanoutTask]] = {}
    ordered: list[FanoutTask] = []
    for secondary, tasks in plans.items():
        for task in tasks:
            group = next(
                (g for g in groups.get(task.digest, ()) if secondary not in g.legs),
                None,
            )
            if group is None:
                group = FanoutTask(task.digest, task.size, task.source, {})
                groups.setdefault(task.digest, []).append(group)
                ordered.append(group)
            group.legs[secondary] = task
    return ordered


class FanoutCopier:
    """Copies several secondaries' blob plans with each blob read from the primary once.

    ``copiers``: one ``Copier`` per secondary, by name (their primary is ``primary``);
    ``parallelism``: digests in flight, each with one thread per leg. ``primary_bytes``
    counts the blob bytes read from the primary, shared reads once, a leg's own reads again.
    """

    def __init__(
        self,
        primary: RegistryClient,
        copiers: Mapping[str, Copier],
        *,
        parallelism: int = 8,
        buffer_bytes: int = FANOUT_BUFFER_BYTES,
        window: int = 4 * MiB,
        attach_seconds: float = 1.0,
        lag_seconds: float = 5.0,
    ) -> None:
        self.primary = primary
        self.copiers = dict(copiers)
        self.parallelism = parallelism
        self.buffer_bytes = buffer_bytes
        self.tee_options = dict(
            window=window, attach_seconds=attach_seconds, lag_seconds=lag_seconds
        )
        self.primary_bytes = 0
        self.detached: list[tuple[str, str]] = []  # (secondary, digest) that read alone
        self._lock = threading.Lock()
        self._down: dict[str, str] = {}  # secondary -> the failure that showed it unavailable

    def copy_blobs(self, plans: Mapping[str, Sequence[BlobTask]]) -> dict[str, list[BlobResult]]:
        """Every secondary's blob tasks; results per secondary in its tasks' order, one per
        repository of each task, as ``Copier.copy_blob`` gives them."""
        for secondary in plans:
            try:
                self.copiers[secondary].cancel_abandoned_uploads()
            except Exception as exc:  # noqa: BLE001 - tidying up; its copies still go on
                log.warning("could not cancel abandoned uploads on %s: %s", secondary, exc)
        groups = fanout_tasks(plans)
        pool = ThreadPoolExecutor(self.parallelism, thread_name_prefix="fanout")
        try:
            done = list(pool.map(self._fan_out, groups))
        except BaseException:
            # Interrupted: the digests not begun are dropped, those in flight joined.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        by_task = {
            (secondary, id(group.legs[secondary])): results
            for group, legs in zip(groups, done)
            for secondary, results in legs.items()
        }
        return {
            secondary: [r for task in tasks for r in by_task[(secondary, id(task))]]
            for secondary, tasks in plans.items()
        }

    # -- one digest -----------------------------------------------------------------------------

    def _fan_out(self, group: FanoutTask) -> dict[str, list[BlobResult]]:
        """One digest's legs, each in its own thread, from one shared source."""
        names = list(group.legs)
        with ThreadPoolExecutor(len(names), thread_name_prefix="fanout-leg") as legs:
            if group.size <= self.buffer_bytes:
                source = _Buffered(self._reader(group), group)
                futures = {s: legs.submit(self._leg, s, group, source.open) for s in names}
                return {s: f.result() for s, f in futures.items()}
            with Tee(
                self._reader(group),
                group.size,
                names,
                repository=group.source,
                digest=group.digest,
                **self.tee_options,
            ) as tee:
                futures = {
                    s: legs.submit(self._leg, s, group, tee.open_for(s), tee.leave) for s in names
                }
                results = {s: f.result() for s, f in futures.items()}
            with self._lock:
                self.detached.extend((s, group.digest) for s in tee.detached)
            return results

    def _leg(
        self,
        secondary: str,
        group: FanoutTask,
        open_body: OpenBody,
        leave: Callable[[str], None] | None = None,
    ) -> list[BlobResult]:
        """``secondary``'s copy of the blob with ``open_body`` as its bytes (unless its site
        is down: then failed, untried)."""
        task = group.legs[secondary]
        copier = self.copiers[secondary]
        try:
            down = self._down.get(secondary)
            if down is not None:
                results = [
                    _untried(secondary, task, repository, down) for repository in task.repositories
                ]
                for result in results:
                    copier.on_result(result)
                return results
            results = copier.copy_blob(task, open_body)
        finally:
            if leave is not None:
                leave(secondary)
        failed = [r for r in results if r.outcome == BlobOutcome.FAILED]
        for result in failed:
            log.error(
                "fan-out: blob %s@%s to secondary %s failed: %s",
                result.repository,
                result.digest,
                secondary,
                result.error,
            )
            result.error = f"secondary {secondary}: {result.error}"
        # No answer, or an answer worth another try: the site, or the primary, may be down.
        if any(r.status in RETRY_STATUSES or (r.status is None and r.code is None) for r in failed):
            self._check_site(secondary, copier)
        return results

    def _check_site(self, secondary: str, copier: Copier) -> None:
        """Open ``secondary``'s breaker unless it answers a one-try ``ping`` (which tells a
        site that is down from a primary that is)."""
        if secondary in self._down:
            return
        reason = unreachable(copier.secondary)
        if reason is None:
            return
        with self._lock:
            self._down.setdefault(secondary, reason)
        log.error(
            "fan-out: secondary %s is unavailable; its later blobs are left untried: %s",
            secondary,
            reason,
        )

    def _reader(self, group: FanoutTask) -> OpenBody:
        """The blob on the primary from an offset, its bytes counted in ``primary_bytes``."""

        def open_body(offset: int) -> Iterator[bytes]:
            for chunk in self.primary.read_blob(group.source, group.digest, offset=offset):
                with self._lock:
                    self.primary_bytes += len(chunk)
                yield chunk

        return open_body


def _untried(secondary: str, task: BlobTask, repository: str, down: str) -> BlobResult:
    return BlobResult(
        repository,
        task.digest,
        task.size,
        BlobOutcome.FAILED,
        error=(
            f"secondary {secondary}: not tried: {secondary} was unavailable earlier in this "
            f"copy ({down}). What to do: bring {secondary} back; the next copy of its blobs "
            f"retries {repository}@{task.digest}"
        ),
    )


class _Buffered:
    """A small blob read once into memory, whole and digest-checked, for every leg: the first
    leg that needs bytes reads it (under its own upload's retry policy), the others wait for
    that read. A read the primary may answer next time (unavailable) is tried again by the
    next leg that asks; a digest mismatch fails every leg. More bytes than the plan's size
    are refused as they arrive: memory stays bounded whatever the primary sends."""

    def __init__(self, read: OpenBody, group: FanoutTask) -> None:
        self._read = read
        self._group = group
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._error: RegistryError | None = None

    def open(self, offset: int) -> Iterable[bytes]:
        with self._lock:  # bounded: the read's own timeouts
            if self._error is not None:
                raise copy.copy(self._error) from self._error  # each leg its own traceback
            if self._data is None:
                try:
                    self._data = self._whole()
                except DigestMismatchError as exc:
                    self._error = exc
                    raise
        return (self._data[offset:],)

    def _whole(self) -> bytes:
        data = bytearray()
        stream = iter(self._read(0))
        try:
            for chunk in stream:
                data += chunk
                if len(data) > self._group.size:
                    raise DigestMismatchError(
                        f"the primary sent more bytes than the blob's size {self._group.size}",
                        operation="get blob",
                        repository=self._group.source,
                        reference=self._group.digest,
                        code="SIZE_INVALID",
                    )
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return bytes(data)
