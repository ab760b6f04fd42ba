"""Mirror deletions: remove tags from the secondary that are gone from the primary.

distribution 2.8 deletes manifests only by digest, which would untag every other tag on that
digest too. So a tag is removed without touching its digest: it is first pointed at a
*tombstone* (a tiny OCI artifact unique to this deletion) and the tombstone is deleted by
digest, taking only that tag with it. No tag that must stay is ever missing, not even for a
moment, and a crash between the two steps leaves a tombstone that the next prune removes.

Every removal happens under the repository's lease and only while the primary still lacks
the tag (compare-and-set), so a tag pushed again during the run is never deleted. Guards:
never from an incomplete snapshot (nor in a repository with a listing problem), and never
more than ``max_fraction`` of the secondary's tags unless forced; the event path's deletes,
made one repository at a time, share a ``DeleteBudget`` with the same fraction.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

import pandas as pd

from registry_replication.engine.diff import EXTRA
from registry_replication.engine.leases import Leases
from registry_replication.engine.snapshot import problem_line, take_snapshot
from registry_replication.outcomes import PruneOutcome, Scope, Snapshot, describe
from registry_replication.store.record import TagRecord
from registry_replication.store.schema import now
from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import RegistryClient

log = logging.getLogger(__name__)

TOMBSTONE_ARTIFACT_TYPE = "application/vnd.registry-replication.tombstone.v1"
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


class PruneRefused(Exception):
    """The guards stopped a prune; the message says why and how to override."""


@dataclass
class PruneResult:
    repository: str
    tag: str
    digest: str
    outcome: PruneOutcome
    error: str | None = None  # why it failed, or why it was kept

    def log_line(self) -> str:
        line = f"prune {self.outcome:<12} {self.repository}:{self.tag} {self.digest}"
        return f"{line}: {self.error}" if self.error else line


class DeleteBudget:
    """``prunable``'s mass-deletion guard for deletes decided one repository at a time (the
    event path): together they remove at most ``max_fraction`` of the secondary's tags, as
    recorded (``TagRecord``) when the first is taken. A record that lacks repositories counts
    fewer tags, so it refuses sooner, never later. Thread safe."""

    def __init__(self, record: TagRecord, max_fraction: float) -> None:
        self._record = record
        self.max_fraction = max_fraction
        self._total: int | None = None
        self._taken = 0
        self._lock = threading.Lock()

    def take(self, repository: str, tags: Collection[str]) -> None:
        """Reserve the removal of ``tags``; ``PruneRefused`` if that passes the fraction."""
        if not tags:
            return
        with self._lock:
            if self._total is None:
                self._total = self._record.tag_count()
            taken = self._taken + len(tags)
            if taken > self.max_fraction * max(self._total, len(tags)):
                raise PruneRefused(
                    f"not deleting {len(tags)} tags of {repository} ({', '.join(sorted(tags)[:5])}"
                    f"{' ...' if len(tags) > 5 else ''}): with this batch's other deletes, "
                    f"{taken} of the secondary's {self._total} recorded tags would go, above "
                    f"max_prune_fraction ({100 * self.max_fraction:.0f}%). If the primary really "
                    "deleted them, run registry_reconcile with force_prune (or raise "
                    "[registry_replication] max_prune_fraction)"
                )
            self._taken = taken


def prunable(
    differences: pd.DataFrame,
    primary: Snapshot,
    secondary: Snapshot,
    *,
    max_fraction: float = 0.5,
    force: bool = False,
) -> pd.DataFrame:
    """The (repository, tag, digest) rows to delete, after the guards."""
    if primary.errors:
        raise PruneRefused(
            f"not pruning: the primary's listing was incomplete ({len(primary.errors)} errors, "
            f"first: {primary.errors[0]}); a tag that failed to list would look deleted. "
            "Fix the primary's errors; the next run prunes"
        )
    if secondary.errors:
        raise PruneRefused(
            f"not pruning: the secondary's listing was incomplete ({secondary.errors[0]}); "
            "fix that error, the next run prunes"
        )
    extra = differences[differences["status"] == EXTRA]
    # A repository with a listing problem on either side is incomplete: leave it alone.
    unsure = primary.problem_repositories | secondary.problem_repositories
    if unsure & set(extra["repository"]):
        log.warning(
            "not pruning %s: their listing is incomplete (see the snapshot's problems)",
            ", ".join(sorted(unsure & set(extra["repository"]))),
        )
    extra = extra[~extra["repository"].isin(unsure)]
    rows = extra[["repository", "tag", "digest_secondary"]].rename(
        columns={"digest_secondary": "digest"}
    )
    total = len(secondary.tags)
    if total and len(rows) / total > max_fraction and not force:
        raise PruneRefused(
            f"not pruning: {len(rows)} of the secondary's {total} tags "
            f"({100 * len(rows) / total:.0f}%) would be deleted, above the limit of "
            f"{100 * max_fraction:.0f}%. If the primary really lost them, rerun with force_prune"
        )
    return rows.reset_index(drop=True)


def prune(
    primary: RegistryClient,
    secondary: RegistryClient,
    doomed: pd.DataFrame,
    *,
    leases: Leases,
    dry_run: bool = False,
    concurrency: int = 16,
) -> list[PruneResult]:
    """Delete the ``doomed`` (repository, tag, digest) rows that are still as planned: the
    secondary's tag still on that digest, and the primary still without the tag."""
    if doomed.empty:
        return []
    results: list[PruneResult] = []
    for repository, group in doomed.groupby("repository", sort=True):
        planned = dict(zip(group["tag"], group["digest"]))
        if dry_run:
            current, _ = _listing(secondary, repository, concurrency)
            results += [
                PruneResult(repository, tag, digest, PruneOutcome.WOULD_DELETE)
                for tag, digest in sorted(planned.items())
                if current.get(tag) == digest
            ]
            continue
        results += _under_lease(
            primary, secondary, repository, lambda _, planned=planned: planned, leases, concurrency
        )
    for result in results:
        (log.error if result.outcome == PruneOutcome.FAILED else log.info)(result.log_line())
    return results


