"""Mirror deletions: remove tags from the secondary that are gone from the primary.

distribution deletes manifests only by digest, which untags every tag on that digest. So each
deletion reads the manifest first, deletes it, and restores in the same step every tag that
must stay (and the manifest itself, by digest, when a kept index still refers to it).
Guards: never from an incomplete snapshot (nor in a repository with a listing problem), and
never more than ``max_fraction`` of the secondary's tags unless forced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from registry_replication import mediatypes as mt
from registry_replication.client import RegistryClient
from registry_replication.diff import EXTRA
from registry_replication.errors import RegistryError
from registry_replication.snapshot import Scope, Snapshot, take_snapshot

log = logging.getLogger(__name__)

DELETED, WOULD_DELETE, RESTORED, FAILED = "deleted", "would delete", "restored", "failed"


class PruneRefused(Exception):
    """The guards stopped a prune; the message says why and how to override."""


@dataclass
class PruneResult:
    repository: str
    tag: str
    digest: str
    action: str  # deleted | would delete | restored | failed
    error: str | None = None

    def log_line(self) -> str:
        line = f"prune {self.action:<12} {self.repository}:{self.tag} {self.digest}"
        return f"{line}: {self.error}" if self.error else line


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
            "deleting by digest could untag tags that were not listed"
        )
    extra = differences[differences["status"] == EXTRA]
    # A repository with a listing problem on either side is incomplete: leave it alone.
    unsure = primary.problem_repositories | secondary.problem_repositories
    if unsure & set(extra["repository"]):
        log.warning("not pruning %s: their listing is incomplete (see the snapshot's problems)",
                    ", ".join(sorted(unsure & set(extra["repository"]))))
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
    secondary: RegistryClient,
    doomed: pd.DataFrame,
    *,
    dry_run: bool = False,
    concurrency: int = 16,
) -> list[PruneResult]:
    """Delete ``doomed`` tags, restoring the tags (and index children) that share a digest.

    The secondary is listed again first: the copy step may have moved tags since the snapshot.
    """
    if doomed.empty:
        return []
    repositories = sorted(doomed["repository"].unique())
    current = take_snapshot(secondary, Scope(), concurrency=concurrency, repositories=repositories)
    if current.errors:
        raise PruneRefused(f"not pruning: cannot list the secondary again ({current.errors[0]})")
    doomed = doomed[~doomed["repository"].isin(current.problem_repositories)]
    now = current.tags.set_index(["repository", "tag"])["digest"].to_dict()
    results: list[PruneResult] = []
    for (repository, digest), group in doomed.groupby(["repository", "digest"], sort=True):
        tags = [t for t in sorted(group["tag"]) if now.get((repository, t)) == digest]
        if not tags:
            continue  # already gone or moved since the snapshot
        if dry_run:
            results += [PruneResult(repository, t, digest, WOULD_DELETE) for t in tags]
            continue
        results += _delete(secondary, current, repository, digest, tags)
    for result in results:
        (log.error if result.action == FAILED else log.info)(result.log_line())
    return results


def _delete(
    secondary: RegistryClient, current: Snapshot, repository: str, digest: str, tags: list[str]
) -> list[PruneResult]:
    in_repo = current.tags[current.tags["repository"] == repository]
    keep = sorted(set(in_repo.loc[in_repo["digest"] == digest, "tag"]) - set(tags))
    try:
        manifest = secondary.get_manifest(repository, digest)
        referenced = _index_children(secondary, in_repo[in_repo["digest"] != digest])
        secondary.delete_manifest(repository, digest)
        results = [PruneResult(repository, t, digest, DELETED) for t in tags]
        # Restore at once what deleting by digest took with it.
        if digest in referenced:
            secondary.put_manifest(repository, digest, manifest.raw, manifest.media_type)
        for tag in keep:
            secondary.put_manifest(repository, tag, manifest.raw, manifest.media_type)
            results.append(PruneResult(repository, tag, digest, RESTORED))
        return results
    except RegistryError as exc:
        return [PruneResult(repository, t, digest, FAILED, str(exc)) for t in tags]


def _index_children(secondary: RegistryClient, tags: pd.DataFrame) -> set[str]:
    children: set[str] = set()
    indexes = tags[tags["media_type"].isin(mt.INDEXES)].drop_duplicates("digest")
    for repository, digest in zip(indexes["repository"], indexes["digest"]):
        body = secondary.get_manifest(repository, digest).json
        children.update(m["digest"] for m in body.get("manifests") or [])
    return children
