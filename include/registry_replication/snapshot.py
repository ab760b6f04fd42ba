"""Snapshots: every (repository, tag, digest, media type) a registry holds, within a scope.

Catalog, then tags per repository, then ``HEAD`` of each tag's manifest, concurrently through
a bounded pool. A snapshot with any listing error is *incomplete*: it can still drive copies,
but never a deletion.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from registry_replication.client import RegistryClient
from registry_replication.errors import RegistryError

log = logging.getLogger(__name__)

COLUMNS = ["repository", "tag", "digest", "media_type"]


@dataclass(frozen=True)
class Scope:
    """Which repositories and tags to replicate.

    ``include``/``exclude`` are glob patterns on repository names (``group/*``); ``tags`` is a
    regular expression a tag must match in full.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    tags: str = ".*"

    def __post_init__(self) -> None:
        try:
            re.compile(self.tags)
        except re.error as exc:
            raise ValueError(f"tag pattern {self.tags!r} is not a valid regular expression: {exc}")

    def wants_repository(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )

    def wants_tag(self, tag: str) -> bool:
        return re.fullmatch(self.tags, tag) is not None

    @classmethod
    def of(
        cls,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        tags: str | None = None,
    ) -> Scope:
        return cls(tuple(include or ("*",)), tuple(exclude or ()), tags or ".*")


@dataclass
class Snapshot:
    """One registry's tags within a scope. ``errors`` non-empty means incomplete."""

    registry: str
    tags: pd.DataFrame
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors

    @property
    def repositories(self) -> list[str]:
        return sorted(self.tags["repository"].unique())

    def to_records(self) -> dict[str, object]:
        return {
            "registry": self.registry,
            "tags": self.tags.to_dict(orient="list"),
            "errors": self.errors,
        }

    @classmethod
    def from_records(cls, data: dict[str, object]) -> Snapshot:
        # dtype=str: an empty snapshot's columns would otherwise come back as floats.
        tags = pd.DataFrame(data["tags"], columns=COLUMNS, dtype=str)
        return cls(data["registry"], tags, list(data["errors"]))


def take_snapshot(
    client: RegistryClient,
    scope: Scope = Scope(),
    *,
    concurrency: int = 16,
    repositories: Iterable[str] | None = None,
) -> Snapshot:
    """List a registry. ``repositories`` skips the catalog and lists just those."""
    errors: list[str] = []
    if repositories is None:
        try:
            names = [name for name in client.catalog() if scope.wants_repository(name)]
        except RegistryError as exc:
            log.error("cannot list the catalog of %s: %s", client.url, exc)
            return Snapshot(client.url, pd.DataFrame(columns=COLUMNS), [str(exc)])
    else:
        names = [name for name in repositories if scope.wants_repository(name)]

    def list_tags(name: str) -> list[tuple[str, str]]:
        try:
            return [(name, tag) for tag in client.tags(name) if scope.wants_tag(tag)]
        except RegistryError as exc:
            log.error("cannot list the tags of %s on %s: %s", name, client.url, exc)
            errors.append(str(exc))
            return []

    def head(pair: tuple[str, str]) -> tuple[str, str, str, str] | None:
        repository, tag = pair
        try:
            descriptor = client.head_manifest(repository, tag)
        except RegistryError as exc:
            log.error("cannot read %s:%s on %s: %s", repository, tag, client.url, exc)
            errors.append(str(exc))
            return None
        if descriptor is None:  # deleted between listing and HEAD: simply not there
            return None
        return repository, tag, descriptor.digest, descriptor.media_type

    with ThreadPoolExecutor(concurrency, thread_name_prefix="snapshot") as pool:
        pairs = [pair for found in pool.map(list_tags, names) for pair in found]
        rows = [row for row in pool.map(head, pairs) if row is not None]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    log.info(
        "snapshot of %s: %d repositories, %d tags%s",
        client.url, len(names), len(frame), f", {len(errors)} errors (incomplete)" if errors else "",
    )
    return Snapshot(client.url, frame, errors)
