"""Snapshots: every (repository, tag, digest, media type) a registry holds, within a scope.

Catalog, then tags per repository, then ``HEAD`` of each tag's manifest, concurrently through
a bounded pool. A snapshot whose catalog could not be read has ``errors``: it can still drive
copies, but never a deletion. A repository or tag that cannot be handled (a name out of
grammar, a non-string catalog entry, a bad ``Docker-Content-Digest``, a schema 1 manifest, an
answer that is not the expected JSON, any listing error) is that repository's *problem*: it is
reported with what to do, and only that repository is kept from pruning; every other
repository replicates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from registry_replication.outcomes import Scope, Snapshot, describe
from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import Descriptor, Manifest, RegistryClient
from registry_replication.transport.errors import NotFoundError, RegistryError
from registry_replication.transport.reference import Digest, InvalidReference, Repository, Tag

log = logging.getLogger(__name__)

COLUMNS = ["repository", "tag", "digest", "media_type"]
NAME_ADVICE = (
    "the registry accepted a name our reference grammar refuses (for example an uppercase "
    "first component, which distribution reads as a hostname); push the image again under a "
    "valid lowercase name and delete this one on the primary. Other repositories replicate"
)
SCHEMA1_ADVICE = "rebuild and push the image with a current client (Docker schema 2 or OCI)"


def problem_line(problem: dict[str, str | None]) -> str:
    """One problem as a log or report line: where, why, and what to do."""
    where = problem["repository"] + (f":{problem['tag']}" if problem.get("tag") else "")
    return f"{where}: {problem['reason']}. What to do: {problem['advice']}"


def _shown(value: object, limit: int = 255) -> str:
    """A name as the registry sent it, for a report: non-strings as JSON, control characters
    escaped (a line break must not forge a log line), clipped."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)[:limit]


# Repositories listed at a time when streaming: bounds the rows held before they are written.
REPOSITORY_BATCH = 32

# Typed as listed; a DataFrame of them holds plain strings.
Row = tuple[Repository, Tag, Digest, str]
# What the caller last saw of some repositories' tags: {(repository, tag): descriptor}.
KnownTags = Callable[[Sequence[str]], Mapping[tuple[str, str], Descriptor]]
# Manifests a listing read, for the plan: {(repository, digest): manifest}.
ReadManifests = dict[tuple[str, str], Manifest]


@dataclass
class Listing:
    """What a streamed snapshot reports besides its rows (which went to the sink)."""

    registry: str
    tags: int = 0
    errors: list[str] = field(default_factory=list)
    problems: list[dict[str, str | None]] = field(default_factory=list)


def take_snapshot(
    client: RegistryClient,
    scope: Scope = Scope(),
    *,
    concurrency: int = 16,
    repositories: Iterable[str] | None = None,
    known: KnownTags | None = None,
    manifests: ReadManifests | None = None,
) -> Snapshot:
    """List a registry into memory. ``repositories`` skips the catalog and lists just those."""
    rows: list[Row] = []
    listing = stream_snapshot(
        client,
        rows.extend,
        scope,
        concurrency=concurrency,
        repositories=repositories,
        known=known,
        manifests=manifests,
    )
    return Snapshot(
        listing.registry, pd.DataFrame(rows, columns=COLUMNS), listing.errors, listing.problems
    )


