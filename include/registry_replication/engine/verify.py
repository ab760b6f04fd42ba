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

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from registry_replication.engine.closure_check import ClosureCheck
from registry_replication.engine.copy import copy_plan
from registry_replication.engine.findings import DeepReport, data_path
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import Plan, Skipped, WantedTag, build_plan
from registry_replication.outcomes import (
    BlobOutcome,
    CheckOutcome,
    RepositoryState,
    Snapshot,
    VerifyLevel,
)
from registry_replication.run_outcome import RunOutcome
from registry_replication.store import Store
from registry_replication.store.schema import now, repository_state
from registry_replication.transport.client import RegistryClient

log = logging.getLogger(__name__)


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
    slices = _slices(leases.store, leases.secondary, repositories)
    check = ClosureCheck(secondary, report, concurrency)
    check.images(images)
    if level == VerifyLevel.CONTENT:
        check.content(fraction, slices)
    broken = {key for key in images if key in check.broken}
    if broken:
        _repair(
            primary,
            secondary,
            {k: images[k] for k in broken},
            check,
            report,
            leases,
            concurrency,
            parallelism,
        )
    report.findings.sort(key=lambda f: (f.repository, f.kind, f.digest))
    for finding in report.findings:
        (log.info if finding.outcome == CheckOutcome.REPAIRED else log.error)(finding.line())
    report.seconds = time.monotonic() - started
    log.info("%s in %.1fs", report.line(), report.seconds)
    record(leases.store, leases.secondary, report, check, slices, fraction)
    return report


def _repair(
    primary: RegistryClient,
    secondary: RegistryClient,
    images: Mapping[tuple[str, str], list[str]],
    check: ClosureCheck,
    report: DeepReport,
    leases: Leases,
    concurrency: int,
    parallelism: int,
) -> None:
    """Copy again what the broken images lack, as any copy does (missing blobs, then missing
    child manifests, then their tags, compare-and-set), then walk them again."""
    wanted = [WantedTag(r, tag, d) for (r, d), tags in images.items() for tag in tags]
    log.warning(
        "repairing %d images missing a manifest or blob on the secondary: %s",
        len(images),
        ", ".join(f"{r}@{d}" for r, d in sorted(images)[:10]),
    )
    plan = build_plan(primary, secondary, wanted, concurrency=concurrency)
    report.blobs, report.images = copy_plan(
        primary, secondary, plan, leases=leases, recheck=True, parallelism=parallelism
    )
    # Why an image was not repaired (its blobs failed, its push failed, or the plan skipped it).
    not_repaired = {
        (p.repository, p.digest): p.error
        for p in RunOutcome(images=report.images, skipped=plan.skipped).problems()
    }
    # Every tag moved on the primary since its listing: the image is no longer wanted (the
    # newer writer, or the next run, replicates what the tags point at now).
    moved = {
        (r.repository, r.digest) for r in report.images if r.moved and set(r.moved) == set(r.tags)
    }
    for key in sorted(moved):
        log.info(
            "%s@%s: every tag of it moved on the primary since the listing; left to the "
            "newer writer, not verified",
            *key,
        )
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
    again = [
        k
        for k in images
        if k not in not_repaired
        and k not in moved
        and any(f.kind == "manifest" and f.repository == k[0] for f in report.findings)
    ]
    for repository in {r for r, _ in again}:
        check.plans[repository] = Plan()
    if again:
        check.images(again)


def _slices(store: Store, secondary: str, repositories: list[str]) -> dict[str, int]:
    t = repository_state.c
    with store.engine.connect() as conn:
        return {
            r.repository: r.content_slice or 0
            for r in conn.execute(
                sa.select(t.repository, t.content_slice).where(
                    t.secondary == secondary, t.repository.in_(repositories)
                )
            )
        }


def record(
    store: Store,
    secondary: str,
    report: DeepReport,
    check: ClosureCheck,
    slices: dict[str, int],
    fraction: float,
) -> None:
    """Each verified repository's level, time and damage on ``secondary``; ``damaged`` until
    it passes."""
    t = repository_state.c
    with store.engine.connect() as conn:
        before = {
            r.repository: (r.damaged or {})
            for r in conn.execute(
                sa.select(t.repository, t.damaged).where(
                    t.secondary == secondary, t.repository.in_(report.repositories)
                )
            )
        }
    repaired = {
        (f.repository, f.digest) for f in report.findings if f.outcome == CheckOutcome.REPAIRED
    }
    at = now()
    rows = []
    for repository in report.repositories:
        damaged = {f.digest: f.level.value for f in report.damaged().get(repository, [])}
        for digest, found_at in before.get(repository, {}).items():
            # Kept until a check at its level passes or it is copied again.
            seen = (
                digest in check.content_ok
                if found_at == VerifyLevel.CONTENT
                else check.blob_ok.get((repository, digest)) is True
            )
            if digest not in damaged and not seen and (repository, digest) not in repaired:
                damaged[digest] = found_at
        problems = [f for f in report.problems if f.repository == repository]
        row: dict[str, Any] = {
            "repository": repository,
            "verified_level": report.level.value,
            "verified_at": at,
            "damaged": damaged or None,
            "content_slice": slices.get(repository, 0)
            + (1 if report.level == VerifyLevel.CONTENT and fraction < 1 else 0),
        }
        if damaged:
            row.update(
                state=RepositoryState.DAMAGED,
                last_error="; ".join(
                    f"{d} damaged (found by {lvl}): remove {data_path(d)} on the secondary, then "
                    "run verify=blobs"
                    for d, lvl in sorted(damaged.items())
                )[:4000],
            )
        elif problems:
            row.update(state=RepositoryState.FAILED, last_error=problems[0].line()[:4000])
        else:  # every image it holds can be pulled (the tags verification may still differ)
            row.update(state=RepositoryState.SYNCED, last_error=None)
        rows.append(row)
    store.state.set_repository_state(secondary, rows)


def images_of(
    primary: Snapshot, skipped: Iterable[Skipped] = ()
) -> dict[tuple[str, str], list[str]]:
    """{(repository, digest): tags} of the primary's listing: what a deep verification walks,
    less the images this run's plan ``skipped`` (named already; walking them again would only
    fetch their manifests twice)."""
    left_out = {(s.repository, s.digest) for s in skipped}
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for repository, tag, digest in zip(
        primary.tags["repository"], primary.tags["tag"], primary.tags["digest"]
    ):
        if (repository, digest) not in left_out:
            found[(repository, digest)].append(tag)
    return dict(found)
