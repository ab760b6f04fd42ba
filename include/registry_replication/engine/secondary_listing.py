"""The secondary's tags as a run reads them: listed (a full run), or from their record (a cheap
run, once ``record_check`` has checked the record). ``store.record`` says why the record may stand
in for a listing, and ``store.record.choose`` decides which kind of run this is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pandas as pd

from registry_replication.engine.copy import ImageResult
from registry_replication.engine.prune import PruneResult
from registry_replication.engine.record_check import RecordCheck, check_record
from registry_replication.engine.snapshot import COLUMNS, problem_line, take_snapshot
from registry_replication.outcomes import ImageOutcome, PruneOutcome, Scope, Snapshot, describe
from registry_replication.settings import current
from registry_replication.store.record import (
    INTENT,
    RunKind,
    TagRecord,
    choose,
)
from registry_replication.store.schema import now
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.errors import RegistryError
from registry_replication.transport.reference import InvalidReference, Repository

log = logging.getLogger(__name__)


def secondary_listing(
    secondary: RegistryClient,
    primary: RegistryClient,
    record: TagRecord,
    scope: Scope = Scope(),
    *,
    repositories: list[str] | None = None,
    concurrency: int = 16,
    full_verify: bool = False,
    cadence_hours: float | None = None,
    written_by: str = "listing",
) -> tuple[Snapshot, RunKind]:
    """The secondary's tags within scope: listed (full run) or from the record (cheap run).

    A cheap run reads the primary's catalog (one request per thousand repositories) only to
    find repositories the record does not know yet; those are listed on the secondary and
    recorded. Tags recorded as intent are ``HEAD``ed on the secondary.
    """
    cadence = current().full_verify_hours if cadence_hours is None else cadence_hours
    kind = choose(
        record, secondary.url, scope, repositories, full_verify=full_verify, cadence_hours=cadence
    )
    if kind.kind == "cheap" and repositories is None:
        try:
            on_primary = _primary_names(primary, scope)
        except RegistryError as exc:
            kind = RunKind(
                "full",
                f"the primary's catalog could not be read to find repositories "
                f"the record lacks ({exc.without_advice})",
            )
    checked = RecordCheck()
    if kind.kind == "cheap":  # trusted only once the secondary still matches it (record_check)
        in_scope = [
            r
            for r in (repositories if repositories is not None else record.verified(secondary.url))
            if scope.wants_repository(r)
        ]
        checked = check_record(secondary, record, in_scope, concurrency=concurrency)
        kind = (
            RunKind("full", checked.lost)
            if checked.lost
            else replace(kind, reason=f"{kind.reason}; {checked.line()}", sampled=checked.sampled)
        )
    log.info("%s", kind.line())
    if kind.kind == "full":
        started = now()
        listing = take_snapshot(
            secondary, scope, concurrency=concurrency, repositories=repositories
        )
        if not listing.errors:
            listed = set(listing.tags["repository"]) | set(repositories or ())
            if repositories is None:
                # The whole catalog was listed: what it lacks is empty on the secondary, the
                # recorded repositories and the primary's alike.
                listed |= {r for r in record.repositories() if scope.wants_repository(r)}
                try:
                    listed |= set(_primary_names(primary, scope))
                except RegistryError as exc:  # only fewer stamps: those repositories are listed
                    log.warning("cannot list the catalog of %s: %s", primary.url, exc)
            record.replace(
                secondary.url,
                listing,
                listed - listing.problem_repositories,
                scope,
                started,
                written_by,
            )
        return listing, kind

    stamps = record.verified(secondary.url)
    if repositories is None:
        names = on_primary + [r for r in stamps if scope.wants_repository(r)]
    else:
        names = [n for n in repositories if scope.wants_repository(n) and _valid(n)]
    names = sorted(set(names))
    unrecorded = [n for n in names if n not in stamps or n in checked.stale]
    recorded = [n for n in names if n in stamps and n not in checked.stale]
    frames, problems = [], []
    if unrecorded:
        log.info(
            "listing %d repositories the record does not know yet, or that differ from "
            "it, on %s: %s",
            len(unrecorded),
            secondary.url,
            ", ".join(unrecorded[:10]) + (" ..." if len(unrecorded) > 10 else ""),
        )
        started = now()
        listing = take_snapshot(secondary, scope, concurrency=concurrency, repositories=unrecorded)
        record.replace(
            secondary.url,
            listing,
            set(unrecorded) - listing.problem_repositories,
            scope,
            started,
            written_by,
        )
        frames.append(listing.tags)
        problems += listing.problems
    rows = record.tags(recorded)
    rows = rows[rows["tag"].map(scope.wants_tag).astype(bool)] if len(rows) else rows
    frames.append(
        rows.loc[rows["state"] == "present", COLUMNS]
        if len(rows)
        else pd.DataFrame(columns=COLUMNS)
    )
    unknown = rows[rows["state"] == INTENT] if len(rows) else rows
    if len(unknown):
        found, failed = _heads(
            secondary, list(zip(unknown["repository"], unknown["tag"])), concurrency
        )
        frames.append(pd.DataFrame(found, columns=COLUMNS))
        problems += failed
    tags = (
        pd.concat([f for f in frames if len(f)], ignore_index=True)
        if any(len(f) for f in frames)
        else pd.DataFrame(columns=COLUMNS)
    )
    log.info(
        "the secondary as recorded: %d repositories, %d tags (%d intents checked by HEAD, "
        "%d repositories listed)",
        len(names),
        len(tags),
        len(unknown),
        len(unrecorded),
    )
    return Snapshot(secondary.url, tags, [], problems), kind


def _primary_names(primary: RegistryClient, scope: Scope) -> list[Repository]:
    """The primary's repositories in scope (its snapshot reports the odd ones)."""
    return [
        name
        for n in primary.catalog()
        if isinstance(n, str) and scope.wants_repository(n) and (name := _valid(n))
    ]


def _valid(name: str) -> Repository | None:
    try:
        return Repository(name)
    except InvalidReference:
        return None  # the primary's snapshot reports it


def _heads(
    secondary: RegistryClient, pairs: list[tuple[str, str]], concurrency: int
) -> tuple[list[tuple[str, str, str, str]], list[dict[str, str | None]]]:
    """The secondary's answer for tags whose writer may have died mid-write."""
    found, failed = [], []

    def head(pair: tuple[str, str]):
        try:
            return pair, secondary.head_manifest(*pair), None
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this tag
            return pair, None, exc

    with ThreadPoolExecutor(max(1, min(concurrency, len(pairs)))) as pool:
        for (repository, tag), descriptor, exc in pool.map(head, pairs):
            if exc is not None:
                problem = {
                    "repository": repository,
                    "tag": tag,
                    "reason": getattr(exc, "without_advice", None) or describe(exc),
                    "advice": getattr(exc, "advice", None) or "the next run retries",
                }
                log.error(
                    "cannot check %s on %s: %s",
                    f"{repository}:{tag}",
                    secondary.url,
                    problem_line(problem),
                )
                failed.append(problem)
            elif descriptor is not None:
                found.append((repository, tag, descriptor.digest, descriptor.media_type))
    return found, failed


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
