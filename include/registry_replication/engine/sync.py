"""One full replication pass, in process: snapshot, diff, plan, copy, prune, verify.

The Airflow DAGs run the same steps as separate tasks; the CLI and tests run them here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import pandas as pd

from registry_replication.engine import diff as diffs
from registry_replication.engine import verification
from registry_replication.engine import verify as verifying
from registry_replication.engine.copy import DEFAULT_CHUNK_SIZE, BlobResult, Copier, ImageResult
from registry_replication.engine.fanout import FanoutCopier
from registry_replication.engine.findings import DeepReport
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import Plan, build_plan
from registry_replication.engine.prune import PruneRefused, PruneResult, prunable, prune
from registry_replication.engine.secondary_listing import secondary_after, secondary_listing
from registry_replication.engine.sites import Site, only, outcome_of, per_site
from registry_replication.engine.snapshot import ReadManifests, take_snapshot
from registry_replication.outcomes import Scope, Snapshot, VerifyLevel, failed_digests
from registry_replication.run_outcome import RunOutcome
from registry_replication.settings import current
from registry_replication.store import Store
from registry_replication.store.record import RunKind, TagRecord
from registry_replication.transport.client import Descriptor, RegistryClient

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


@dataclass
class MultiSyncReport:
    """One run over several secondaries: each one's report, or what kept the run from serving
    it at all (its listing or its plan failed); one secondary's failure is never another's."""

    reports: dict[str, SyncReport] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)
    primary_bytes: int = 0  # blob bytes read from the primary, each shared blob once

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(r.failed for r in self.reports.values())


def listings(
    primary: RegistryClient,
    sites: Sequence[Site],
    options: SyncOptions,
    *,
    full: Collection[str] = (),
    manifests: ReadManifests | None = None,
) -> tuple[Snapshot, dict[str, tuple[Snapshot, RunKind] | Exception]]:
    """The primary, listed once, conditionally on what every site's record holds
    (``manifests``: the tags some record lacks are read whole, into it); each site at the same
    time, listed (a full run, or one of ``full``) or as recorded (a cheap run). A site that
    cannot be listed is its exception; the primary's failure raises."""
    with ThreadPoolExecutor(1 + len(sites)) as pool:
        source = pool.submit(
            take_snapshot,
            primary,
            options.scope,
            concurrency=options.concurrency,
            repositories=options.repositories,
            known=partial(known_to_all, [site.record for site in sites]),
            manifests=manifests,
        )
        targets = {
            site.name: pool.submit(
                secondary_listing,
                site.client,
                primary,
                site.record,
                options.scope,
                repositories=options.repositories,
                concurrency=options.concurrency,
                full_verify=options.full_verify or site.name in full,
                cadence_hours=options.full_verify_hours,
                written_by=site.leases.owner if site.leases else "listing",
            )
            for site in sites
        }
        return source.result(), {name: outcome_of(f.result) for name, f in targets.items()}


def known_to_all(
    records: Sequence[TagRecord], repositories: Sequence[str]
) -> dict[tuple[str, str], Descriptor]:
    """The tags every record holds at the same descriptor: what a conditional ``HEAD`` of the
    primary confirms for all the sites at once."""
    first, *others = [record.descriptors(repositories) for record in records]
    return {
        pair: found
        for pair, found in first.items()
        if all(other.get(pair) == found for other in others)
    }


def planned_many(
    primary: RegistryClient,
    sites: Sequence[Site],
    options: SyncOptions,
    *,
    full: Collection[str] = (),
) -> dict[str, SyncReport | Exception]:
    """Every site listed (``listings``), its differences and the plan that closes them: the
    reports of a run that has copied nothing yet, one per site (or what stopped that site)."""
    read: ReadManifests = {}  # each manifest the listing read whole, for every plan
    source, listed = listings(primary, sites, options, full=full, manifests=read)

    def plan_for(site: Site) -> SyncReport:
        target = listed[site.name]
        if isinstance(target, Exception):
            raise target
        listing, kind = target
        differences = diffs.diff(source, listing)
        plan = build_plan(
            primary,
            site.client,
            diffs.wanted(differences),
            concurrency=options.concurrency,
            known_manifests=read,
        )
        return SyncReport(source, listing, differences, plan, run_kind=kind)

    return per_site(sites, plan_for)


def planned(
    primary: RegistryClient,
    secondary: RegistryClient,
    options: SyncOptions,
    record: TagRecord,
) -> SyncReport:
    """``planned_many`` for one secondary, whose failure raises."""
    return only(planned_many(primary, [Site(record.secondary, secondary, record)], options))


def run_sync(
    primary: RegistryClient,
    secondary: RegistryClient,
    options: SyncOptions | None = None,
    *,
    leases: Leases | None = None,
) -> SyncReport:
    """``run_sync_many`` for one secondary, whose failure raises. ``leases``: the write
    protocol shared with every other writer, on the rows of the secondary it names; default:
    leases in the replication store the DAGs use (``REGISTRY_REPLICATION_DB_URL`` or
    ``$AIRFLOW_HOME``) on the first configured secondary."""
    if leases is None:
        with Leases(Store(), current().secondaries[0]) as own:
            return run_sync(primary, secondary, options, leases=own)
    many = run_sync_many(primary, [Site.writing(secondary, leases)], options)
    return only({**many.reports, **many.errors})