def mirror_manifest_delete(
    primary: RegistryClient,
    secondary: RegistryClient,
    repository: str,
    digest: str,
    *,
    leases: Leases,
    budget: DeleteBudget,
    concurrency: int = 16,
) -> list[PruneResult]:
    """The primary deleted ``digest``: remove its tags the primary no longer has (a tag it has
    again, on any digest, stays), then the manifest itself once nothing refers to it."""
    results = _under_lease(
        primary,
        secondary,
        repository,
        lambda current: {tag: d for tag, d in current.items() if d == digest},
        leases,
        concurrency,
        also={digest},
        budget=budget,
    )
    for result in results:
        (log.error if result.outcome == PruneOutcome.FAILED else log.info)(result.log_line())
    return results


def mirror_tag_deletes(
    primary: RegistryClient,
    secondary: RegistryClient,
    repository: str,
    tags: list[str],
    *,
    leases: Leases,
    budget: DeleteBudget,
    concurrency: int = 16,
) -> list[PruneResult]:
    """The primary untagged ``tags``: remove those it still lacks, on whatever digest."""
    results = _under_lease(
        primary,
        secondary,
        repository,
        lambda current: {tag: current[tag] for tag in tags if tag in current},
        leases,
        concurrency,
        budget=budget,
    )
    for result in results:
        (log.error if result.outcome == PruneOutcome.FAILED else log.info)(result.log_line())
    return results


def _under_lease(
    primary: RegistryClient,
    secondary: RegistryClient,
    repository: str,
    select: Callable[[dict[str, str]], dict[str, str]],
    leases: Leases,
    concurrency: int,
    also: set[str] = frozenset(),
    budget: DeleteBudget | None = None,
) -> list[PruneResult]:
    """Remove the selected {tag: digest} (from the listing made inside the lease) that are
    still on that digest, then the manifests left untagged (and ``also``), as on the primary.
    ``budget``: the guard of deletes decided here rather than by ``prunable``."""
    planned: dict[str, str] = {}
    try:
        with leases.repository(repository):
            # Listed inside the lease: no other writer changes these tags until it ends, so the
            # listing also replaces the repository's record (intents of dead writers included).
            listed_since = now()
            current, indexes = _listing(secondary, repository, concurrency)
            TagRecord(leases.store, leases.secondary).replace_under_lease(
                repository, current, listed_since, leases.owner
            )
            planned = select(current)
            doomed = [(tag, d) for tag, d in sorted(planned.items()) if current.get(tag) == d]
            if budget is not None:
                budget.take(repository, [tag for tag, _ in doomed])
            results = [
                _remove_tag(primary, secondary, repository, tag, d, current, leases)
                for tag, d in doomed
            ]
            emptied = {r.digest for r in results if r.outcome == PruneOutcome.DELETED} | set(also)
            _delete_untagged(primary, secondary, repository, emptied, current, indexes, leases)
            return results
    except Exception as exc:  # noqa: BLE001 - the unit's boundary: this repository
        return [
            PruneResult(repository, tag, d, PruneOutcome.FAILED, describe(exc))
            for tag, d in sorted((planned or {"*": ",".join(sorted(also))}).items())
        ]


