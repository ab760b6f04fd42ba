"""What happened to each thing a run touched, the run's summary, and how sizes read; and the
two values every layer passes around: a run's ``Scope`` and a registry's ``Snapshot``. Whether
the run failed, and why, is ``run_outcome.RunOutcome``.

Every result type names its result ``outcome``, typed by the ``StrEnum`` of its kind. The values
are the strings the logs, XCom records and the replication store have always held, so records
written before these types existed read back the same.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


class BlobOutcome(StrEnum):
    SKIPPED = "skipped"  # already on the secondary
    MOUNTED = "mounted"  # cross-repository mount: no bytes moved
    COPIED = "copied"
    FAILED = "failed"


class ImageOutcome(StrEnum):
    PUSHED = "pushed"
    SKIPPED = "skipped"  # every manifest already there
    BLOCKED = "blocked"  # a blob it needs failed to copy
    FAILED = "failed"


class PruneOutcome(StrEnum):
    DELETED = "deleted"
    WOULD_DELETE = "would delete"  # dry run
    KEPT = "kept"  # pushed again on the primary meanwhile
    FAILED = "failed"


class EventStatus(StrEnum):
    """An event in the queue."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"  # out of attempts: a dead letter
    REJECTED = "rejected"  # stored but never processed (out of grammar, malformed)


class RepositoryState(StrEnum):
    """A repository's replication state: recorded by the tasks, shown by the status page."""

    SYNCED = "synced"
    PENDING = "pending"  # differs, a run will copy it
    FAILED = "failed"
    # A blob or manifest present on the secondary with the wrong size or bytes: the registry
    # never overwrites an existing data file, so only its removal by an operator repairs it.
    DAMAGED = "damaged"
    NEVER_SYNCED = "never synced"  # shown for a repository no run has recorded yet


class VerifyLevel(StrEnum):
    """How deep a run verifies the secondary (``verify``): each level includes the one above."""

    TAGS = "tags"  # tag -> digest lists, from the record or a listing
    BLOBS = "blobs"  # every tag's closure: child manifests fetched, blobs HEADed with their size
    CONTENT = "content"  # as blobs, and each blob read back and hashed

    @property
    def depth(self) -> int:
        return list(VerifyLevel).index(self)


class CheckOutcome(StrEnum):
    """One blob or manifest of a deep verification."""

    OK = "ok"
    REPAIRED = "repaired"  # missing: copied again in this run
    MISSING = "missing"  # missing, and copying it again failed
    DAMAGED = "damaged"  # present with the wrong size or bytes: only an operator can fix it
    FAILED = "failed"  # could not be checked (the registry's error says why)


NOT_PUSHED = frozenset({ImageOutcome.FAILED, ImageOutcome.BLOCKED})


def summarize(
    blobs: Iterable[Any], images: Iterable[Any], pruned: Iterable[Any], *, zeros: bool = False
) -> dict[str, int]:
    """The run's counts: CLI, the tasks' report and (through the run history) the status page.

    ``blobs``/``images``/``pruned`` are result objects or their records (dicts). Per-outcome
    counts appear when non-zero, or always with ``zeros`` (the recorded run history).
    """
    blobs, images, pruned = (
        list(map(result_record, results)) for results in (blobs, images, pruned)
    )
    counts: dict[str, int] = {}
    for kind, outcomes, results in (
        ("blobs", BlobOutcome, blobs),
        ("images", ImageOutcome, images),
    ):
        seen = Counter(r["outcome"] for r in results)
        counts.update({f"{kind} {o}": seen[o] for o in outcomes if zeros or seen[o]})
    counts["manifests pushed"] = sum(r["manifests_pushed"] for r in images)
    counts["bytes copied"] = sum(r["bytes"] for r in blobs)
    counts["tags pruned"] = sum(r["outcome"] == PruneOutcome.DELETED for r in pruned)
    # Changed on the primary during the run: left to the newer writer, not errors.
    moved = sum(len(r.get("moved") or {}) for r in images)
    kept = sum(r["outcome"] == PruneOutcome.KEPT for r in pruned)
    counts.update(
        {
            k: v
            for k, v in (("tags moved since the plan", moved), ("tags kept, pushed again", kept))
            if zeros or v
        }
    )
    return counts


def result_record(result: Any) -> dict[str, Any]:
    """A result object as its record (a dict); a record as it is."""
    return result if isinstance(result, dict) else vars(result)


def failed_digests(blobs: Iterable[Any]) -> set[str]:
    """The digests of the blobs that failed to copy (results or their records): the images
    that need one are blocked, not pushed."""
    return {r["digest"] for r in map(result_record, blobs) if r["outcome"] == BlobOutcome.FAILED}


def human_size(size: float | None) -> str:
    """``512 B``, ``64.0 KiB``, ``3.0 MiB``: every size a person reads; ``–`` for unknown."""
    if size is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class PermanentFailure(str):
    """A failure reason that no retry changes (the object itself is malformed, unsupported or
    past a bound): its event fails at once instead of backing off ``event_max_attempts``
    times. A new push of the tag brings a new event."""


def describe(exc: BaseException) -> str:
    """The reason a unit of work (an image, a repository, an event) failed, from whatever it
    raised. The engine's own errors say what to do; anything else is named by its type."""
    text = str(exc)
    if type(exc).__module__.startswith("registry_replication."):  # ours: says what to do
        return text
    return (
        f"{type(exc).__name__}: {text[:500]} (unexpected: the task log has the traceback; "
        "the object is skipped, others go on)"
    )


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
            raise ValueError(
                f"tag pattern {self.tags!r} is not a valid regular expression: {exc}"
            ) from exc

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
    """One registry's tags within a scope.

    ``errors`` (the catalog could not be read) make the whole snapshot incomplete; each of
    ``problems`` ({repository, tag, reason, advice}) makes only its repository incomplete.
    """

    registry: str
    tags: pd.DataFrame
    errors: list[str] = field(default_factory=list)
    problems: list[dict[str, str | None]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors and not self.problems

    @property
    def repositories(self) -> list[str]:
        return sorted(self.tags["repository"].unique())

    @property
    def problem_repositories(self) -> set[str]:
        """Repositories whose listing is incomplete: never pruned from this snapshot."""
        return {p["repository"] for p in self.problems if p["repository"]}
