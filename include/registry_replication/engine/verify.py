"""Deep verification: can every tag on the secondary actually be pulled? (``verify`` levels)

``tags`` (every run) compares tag -> digest lists. What breaks a failover is a tag whose
manifest is there while a layer is gone or damaged, so deeper levels walk each image's closure
on the secondary itself:

- ``blobs``: each manifest fetched by digest (its bytes hashed: ``get_manifest``), each blob
  ``HEAD``ed and its size compared with its descriptor; each (repository, blob) once per run;
- ``content``: as blobs, and each blob read back and hashed (each digest once: the registry
  stores one data file per digest), a rotating ``content_verify_fraction`` of them per run,
  within the connection's bandwidth limit.

A missing blob or child manifest is copied again in the same run (``build_plan`` and the
``Copier``, as any copy). A blob or manifest present with the wrong size or bytes cannot be
repaired through the API: distribution 2.8 never overwrites an existing data file. It is named
with its data file and the fix (remove the file, then run ``verify=blobs``), its repository is
``damaged`` until a later check passes, and the run fails.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from registry_replication.engine.copy import BlobResult, Copier, ImageResult
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import Plan, Skipped, Walk, WantedTag, build_plan
from registry_replication.outcomes import (
    BlobOutcome,
    CheckOutcome,
    RepositoryState,
    RunOutcome,
    Snapshot,
    VerifyLevel,
    describe,
    failed_digests,
    human_size,
)
from registry_replication.store import Store
from registry_replication.store.schema import now, repository_state
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.errors import DigestMismatchError, NotFoundError

log = logging.getLogger(__name__)

DATA_PATH = "docker/registry/v2/blobs/{algorithm}/{prefix}/{hex}/data"


def data_path(digest: str) -> str:
    """Where distribution's storage keeps a blob's (or manifest's) bytes, under its root."""
    algorithm, hex_ = digest.split(":", 1)
    return DATA_PATH.format(algorithm=algorithm, prefix=hex_[:2], hex=hex_)


@dataclass
class Finding:
    """One blob or manifest of a deep verification that was not as its descriptor says."""

    repository: str
    digest: str
    kind: str  # blob | manifest
    outcome: CheckOutcome
    expected: str
    found: str
    level: VerifyLevel
    error: str | None = None

    @property
    def data_path(self) -> str:
        return data_path(self.digest)

    def line(self) -> str:
        where = f"{self.kind} {self.repository}@{self.digest}"
        if self.outcome == CheckOutcome.DAMAGED:
            return (f"{where} is damaged on the secondary: expected {self.expected}, found "
                    f"{self.found}; its data file is {self.data_path} under the registry's "
                    "storage root. The registry never overwrites an existing data file, so no "
                    "copy can repair it. What to do: remove that data file on the secondary, "
                    "then run registry_reconcile with verify=blobs, which copies it again")
        if self.outcome == CheckOutcome.REPAIRED:
            return f"{where} was missing on the secondary ({self.found}); copied again"
        return f"{where}: {self.found}" + (f" ({self.error})" if self.error else "")


@dataclass
class DeepReport:
    """What a ``blobs`` or ``content`` verification looked at and found."""

    level: VerifyLevel
    repositories: list[str]
    findings: list[Finding] = field(default_factory=list)
    manifests_checked: int = 0
    blobs_checked: int = 0  # (repository, blob) HEADs
    blobs_read: int = 0  # distinct digests read back (content)
    bytes_read: int = 0
    blobs: list[BlobResult] = field(default_factory=list)  # the repair's copies
    images: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome != CheckOutcome.REPAIRED]

    @property
    def failed(self) -> bool:
        return bool(self.problems)

    def damaged(self) -> dict[str, list[Finding]]:
        found: dict[str, list[Finding]] = defaultdict(list)
        for f in self.findings:
            if f.outcome == CheckOutcome.DAMAGED:
                found[f.repository].append(f)
        return dict(found)

    def line(self) -> str:
        repaired = sum(f.outcome == CheckOutcome.REPAIRED for f in self.findings)
        content = (f", {self.blobs_read} blobs read back ({human_size(self.bytes_read)})"
                   if self.level == VerifyLevel.CONTENT else "")
        return (f"{self.level} verification of {len(self.repositories)} repositories: "
                f"{self.manifests_checked} manifests fetched, {self.blobs_checked} blobs "
                f"checked{content}; {repaired} repaired, {len(self.problems)} problems")