def _listing(
    secondary: RegistryClient, repository: str, concurrency: int
) -> tuple[dict[str, str], set[str]]:
    """The repository's tags on the secondary now ({tag: digest}), and its index digests."""
    current = take_snapshot(secondary, Scope(), concurrency=concurrency, repositories=[repository])
    if not current.complete:
        why = current.errors[0] if current.errors else problem_line(current.problems[0])
        raise PruneRefused(
            f"not pruning {repository}: its listing on the secondary is incomplete ({why})"
        )
    tags = current.tags
    return (
        dict(zip(tags["tag"], tags["digest"])),
        set(tags.loc[tags["media_type"].isin(mt.INDEXES), "digest"]),
    )


def _remove_tag(
    primary: RegistryClient,
    secondary: RegistryClient,
    repository: str,
    tag: str,
    digest: str,
    current: dict[str, str],
    leases: Leases,
) -> PruneResult:
    try:
        now = primary.head_manifest(repository, tag)
        if now is not None:
            return PruneResult(
                repository,
                tag,
                digest,
                PruneOutcome.KEPT,
                f"the primary has it again (on {now.digest}); not deleted",
            )
        record = TagRecord(leases.store, leases.secondary)
        record.intend(repository, [tag], leases.owner)  # a kill mid-untag leaves "unknown"
        leases.check()
        untag(secondary, repository, tag)
        record.record(repository, tag, None, leases.owner)
        del current[tag]
        return PruneResult(repository, tag, digest, PruneOutcome.DELETED)
    except Exception as exc:  # noqa: BLE001 - this tag's outcome
        return PruneResult(repository, tag, digest, PruneOutcome.FAILED, describe(exc))


def untag(secondary: RegistryClient, repository: str, tag: str) -> None:
    """Remove one tag, and only that tag: point it at a fresh tombstone, delete the tombstone."""
    if not secondary.has_blob(repository, EMPTY_CONFIG_DIGEST):
        secondary.push_blob(repository, EMPTY_CONFIG_DIGEST, EMPTY_CONFIG, len(EMPTY_CONFIG))
    tombstone = secondary.put_manifest(
        repository, tag, _tombstone(repository, tag), mt.OCI_MANIFEST
    )
    secondary.delete_manifest(repository, tombstone)


def _tombstone(repository: str, tag: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": TOMBSTONE_ARTIFACT_TYPE,
            "config": {
                "mediaType": mt.OCI_EMPTY,
                "digest": EMPTY_CONFIG_DIGEST,
                "size": len(EMPTY_CONFIG),
            },
            "layers": [],
            "annotations": {
                "org.opencontainers.image.description": f"registry-replication is deleting {repository}:{tag}",
                "registry-replication.nonce": uuid.uuid4().hex,
            },
        },
        separators=(",", ":"),
    ).encode()


def _delete_untagged(
    primary: RegistryClient,
    secondary: RegistryClient,
    repository: str,
    digests: set[str],
    current: dict[str, str],
    indexes: set[str],
    leases: Leases,
) -> None:
    """Delete manifests no tag points at any more, as on the primary: unless the primary still
    has them or a kept index on the secondary refers to them."""
    candidates = {d for d in digests if d not in current.values()}
    if not candidates:
        return
    children = _index_children(secondary, repository, indexes & set(current.values()))
    for digest in sorted(candidates - children):
        if primary.head_manifest(repository, digest) is not None:
            continue
        leases.check()
        if secondary.delete_manifest(repository, digest):
            log.info("deleted untagged %s@%s, as on the primary", repository, digest)


def _index_children(secondary: RegistryClient, repository: str, digests: set[str]) -> set[str]:
    children: set[str] = set()
    for digest in sorted(digests):
        body = secondary.get_manifest(repository, digest).json
        children.update(m["digest"] for m in body.get("manifests") or [])
    return children
