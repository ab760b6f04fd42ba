"""Write leases: the protocol every writer of the secondary shares (event path, reconcile,
ad-hoc syncs, CLI), across processes and machines.

A writer changes a repository's tags only while it holds that repository's lease in the
replication store, and only after reading the primary's current state inside it (see
``copy`` and ``prune``). Leases expire unless renewed, so a writer killed mid-work loses its
leases within ``ttl_seconds`` and the next writer takes them over. Blob upload sessions are
recorded the same way, so the upload sessions of a killed writer are found and cancelled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from registry_replication.settings import current
from registry_replication.store import Store

log = logging.getLogger(__name__)

REPOSITORY, UPLOAD = "repository:", "upload:"


class LeaseBusy(Exception):
    """Another live writer holds the lease; the message names it and says what to do."""

    def __init__(self, resource: str, holder: dict[str, Any], waited: float) -> None:
        super().__init__(
            f"{resource} is held by another writer ({holder['owner']}, until "
            f"{holder['expires_at']:%H:%M:%S} UTC) after waiting {waited:.0f}s; nothing was "
            "written. What to do: nothing, the work is retried; if this repeats, find that "
            "writer (the lease owner is host:pid:run)"
        )


class LeaseLost(Exception):
    """This writer could not renew its leases in time: it must stop writing."""


class Leases:
    """One writer's leases. Thread-safe; use as a context manager (releases all on exit)."""

    def __init__(
        self,
        store: Store,
        secondary: str,
        *,
        ttl_seconds: float | None = None,
        wait_seconds: float = 300.0,
        owner: str | None = None,
    ) -> None:
        """``secondary``: the connection id of the secondary this writer writes, whose rows its
        leases are; ``ttl_seconds``: how long a killed writer's leases block others (default
        the ``lease_seconds`` setting); renewed every quarter of it."""
        self.store = store
        self.secondary = secondary
        self.ttl = ttl_seconds or current().lease_seconds
        self.wait = wait_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._renewed_at = time.monotonic()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @contextmanager
    def repository(self, name: str) -> Iterator[None]:
        """Hold ``name``'s lease for the block (re-entrant within this writer)."""
        resource = REPOSITORY + name
        self._acquire(resource)
        try:
            yield
        finally:
            self._release(resource)

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the leases were renewed recently enough that nobody can
        have taken them over: called just before each write."""
        if time.monotonic() - self._renewed_at > self.ttl / 2:
            raise LeaseLost(
                f"writer {self.owner} could not renew its leases for "
                f"{time.monotonic() - self._renewed_at:.0f}s (the store is unreachable or the "
                "process stalled); it stops writing and the work is retried"
            )

    # -- upload sessions ------------------------------------------------------------------------

    def track_upload(self, registry: str, repository: str, location: str) -> str:
        """Record an open upload session until ``forget``; returns its resource name."""
        parts = urlsplit(location)
        session = parts.path  # the same session whatever its _state says
        resource = UPLOAD + hashlib.sha256(session.encode()).hexdigest()[:40]
        # Relative: whichever address of the secondary the cleaner uses, it cancels it there.
        relative = session + (f"?{parts.query}" if parts.query else "")
        detail = {"registry": registry, "repository": repository, "location": relative}
        with self._lock:
            tracked = self._held[resource] > 0
        if tracked:  # the session moved on (a chunk went up): keep its latest location
            self.store.state.acquire_lease(self.secondary, resource, self.owner, self.ttl, detail)
        else:
            self._acquire(resource, detail)
        return resource

    def forget(self, resource: str) -> None:
        self._release(resource)

    def abandoned_uploads(self) -> Iterator[dict[str, Any]]:
        """Upload sessions on this writer's secondary whose writer died; each is taken over
        while yielded, then forgotten. (Writers may reach a secondary by different addresses:
        the session's path is what identifies it.)"""
        for row in self.store.state.expired_leases(self.secondary, UPLOAD):
            detail = row.get("detail") or {}
            holder = self.store.state.acquire_lease(
                self.secondary, row["resource"], self.owner, self.ttl, detail
            )
            if holder is not None:
                continue  # another writer is cleaning it up
            try:
                yield detail
            finally:
                self.store.state.release_lease(self.secondary, row["resource"], self.owner)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat:
            self._heartbeat.join()
        with self._lock:
            held, self._held = list(self._held), Counter()
        for resource in held:
            self.store.state.release_lease(self.secondary, resource, self.owner)

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self, resource: str, detail: dict[str, Any] | None = None) -> None:
        with self._lock:
            if self._held[resource] > 0:
                # Already this writer's: the heartbeat renews it, so no store write (a batch
                # of images in one repository costs one acquisition, not one per image).
                self._held[resource] += 1
                return
        started = time.monotonic()
        delay = 0.05
        while True:
            attempt = time.monotonic()
            holder = self.store.state.acquire_lease(
                self.secondary, resource, self.owner, self.ttl, detail
            )
            if holder is None:
                break
            waited = time.monotonic() - started
            if waited > self.wait:
                raise LeaseBusy(resource, holder, waited)
            if delay == 0.05:
                log.info("waiting for %s: another writer (%s) holds it", resource, holder["owner"])
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        with self._lock:
            self._held[resource] += 1
            self._renewed_at = max(self._renewed_at, attempt)
            self._start_heartbeat()

    def _release(self, resource: str) -> None:
        with self._lock:
            self._held[resource] -= 1
            if self._held[resource] > 0:
                return
            del self._held[resource]
        self.store.state.release_lease(self.secondary, resource, self.owner)

    def keep_alive(self) -> None:
        """Renew from now on even while no lease is held (for events claimed as ``owner``)."""
        with self._lock:
            self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(
                target=self._renew, daemon=True, name="lease-heartbeat"
            )
            self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            attempt = time.monotonic()
            try:
                self.store.state.renew_leases(self.owner, self.ttl)
                self.store.queue.renew_claims(self.owner, self.ttl)
                self._renewed_at = attempt
            except Exception as exc:  # noqa: BLE001 - any store failure: check() stops writes
                log.warning("could not renew the leases of %s: %s", self.owner, exc)
