"""One full replication pass, in process: snapshot, diff, plan, copy, prune, verify.

The Airflow DAGs run the same steps as separate tasks; the CLI and tests run them here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import pandas as pd

from registry_replication.engine import diff as diffs
from registry_replication.engine import verification
from registry_replication.engine import verify as verifying
from registry_replication.engine.copy import BlobResult, ImageResult, copy_plan
from registry_replication.engine.findings import DeepReport
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import Plan, build_plan
from registry_replication.engine.prune import PruneRefused, PruneResult, prunable, prune
from registry_replication.engine.secondary_listing import secondary_listing
from registry_replication.engine.snapshot import COLUMNS, ReadManifests, take_snapshot
from registry_replication.outcomes import (
    ImageOutcome,
    PruneOutcome,
    Scope,
    Snapshot,
    VerifyLevel,
)
from registry_replication.run_outcome import RunOutcome
from registry_replication.settings import current
from registry_replication.store import Store
from registry_replication.store.record import RunKind, TagRecord
from registry_replication.transport.client import RegistryClient

log = logging.getLogger(__name__)


@dataclass
class SyncOptions:
    scope: Scope = field(default_factory=Scope)
    repositories: list[str] | None = None  # list these instead of the catalog
    dry_run: bool = False
    prune: bool = True
    force_prune: bool = False
    max_prune_fraction: float = 0.5
    concurrency: int = 16  # listing requests in flight per registry
    parallelism: int = 8  # blob transfers in flight
    chunk_size: int | None = None
    full_verify: bool = False  # list the secondary even if its record is fresh enough
    full_verify_hours: float | None = None  # default: the full_verify_hours setting
    verify: str = verification.AUTO  # tags | blobs | content | auto (the cadence decides)
    deep_verify_days: float | None = None  # default: the deep_verify_days setting
    content_verify_fraction: float = 1.0  # of the blobs a content verification reads back


@dataclass
class SyncReport:
    primary: Snapshot
    secondary: Snapshot
    differences: pd.DataFrame
    plan: Plan
    blobs: list[BlobResult] = field(default_factory=list)
    images: list[ImageResult] = field(default_factory=list)
    pruned: list[PruneResult] = field(default_factory=list)
    prune_refused: str | None = None
    verification: pd.DataFrame | None = None
    seconds: float = 0.0
    run_kind: RunKind | None = None  # whether the secondary was listed or read from the record
    level: VerifyLevel = VerifyLevel.TAGS
    deep: DeepReport | None = None  # blobs or content verification
    damaged: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # {repository: {digest: level}}

    def outcome(self) -> RunOutcome:
        """What failed in this run, and why."""
        return RunOutcome(
            self.blobs,
            self.images,
            self.pruned,
            self.plan.skipped,
            self.primary,
            self.prune_refused,
            self.deep.findings if self.deep else (),
            self.damaged,
            image_blobs={(t.repository, t.digest): t.blobs for t in self.plan.images},
        )

    @property
    def failed(self) -> bool:
        return self.outcome().failed

    def verification_line(self) -> str:
        """What the run verified and how: never "in sync" for what it did not look at."""
        return verification.verification_line(
            self.verification, self.level, self.run_kind, self.damaged, self.deep
        )

    def counts(self) -> dict[str, int]:
        return self.outcome().counts()


def snapshots(
    primary: RegistryClient, secondary: RegistryClient, options: SyncOptions
) -> tuple[Snapshot, Snapshot]:
    """Both sides, listed in parallel."""
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(
                take_snapshot,
                client,
                options.scope,
                concurrency=options.concurrency,
                repositories=options.repositories,
            )
            for client in (primary, secondary)
        ]
        return futures[0].result(), futures[1].result()


def listings(
    primary: RegistryClient,
    secondary: RegistryClient,
    options: SyncOptions,
    record: TagRecord,
    *,
    written_by: str = "listing",
    manifests: ReadManifests | None = None,
) -> tuple[Snapshot, Snapshot, RunKind]:
    """The primary, listed (conditionally on the record of the secondary's tags; ``manifests``:
    the tags the record lacks are read whole, into it); the secondary, listed (a full run) or
    as recorded (a cheap run)."""
    with ThreadPoolExecutor(2) as pool:
        source = pool.submit(
            take_snapshot,
            primary,
            options.scope,
            concurrency=options.concurrency,
            repositories=options.repositories,
            known=record.descriptors,
            manifests=manifests,
        )
        target = pool.submit(
            secondary_listing,
            secondary,
            primary,
            record,
            options.scope,
            repositories=options.repositories,
            concurrency=options.concurrency,
            full_verify=options.full_verify,
            cadence_hours=options.full_verify_hours,
            written_by=written_by,
        )
        listing, kind = target.result()
        return source.result(), listing, kind


def planned(
    primary: RegistryClient,
    secondary: RegistryClient,
    options: SyncOptions,
    record: TagRecord,
    *,
    written_by: str = "listing",
) -> SyncReport:
    """Both sides listed (``listings``), their differences and the plan that closes them: the
    report of a run that has copied nothing yet."""
    read: ReadManifests = {}  # each manifest the listing read whole, for the plan
    source, target, kind = listings(
        primary, secondary, options, record, written_by=written_by, manifests=read
    )
    differences = diffs.diff(source, target)
    plan = build_plan(
        primary,
        secondary,
        diffs.wanted(differences),
        concurrency=options.concurrency,
        known_manifests=read,
    )
    return SyncReport(source, target, differences, plan, run_kind=kind)


def run_sync(
    primary: RegistryClient,
    secondary: RegistryClient,
    options: SyncOptions | None = None,
    *,
    leases: Leases | None = None,
) -> SyncReport:
    """``leases``: the write protocol shared with every other writer, on the rows of the
    secondary it names; default: leases in the replication store the DAGs use
    (``REGISTRY_REPLICATION_DB_URL`` or ``$AIRFLOW_HOME``) on the first configured secondary."""
    if leases is None:
        with Leases(Store(), current().secondaries[0]) as own:
            return run_sync(primary, secondary, options, leases=own)
    options = options or SyncOptions()
    started = time.monotonic()
    level, why = verification.choose_level(
        leases.store,
        leases.secondary,
        options.verify,
        options.repositories,
        options.scope,
        options.deep_verify_days,
    )
    log.info("verification level %s: %s", level, why)
    forced = level != VerifyLevel.TAGS and not options.full_verify
    if forced:  # a deep verification starts from a listing of the secondary
        options = replace(options, full_verify=True)
    record = TagRecord(leases.store, leases.secondary)
    report = planned(primary, secondary, options, record, written_by=leases.owner)
    report.level = level
    if forced:
        report.run_kind = RunKind(
            "full", f"a {level} verification lists the secondary ({why})", verification_due=True
        )
    if options.dry_run:
        log.info("dry run: nothing copied\n%s", diffs.summary(report.differences).to_string())
    else:
        report.blobs, report.images = copy_plan(
            primary,
            secondary,
            report.plan,
            leases=leases,
            recheck=False,
            parallelism=options.parallelism,
            concurrency=options.concurrency,
            chunk_size=options.chunk_size,
        )
    if options.prune:
        try:
            doomed = prunable(
                report.differences,
                report.primary,
                report.secondary,
                max_fraction=options.max_prune_fraction,
                force=options.force_prune,
            )
            report.pruned = prune(
                primary,
                secondary,
                doomed,
                leases=leases,
                dry_run=options.dry_run,
                concurrency=options.concurrency,
            )
        except PruneRefused as exc:
            log.error(str(exc))
            report.prune_refused = str(exc)
    if not options.dry_run:
        if level != VerifyLevel.TAGS:
            report.deep = verifying.deep_verify(
                primary,
                secondary,
                verifying.images_of(report.primary, report.plan.skipped),
                level,
                leases=leases,
                fraction=options.content_verify_fraction,
                concurrency=options.concurrency,
                parallelism=options.parallelism,
            )
        # A deep verification may have repaired anything: then every repository is listed.
        after = secondary_after(
            secondary,
            report.secondary,
            report.images,
            report.pruned,
            scope=options.scope,
            concurrency=options.concurrency,
            unsure={s.repository for s in report.plan.skipped},
            relist_all=report.run_kind.verification_due or report.deep is not None,
        )
        report.verification = diffs.verify(report.primary, after)
        report.damaged = verification.settle(
            leases.store, leases.secondary, report.verification, level, report.secondary
        )
    report.seconds = time.monotonic() - started
    return report


def secondary_after(
    secondary: RegistryClient,
    before: Snapshot,
    images: Iterable[ImageResult],
    pruned: Iterable[PruneResult],
    *,
    scope: Scope,
    concurrency: int,
    unsure: Iterable[str] = (),
    relist_all: bool = False,
) -> Snapshot:
    """The secondary after a run's writes, for its verification: the listing the run began
    with plus the writes the secondary acknowledged. Listed again: the repositories where
    something did not go as planned (a write failed, blocked or skipped, a tag moved, a removal
    not done; ``unsure``), or, when a full verification is due (``relist_all``), every
    repository the run changed."""
    images, pruned = list(images), list(pruned)
    done = (ImageOutcome.PUSHED, ImageOutcome.SKIPPED)
    changed = {r.repository for r in images if r.manifests_pushed or r.moved} | {
        r.repository for r in pruned if r.outcome != PruneOutcome.WOULD_DELETE
    }
    doubtful = (
        {r.repository for r in images if r.outcome not in done or r.moved}
        | set(unsure)
        | {
            r.repository
            for r in pruned
            if r.outcome not in (PruneOutcome.DELETED, PruneOutcome.WOULD_DELETE)
        }
    )
    relist = sorted(changed | doubtful if relist_all else doubtful)
    listed_again = set(relist)
    written = pd.DataFrame(
        [
            (r.repository, tag, r.digest, r.media_type)
            for r in images
            if r.outcome in done and r.repository not in listed_again
            for tag in r.tags
        ],
        columns=COLUMNS,
    )
    replaced = {(r.repository, r.tag) for r in pruned if r.outcome == PruneOutcome.DELETED} | set(
        zip(written["repository"], written["tag"])
    )
    keep = [
        repository not in listed_again and (repository, tag) not in replaced
        for repository, tag in zip(before.tags["repository"], before.tags["tag"])
    ]
    frames = [before.tags.loc[pd.Series(keep, index=before.tags.index, dtype=bool)], written]
    errors, problems = before.errors, before.problems
    if relist:
        log.info(
            "verification: listing again %d repositories where this run's writes did not "
            "all go as planned%s: %s",
            len(relist),
            " (or changed: a full verification is due)" if relist_all else "",
            ", ".join(relist[:10]) + (" ..." if len(relist) > 10 else ""),
        )
        fresh = take_snapshot(secondary, scope, concurrency=concurrency, repositories=relist)
        frames.append(fresh.tags)
        errors, problems = errors + fresh.errors, problems + fresh.problems
    frames = [f for f in frames if len(f)]
    return Snapshot(
        before.registry,
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS),
        errors,
        problems,
    )
