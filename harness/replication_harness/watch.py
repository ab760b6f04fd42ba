"""Watch a secondary while writers work on it, and record every breach of the invariants.

``PrimaryHistory`` is what the primary has had: each push of a tag (time, digest) and each
deletion, recorded just *before* the write is made, so that nothing the secondary shows can
precede its record. ``ReplicaWatcher`` samples every tag of the secondary in a thread and
records each violation of the README's "Consistency" invariants:

- a tag whose blobs or child manifests are missing (incomplete);
- a tag on a digest the primary never had for that tag, or moved back to an older one after a
  newer one was seen;
- a tag gone from the secondary while the primary had it all along.

A tag pointed at a tombstone (a deletion in progress) counts as absent.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from registry_replication.engine.prune import TOMBSTONE_ARTIFACT_TYPE
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.errors import RegistryError
from replication_harness import images
from replication_harness.registry import LocalRegistry


def is_tombstone(raw: bytes) -> bool:
    """Whether a manifest is one of prune's tombstones (the tag it held is being removed)."""
    try:
        return json.loads(raw).get("artifactType") == TOMBSTONE_ARTIFACT_TYPE
    except (ValueError, AttributeError):
        return False


def tags_of(client: RegistryClient) -> dict[tuple[str, str], str]:
    """Every (repository, tag) of a registry and its digest."""
    found = {}
    for repository in client.catalog():
        for tag in client.tags(repository):
            descriptor = client.head_manifest(repository, tag)
            if descriptor is not None:
                found[(repository, tag)] = descriptor.digest
    return found


def wait_for_replica(
    reader: RegistryClient, repository: str, tag: str, digest: str, timeout: float = 120
) -> float:
    """Seconds until ``repository:tag`` on ``reader`` is ``digest``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        found = reader.head_manifest(repository, tag)
        if found and found.digest == digest:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{repository}:{tag} did not reach the secondary in {timeout}s")


def warmed_up(
    primary: LocalRegistry, secondary: LocalRegistry, layer_size: int
) -> tuple[RegistryClient, RegistryClient, images.ImageFactory]:
    """A writer of the primary, a reader of the secondary and a factory of images with layers
    of ``layer_size``, once a warm-up push (``group/app:warm-up``) has replicated: the event
    path's first run starts its chain."""
    writer = RegistryClient(primary.client_config(), writable=True)
    reader = RegistryClient(secondary.client_config())
    factory = images.ImageFactory(layer_size=layer_size)
    warm = factory.make()
    images.push(writer, "group/app", warm, ["warm-up"])
    wait_for_replica(reader, "group/app", "warm-up", warm.digest, timeout=180)
    return writer, reader, factory


@dataclass
class PrimaryHistory:
    pushes: dict[tuple[str, str], list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    deletions: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, primary: RegistryClient) -> PrimaryHistory:
        """The primary's state now, as its history so far."""
        history = cls()
        for (repository, tag), digest in tags_of(primary).items():
            history.pushing(repository, tag, digest)
        return history

    def pushing(self, repository: str, tag: str, digest: str) -> None:
        with self._lock:
            self.pushes[(repository, tag)].append((time.monotonic(), digest))

    def deleting(self, repository: str, tags: list[str]) -> None:
        with self._lock:
            for tag in tags:
                self.deletions[(repository, tag)].append(time.monotonic())

    def position(self, repository: str, tag: str, digest: str) -> int | None:
        """The latest place of ``digest`` in the tag's pushes, or None if never pushed."""
        with self._lock:
            places = [i for i, (_, d) in enumerate(self.pushes[(repository, tag)]) if d == digest]
        return places[-1] if places else None

    def kept_since(self, repository: str, tag: str, since: float) -> bool:
        """Whether the primary had the tag all the time from ``since`` until now."""
        with self._lock:
            before = [t for t, _ in self.pushes[(repository, tag)] if t < since]
            deletions = self.deletions[(repository, tag)]
        if not before or any(t >= since for t in deletions):
            return False
        return max(before) > max(deletions, default=float("-inf"))


class ReplicaWatcher:
    """Samples the secondary until stopped (use as a context manager)."""

    def __init__(
        self, secondary: RegistryClient, history: PrimaryHistory, interval: float = 0.0
    ) -> None:
        self.secondary = secondary
        self.history = history
        self.interval = interval
        self.samples = 0
        self.violations: list[str] = []
        self._high: dict[tuple[str, str], int] = {}
        self._present_at: dict[tuple[str, str], float] = {}  # tag -> start of its last sighting
        self._complete: set[tuple[str, str]] = set()  # (repository, blob) seen present
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="replica-watcher")

    def __enter__(self) -> ReplicaWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                seen = self._sample(started)
            except RegistryError:
                continue  # the secondary is restarting: no sample
            for key, since in list(self._present_at.items()):
                if key not in seen:
                    del self._present_at[key]
                    if self.history.kept_since(*key, since):
                        self.violations.append(
                            f"{key[0]}:{key[1]} deleted from the secondary while the primary had it"
                        )
            self._present_at.update({key: started for key in seen})
            self.samples += 1
            self._stop.wait(self.interval)

    def _sample(self, started: float) -> set[tuple[str, str]]:
        seen = set()
        for repository in list(self.secondary.catalog()):
            for tag in self.secondary.tags(repository):
                try:
                    manifest = self.secondary.get_manifest(repository, tag)
                except RegistryError:
                    continue  # untagged between the listing and the read
                if is_tombstone(manifest.raw):
                    continue
                seen.add((repository, tag))
                self._check(repository, tag, manifest.digest, manifest.json)
        return seen

    def _check(self, repository: str, tag: str, digest: str, body: dict) -> None:
        place = self.history.position(repository, tag, digest)
        high = self._high.get((repository, tag), -1)
        if place is None:
            self.violations.append(f"{repository}:{tag} on {digest}, never the primary's")
        elif place < high:
            self.violations.append(f"{repository}:{tag} moved back to {digest}")
        else:
            self._high[(repository, tag)] = place
        missing = self._missing(repository, body)
        if missing:
            self.violations.append(f"{repository}:{tag} ({digest}) incomplete: {missing} missing")

    def _missing(self, repository: str, body: dict) -> list[str]:
        missing = []
        for child in body.get("manifests") or []:
            try:
                missing += self._missing(
                    repository, self.secondary.get_manifest(repository, child["digest"]).json
                )
            except RegistryError:
                missing.append(child["digest"])
        blobs = [body["config"], *(body.get("layers") or [])] if body.get("config") else []
        for blob in blobs:
            if blob.get("urls") or (repository, blob["digest"]) in self._complete:
                continue  # foreign layers live outside the registry
            if not self.secondary.has_blob(repository, blob["digest"]):
                missing.append(blob["digest"])
            else:
                self._complete.add((repository, blob["digest"]))
        return missing
