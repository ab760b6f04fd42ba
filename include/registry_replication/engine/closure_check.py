"""The checks of a deep verification (``ClosureCheck``): each image's closure walked on the
secondary, each blob ``HEAD``ed with its size and, at ``content``, read back and hashed; each
(repository, manifest or blob) once per run, each finding added to the run's ``DeepReport``."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from registry_replication.engine.findings import DeepReport, Finding
from registry_replication.engine.plan import Plan
from registry_replication.engine.walk import Walk
from registry_replication.outcomes import CheckOutcome, describe
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.errors import DigestMismatchError, NotFoundError


class ClosureCheck:
    """The walk and the checks of one run; each (repository, manifest or blob) once."""

    def __init__(self, secondary: RegistryClient, report: DeepReport, concurrency: int) -> None:
        self.secondary = secondary
        self.report = report
        self.concurrency = concurrency
        self.plans: dict[str, Plan] = defaultdict(Plan)  # per repository: its manifests once
        self.sizes: dict[tuple[str, str], int] = {}  # (repository, blob) -> descriptor size
        self.blob_ok: dict[tuple[str, str], bool] = {}  # HEADed: present with its size
        self.broken: set[tuple[str, str]] = set()  # images missing a manifest or blob
        self.content_ok: set[str] = set()  # digests read back whole

    def images(self, images: Iterable[tuple[str, str]]) -> None:
        keys = sorted(images)
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(keys) or 1))) as pool:
            walked = list(pool.map(self._walk, keys))
        needed: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for key, blobs in zip(keys, walked):
            for pair in blobs:
                needed[pair].append(key)
        pairs = [p for p in needed if p not in self.blob_ok]
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(pairs) or 1))) as pool:
            for pair, ok in zip(pairs, pool.map(self._head, pairs)):
                self.blob_ok[pair] = ok
                if ok is None:  # missing: its images are repaired
                    self.broken.update(needed[pair])
        self.report.blobs_checked = len(self.blob_ok)
        self.report.manifests_checked = sum(len(p.manifests) for p in self.plans.values())

    def _walk(self, key: tuple[str, str]) -> list[tuple[str, str]]:
        """The image's blobs as (repository, digest); a missing or damaged manifest is a finding."""
        repository, digest = key
        walk = Walk(self.secondary, repository, self.plans[repository].cache)
        try:
            walk.collect(walk.fetch(digest), depth=0)
        except NotFoundError as exc:
            self.broken.add(key)
            self._find(
                repository,
                exc.reference or digest,
                "manifest",
                CheckOutcome.MISSING,
                "present",
                "absent",
                describe(exc),
            )
        except DigestMismatchError as exc:
            self._find(
                repository,
                exc.reference or digest,
                "manifest",
                CheckOutcome.DAMAGED,
                f"bytes hashing to {exc.reference}",
                exc.message.removeprefix("the manifest's bytes hash to "),
            )
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this image
            self._find(
                repository,
                digest,
                "manifest",
                CheckOutcome.FAILED,
                "readable",
                "could not be verified",
                describe(exc),
            )
        for blob, size in walk.sizes.items():
            self.sizes.setdefault((repository, blob), size)
        return [(repository, blob) for blob in walk.sizes]

    def _head(self, pair: tuple[str, str]) -> bool | None:
        """True: present with its size; False: damaged or unknown (a finding); None: missing."""
        repository, digest = pair
        expected = self.sizes[pair]
        try:
            size = self.secondary.blob_size(repository, digest)
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this blob
            self._find(
                repository,
                digest,
                "blob",
                CheckOutcome.FAILED,
                f"{expected} bytes",
                "could not be checked",
                describe(exc),
            )
            return False
        if size is None:
            self._find(
                repository, digest, "blob", CheckOutcome.MISSING, f"{expected} bytes", "absent"
            )
            return None
        if size != expected:
            self._find(
                repository,
                digest,
                "blob",
                CheckOutcome.DAMAGED,
                f"{expected} bytes",
                f"{size} bytes",
            )
            return False
        return True

    def content(self, fraction: float, slices: dict[str, int]) -> None:
        """Read back each present blob in this run's slice once (one data file per digest)."""
        count = max(1, math.ceil(1 / fraction)) if fraction > 0 else 0
        holders: dict[str, list[str]] = defaultdict(list)
        for (repository, digest), ok in sorted(self.blob_ok.items()):
            if ok and count and _in_slice(digest, slices.get(repository, 0), count):
                holders[digest].append(repository)
        digests = sorted(holders)
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(digests) or 1))) as pool:
            for digest, found in zip(
                digests, pool.map(lambda d: self._read(holders[d][0], d), digests)
            ):
                if found is None:
                    self.content_ok.add(digest)
                    continue
                for repository in holders[digest]:
                    self._find(repository, digest, "blob", *found)
        self.report.blobs_read = len(digests)

    def _read(self, repository: str, digest: str) -> tuple[Any, ...] | None:
        hasher = hashlib.new(digest.split(":", 1)[0])
        try:
            for chunk in self.secondary.read_blob(repository, digest):
                hasher.update(chunk)
                self.report.bytes_read += len(chunk)
        except DigestMismatchError:
            return (
                CheckOutcome.DAMAGED,
                f"bytes hashing to {digest}",
                f"bytes hashing to {hasher.name}:{hasher.hexdigest()}",
            )
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this blob
            return (CheckOutcome.FAILED, "readable", "could not be read back", describe(exc))
        return None

    def _find(
        self,
        repository: str,
        digest: str,
        kind: str,
        outcome: CheckOutcome,
        expected: str,
        found: str,
        error: str | None = None,
    ) -> None:
        self.report.findings.append(
            Finding(repository, digest, kind, outcome, expected, found, self.report.level, error)
        )


def _in_slice(digest: str, index: int, count: int) -> bool:
    return int(digest.split(":", 1)[1][:8], 16) % count == index % count