def deep_verify(
    primary: RegistryClient,
    secondary: RegistryClient,
    images: Mapping[tuple[str, str], list[str]],
    level: VerifyLevel,
    *,
    leases: Leases,
    fraction: float = 1.0,
    concurrency: int = 16,
    parallelism: int = 8,
) -> DeepReport:
    """Verify ``images`` ({(repository, digest): tags}, the primary's) on the secondary at
    ``level``, repair what is missing, and record each repository's verification."""
    started = time.monotonic()
    repositories = sorted({r for r, _ in images})
    report = DeepReport(level, repositories)
    slices = _slices(leases.store, repositories)
    check = _Check(secondary, report, concurrency)
    check.images(images)
    if level == VerifyLevel.CONTENT:
        check.content(fraction, slices)
    broken = {key for key in images if key in check.broken}
    if broken:
        _repair(primary, secondary, {k: images[k] for k in broken}, check, report, leases,
                concurrency, parallelism)
    report.findings.sort(key=lambda f: (f.repository, f.kind, f.digest))
    for finding in report.findings:
        (log.info if finding.outcome == CheckOutcome.REPAIRED else log.error)(finding.line())
    report.seconds = time.monotonic() - started
    log.info("%s in %.1fs", report.line(), report.seconds)
    record(leases.store, report, check, slices, fraction)
    return report


class _Check:
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
        walk = Walk(self.secondary, repository, self.plans[repository])
        try:
            walk.collect(walk.fetch(digest), depth=0)
        except NotFoundError as exc:
            self.broken.add(key)
            self._find(repository, exc.reference or digest, "manifest", CheckOutcome.MISSING,
                       "present", "absent", describe(exc))
        except DigestMismatchError as exc:
            self._find(repository, exc.reference or digest, "manifest", CheckOutcome.DAMAGED,
                       f"bytes hashing to {exc.reference}", exc.message.removeprefix(
                           "the manifest's bytes hash to "))
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this image
            self._find(repository, digest, "manifest", CheckOutcome.FAILED, "readable",
                       "could not be verified", describe(exc))
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
            self._find(repository, digest, "blob", CheckOutcome.FAILED, f"{expected} bytes",
                       "could not be checked", describe(exc))
            return False
        if size is None:
            self._find(repository, digest, "blob", CheckOutcome.MISSING, f"{expected} bytes",
                       "absent")
            return None
        if size != expected:
            self._find(repository, digest, "blob", CheckOutcome.DAMAGED, f"{expected} bytes",
                       f"{size} bytes")
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
            for digest, found in zip(digests, pool.map(
                    lambda d: self._read(holders[d][0], d), digests)):
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
            return (CheckOutcome.DAMAGED, f"bytes hashing to {digest}",
                    f"bytes hashing to {hasher.name}:{hasher.hexdigest()}")
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this blob
            return (CheckOutcome.FAILED, "readable", "could not be read back", describe(exc))
        return None

    def _find(self, repository: str, digest: str, kind: str, outcome: CheckOutcome,
              expected: str, found: str, error: str | None = None) -> None:
        self.report.findings.append(Finding(repository, digest, kind, outcome, expected, found,
                                            self.report.level, error))


def _in_slice(digest: str, index: int, count: int) -> bool:
    return int(digest.split(":", 1)[1][:8], 16) % count == index % count