def stream_snapshot(
    client: RegistryClient,
    sink: Callable[[list[Row]], object],
    scope: Scope = Scope(),
    *,
    concurrency: int = 16,
    repositories: Iterable[str] | None = None,
    batch: int = REPOSITORY_BATCH,
    known: KnownTags | None = None,
    manifests: ReadManifests | None = None,
) -> Listing:
    """List a registry, ``batch`` repositories at a time (their tag lists, then a ``HEAD`` of
    each tag, ``concurrency`` requests in flight), handing each batch's rows to ``sink``: a
    registry of any size is listed in the memory of one batch.

    ``known(repositories)``: what the caller last saw of those repositories' tags (the record
    of the secondary's tags). Each of those tags is ``HEAD``ed conditionally: the registry
    confirms an unchanged tag without reading its manifest. Whatever ``known`` says, the rows
    are what the registry holds now.

    ``manifests``: each tag no conditional ``HEAD`` can confirm is read with a ``GET`` instead,
    its manifest kept there: the tags a copy will most likely need, read once for the listing
    and the plan (distribution reads the manifest for a plain ``HEAD`` all the same).
    """
    listing = Listing(client.url)
    errors, problems = listing.errors, listing.problems

    def problem(repository: object, tag: object, reason: str, advice: str | None) -> None:
        found = {
            "repository": _shown(repository),
            "tag": None if tag is None else _shown(tag, 128),
            "reason": reason,
            "advice": advice or "fix it on the registry; the next run retries",
        }
        log.error("cannot replicate from %s: %s", client.url, problem_line(found))
        problems.append(found)

    def failed(repository: str, tag: str | None, exc: Exception) -> None:
        """Whatever listing one repository or tag raised is that one's problem alone."""
        if isinstance(exc, RegistryError):
            problem(repository, tag, exc.without_advice, exc.advice)
        else:
            log.error("listing %s:%s raised", repository, tag, exc_info=exc)
            problem(repository, tag, describe(exc), None)

    if repositories is None:
        try:
            listed = list(client.catalog())
        except Exception as exc:  # noqa: BLE001 - an incomplete listing, said as such
            log.error("cannot list the catalog of %s: %s", client.url, describe(exc))
            errors.append(describe(exc))
            return listing
    else:
        listed = list(repositories)
    names: list[Repository] = []  # the door: every name listed or given is typed here
    for name in listed:
        if not isinstance(name, str):
            problem(
                name,
                None,
                f"the catalog holds a non-string entry {_shown(name, 80)}",
                "the registry's catalog is corrupt: check its storage for a repository "
                "directory with an odd name; other repositories replicate",
            )
        elif scope.wants_repository(name):
            try:
                names.append(Repository.of(name))
            except InvalidReference as exc:
                problem(name, None, str(exc), NAME_ADVICE)

    def list_tags(name: Repository) -> list[tuple[Repository, Tag]]:
        try:
            listed_tags = client.tags(name)
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: one repository
            failed(name, None, exc)
            return []
        wanted = []
        for text in listed_tags:
            try:
                tag = Tag(text)
            except InvalidReference as exc:
                problem(
                    name,
                    text,
                    str(exc),
                    "the registry listed a tag our reference grammar "
                    "refuses; re-tag the image with a valid tag on the primary",
                )
                continue
            if scope.wants_tag(tag):
                wanted.append((name, tag))
        return wanted

    expected: Mapping[tuple[str, str], Descriptor] = {}

    def read_whole(repository: str, tag: str) -> Descriptor | None:
        try:
            manifest = client.get_manifest(repository, tag)
        except NotFoundError as exc:
            if exc.code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"):
                return None  # deleted since the tag list: simply not there
            raise  # not the registry's 404 (a proxy's page?): never taken for "gone"
        manifests[(repository, manifest.digest)] = manifest
        return Descriptor(manifest.digest, manifest.media_type, len(manifest.raw))

    def head(pair: tuple[Repository, Tag]) -> Row | None:
        repository, tag = pair
        try:
            if manifests is not None and pair not in expected:
                descriptor = read_whole(repository, tag)
            else:
                descriptor = client.head_manifest(repository, tag, known=expected.get(pair))
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: one tag
            failed(repository, tag, exc)
            return None
        if descriptor is None:  # deleted between listing and HEAD: simply not there
            return None
        if descriptor.media_type in mt.SCHEMA1:
            # Listed all the same (the diff sees it); the plan skips it.
            problem(
                repository,
                tag,
                "a Docker schema 1 manifest, which cannot be replicated "
                "byte for byte (deprecated, signed per registry)",
                SCHEMA1_ADVICE,
            )
        return repository, tag, descriptor.digest, descriptor.media_type

    with ThreadPoolExecutor(concurrency, thread_name_prefix="snapshot") as pool:
        for start in range(0, len(names), batch):
            chunk = names[start : start + batch]
            if known is not None:
                try:
                    expected = known(chunk)
                except Exception as exc:  # only an optimisation: list unconditionally instead
                    log.warning(
                        "listing %s without conditional HEADs, the record of the "
                        "secondary's tags being unreadable (%s: %s; repositories %s): "
                        "the listing is as complete, the registry does more work",
                        client.url,
                        type(exc).__name__,
                        exc,
                        ", ".join(chunk[:5]) + (" ..." if len(chunk) > 5 else ""),
                    )
                    expected = {}
            pairs = [pair for found in pool.map(list_tags, chunk) for pair in found]
            rows = [row for row in pool.map(head, pairs) if row is not None]
            sink(rows)
            listing.tags += len(rows)
    odd = {p["repository"] for p in problems}
    log.info(
        "snapshot of %s: %d repositories, %d tags%s",
        client.url,
        len(names),
        listing.tags,
        f", {len(problems)} problems in {len(odd)} repositories (not pruned)" if problems else "",
    )
    return listing