def run_sync_many(
    primary: RegistryClient, sites: Sequence[Site], options: SyncOptions | None = None
) -> MultiSyncReport:
    """One full replication pass from ``primary`` to every site (each with its ``leases``):
    the primary listed once, each site listed and planned, every blob several sites lack read
    from the primary once (``FanoutCopier``), then each site's images, prune and verification,
    the sites side by side. Each site is a unit of failure: what one raises is its outcome."""
    options = options or SyncOptions()
    started = time.monotonic()
    levels: dict[str, tuple[VerifyLevel, str]] = {}
    for site in sites:
        levels[site.name] = verification.choose_level(
            site.record.store,
            site.name,
            options.verify,
            options.repositories,
            options.scope,
            options.deep_verify_days,
        )
        log.info("%s: verification level %s: %s", site.name, *levels[site.name])
    # A deep verification starts from a listing of the secondary.
    forced = {
        name
        for name, (level, _) in levels.items()
        if level != VerifyLevel.TAGS and not options.full_verify
    }
    result = MultiSyncReport()
    for name, planned_site in planned_many(primary, sites, options, full=forced).items():
        if isinstance(planned_site, Exception):
            log.error("%s: not served this run: %s", name, planned_site)
            result.errors[name] = planned_site
            continue
        level, why = levels[name]
        planned_site.level = level
        if name in forced:
            planned_site.run_kind = RunKind(
                "full", f"a {level} verification lists the secondary ({why})", verification_due=True
            )
        result.reports[name] = planned_site
    live = [site for site in sites if site.name in result.reports]
    if options.dry_run:
        for site in live:
            log.info(
                "%s: dry run: nothing copied\n%s",
                site.name,
                diffs.summary(result.reports[site.name].differences).to_string(),
            )
    elif live:
        result.primary_bytes = _copy(primary, live, result.reports, options)
    finished = per_site(
        live, lambda site: _finish(primary, site, result.reports[site.name], options)
    )
    for name, outcome in finished.items():
        if isinstance(outcome, Exception):
            log.error("%s: the run's prune or verification failed: %s", name, outcome)
            result.errors[name] = outcome
            del result.reports[name]
    for report in result.reports.values():
        report.seconds = time.monotonic() - started
    return result


def _copy(
    primary: RegistryClient,
    sites: Sequence[Site],
    reports: Mapping[str, SyncReport],
    options: SyncOptions,
) -> int:
    """Each site's plan copied: its blobs (read once from the primary for all the sites), then
    its images (an image whose blobs failed is not pushed). Returns the blob bytes read from
    the primary."""
    copiers = {
        site.name: Copier(
            primary,
            site.client,
            leases=site.writer,
            parallelism=options.parallelism,
            concurrency=options.concurrency,
            chunk_size=options.chunk_size or DEFAULT_CHUNK_SIZE,
            manifests=reports[site.name].plan.manifests,
            recheck=False,
        )
        for site in sites
    }
    plans = {name: reports[name].plan for name in copiers}
    if len(sites) == 1:  # one site: its own copy, no fan-out to pay for
        (name, copier), (plan,) = next(iter(copiers.items())), plans.values()
        blobs = {name: copier.copy_blobs(plan.blobs)}
        read = sum(r.bytes for r in blobs[name])
    else:
        fanout = FanoutCopier(primary, copiers, parallelism=options.parallelism)
        blobs = fanout.copy_blobs({name: plan.blobs for name, plan in plans.items()})
        read = fanout.primary_bytes
    images = per_site(
        sites,
        lambda site: copiers[site.name].push_images(
            plans[site.name].images, failed_digests(blobs[site.name])
        ),
    )
    for name, report in reports.items():
        report.blobs = blobs[name]
        pushed = images[name]
        if isinstance(pushed, Exception):
            raise pushed  # push_images answers for every image: this is a bug, not a site
        report.images = pushed
    return read


def _finish(primary: RegistryClient, site: Site, report: SyncReport, options: SyncOptions) -> None:
    """A site's prune (unless ``options.prune`` is off) and its verification."""
    leases = site.writer
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
                site.client,
                doomed,
                leases=leases,
                dry_run=options.dry_run,
                concurrency=options.concurrency,
            )
        except PruneRefused as exc:
            log.error("%s: %s", site.name, exc)
            report.prune_refused = str(exc)
    if options.dry_run:
        return
    if report.level != VerifyLevel.TAGS:
        report.deep = verifying.deep_verify(
            primary,
            site.client,
            verifying.images_of(report.primary, report.plan.skipped),
            report.level,
            leases=leases,
            fraction=options.content_verify_fraction,
            concurrency=options.concurrency,
            parallelism=options.parallelism,
        )
    # A deep verification may have repaired anything: then every repository is listed.
    after = secondary_after(
        site.client,
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
        leases.store, site.name, report.verification, report.level, report.secondary
    )