def _repair(primary: RegistryClient, secondary: RegistryClient,
            images: Mapping[tuple[str, str], list[str]], check: _Check, report: DeepReport,
            leases: Leases, concurrency: int, parallelism: int) -> None:
    """Copy again what the broken images lack, as any copy does (missing blobs, then missing
    child manifests, then their tags, compare-and-set), then walk them again."""
    wanted = [WantedTag(r, tag, d) for (r, d), tags in images.items() for tag in tags]
    log.warning("repairing %d images missing a manifest or blob on the secondary: %s",
                len(images), ", ".join(f"{r}@{d}" for r, d in sorted(images)[:10]))
    plan = build_plan(primary, secondary, wanted, concurrency=concurrency)
    copier = Copier(primary, secondary, leases=leases, parallelism=parallelism,
                    manifests=plan.manifests, recheck=True)
    report.blobs = copier.copy_blobs(plan.blobs)
    report.images = copier.push_images(plan.images, failed_digests(report.blobs))
    # Why an image was not repaired (its blobs failed, its push failed, or the plan skipped it).
    not_repaired = {(p.repository, p.digest): p.error for p in RunOutcome(
        images=report.images, skipped=plan.skipped).problems()}
    # Every tag moved on the primary since its listing: the image is no longer wanted (the
    # newer writer, or the next run, replicates what the tags point at now).
    moved = {(r.repository, r.digest) for r in report.images if r.moved and set(r.moved) ==
             set(r.tags)}
    for key in sorted(moved):
        log.info("%s@%s: every tag of it moved on the primary since the listing; left to the "
                 "newer writer, not verified", *key)
    report.findings = [f for f in report.findings if (f.repository, f.digest) not in moved]
    copies = {(r.repository, r.digest): r for r in report.blobs}
    for finding in report.findings:
        if finding.outcome != CheckOutcome.MISSING:
            continue
        copy = copies.get((finding.repository, finding.digest))
        unpushed = [e for (r, _), e in not_repaired.items() if r == finding.repository]
        if copy is not None and copy.outcome == BlobOutcome.FAILED:
            finding.error = copy.error
        elif finding.kind == "manifest" and unpushed:
            finding.error = unpushed[0]
        else:
            finding.outcome = CheckOutcome.REPAIRED
    # A missing manifest hid what lies below it: walk those images again, their manifests
    # fetched anew (the blobs already checked are not asked twice).
    again = [k for k in images if k not in not_repaired and k not in moved
             and any(f.kind == "manifest" and f.repository == k[0] for f in report.findings)]
    for repository in {r for r, _ in again}:
        check.plans[repository] = Plan()
    if again:
        check.images(again)


def _slices(store: Store, repositories: list[str]) -> dict[str, int]:
    t = repository_state.c
    with store.engine.connect() as conn:
        return {r.repository: r.content_slice or 0 for r in conn.execute(
            sa.select(t.repository, t.content_slice).where(t.repository.in_(repositories)))}


def record(store: Store, report: DeepReport, check: _Check, slices: dict[str, int],
           fraction: float) -> None:
    """Each verified repository's level, time and damage; ``damaged`` until it passes."""
    t = repository_state.c
    with store.engine.connect() as conn:
        before = {r.repository: (r.damaged or {}) for r in conn.execute(
            sa.select(t.repository, t.damaged).where(t.repository.in_(report.repositories)))}
    repaired = {(f.repository, f.digest) for f in report.findings
                if f.outcome == CheckOutcome.REPAIRED}
    at = now()
    rows = []
    for repository in report.repositories:
        damaged = {f.digest: f.level.value for f in report.damaged().get(repository, [])}
        for digest, found_at in before.get(repository, {}).items():
            # Kept until a check at its level passes or it is copied again.
            seen = (digest in check.content_ok if found_at == VerifyLevel.CONTENT
                    else check.blob_ok.get((repository, digest)) is True)
            if digest not in damaged and not seen and (repository, digest) not in repaired:
                damaged[digest] = found_at
        problems = [f for f in report.problems if f.repository == repository]
        row: dict[str, Any] = {
            "repository": repository, "verified_level": report.level.value,
            "verified_at": at, "damaged": damaged or None,
            "content_slice": slices.get(repository, 0) + (
                1 if report.level == VerifyLevel.CONTENT and fraction < 1 else 0)}
        if damaged:
            row.update(state=RepositoryState.DAMAGED, last_error="; ".join(
                f"{d} damaged (found by {lvl}): remove {data_path(d)} on the secondary, then "
                "run verify=blobs" for d, lvl in sorted(damaged.items()))[:4000])
        elif problems:
            row.update(state=RepositoryState.FAILED, last_error=problems[0].line()[:4000])
        else:  # every image it holds can be pulled (the tags verification may still differ)
            row.update(state=RepositoryState.SYNCED, last_error=None)
        rows.append(row)
    store.state.set_repository_state(rows)


def images_of(primary: Snapshot, skipped: Iterable[Skipped] = ()
              ) -> dict[tuple[str, str], list[str]]:
    """{(repository, digest): tags} of the primary's listing: what a deep verification walks,
    less the images this run's plan ``skipped`` (named already; walking them again would only
    fetch their manifests twice)."""
    left_out = {(s.repository, s.digest) for s in skipped}
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for repository, tag, digest in zip(primary.tags["repository"], primary.tags["tag"],
                                       primary.tags["digest"]):
        if (repository, digest) not in left_out:
            found[(repository, digest)].append(tag)
    return dict(found)
