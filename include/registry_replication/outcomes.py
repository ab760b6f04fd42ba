"""What happened to each thing a run touched, the run's summary and outcome (``RunOutcome``:
did it fail, and why), and how sizes read; and the two values every layer passes around: a
run's ``Scope`` and a registry's ``Snapshot``.

Every result type names its result ``outcome``, typed by the ``StrEnum`` of its kind. The values
are the strings the logs, XCom records and the replication store have always held, so records
written before these types existed read back the same.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
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


def summarize(blobs: Iterable[Any], images: Iterable[Any], pruned: Iterable[Any], *,
              zeros: bool = False) -> dict[str, int]:
    """The run's counts: CLI, the tasks' report and (through the run history) the status page.

    ``blobs``/``images``/``pruned`` are result objects or their records (dicts). Per-outcome
    counts appear when non-zero, or always with ``zeros`` (the recorded run history).
    """
    blobs, images, pruned = list(map(_record, blobs)), list(map(_record, images)), list(
        map(_record, pruned))
    counts: dict[str, int] = {}
    for kind, outcomes, results in (("blobs", BlobOutcome, blobs),
                                    ("images", ImageOutcome, images)):
        seen = Counter(r["outcome"] for r in results)
        counts.update({f"{kind} {o}": seen[o] for o in outcomes if zeros or seen[o]})
    counts["manifests pushed"] = sum(r["manifests_pushed"] for r in images)
    counts["bytes copied"] = sum(r["bytes"] for r in blobs)
    counts["tags pruned"] = sum(r["outcome"] == PruneOutcome.DELETED for r in pruned)
    # Changed on the primary during the run: left to the newer writer, not errors.
    moved = sum(len(r.get("moved") or {}) for r in images)
    kept = sum(r["outcome"] == PruneOutcome.KEPT for r in pruned)
    counts.update({k: v for k, v in (("tags moved since the plan", moved),
                                      ("tags kept, pushed again", kept)) if zeros or v})
    return counts


def _record(result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else vars(result)


def failed_digests(blobs: Iterable[Any]) -> set[str]:
    """The digests of the blobs that failed to copy (results or their records): the images
    that need one are blocked, not pushed."""
    return {r["digest"] for r in map(_record, blobs) if r["outcome"] == BlobOutcome.FAILED}


ADVICE_MARK = ". What to do: "  # how our errors append their advice (``RegistryError``)


@dataclass(frozen=True)
class Problem:
    """One thing a run could not do: the object (``repository`` and ``tags`` or ``digest``;
    ``subject`` names it in words), why (``reason``, with the registry's error ``code`` when it
    sent one) and what to do (``advice``, when known). ``line`` is how logs, the run history,
    alerts and task failures show it. ``permanent``: no retry changes it (the event path fails
    its events at once)."""

    kind: str  # blob | image | skipped | listing | prune | verification | damaged
    subject: str
    reason: str
    line: str
    repository: str | None = None
    tags: tuple[str, ...] = ()
    digest: str | None = None
    code: str | None = None
    advice: str | None = None
    permanent: bool = False

    @property
    def error(self) -> str:
        """The reason with its advice: the text an event or a repository's state keeps."""
        error = self.reason + (f"{ADVICE_MARK}{self.advice}" if self.advice else "")
        return PermanentFailure(error) if self.permanent else error


# Each kind of problem in a summary line, as ``lines`` shows what it leaves out.
KINDS = {"blob": "failed blobs", "image": "images not pushed",
         "listing": "listing problems", "skipped": "images that cannot be replicated",
         "prune": "failed tag removals", "verification": "verification problems",
         "damaged": "damaged repositories"}


def _split(error: str | None, default: str) -> tuple[str, str | None]:
    reason, _, advice = (error or default).partition(ADVICE_MARK)
    return reason, advice or None


def _tags(tags: Iterable[str]) -> str:
    return ",".join(tags)


@dataclass
class RunOutcome:
    """What failed in a run, and why: the one answer the CLI, the operator, the reconcile's
    tasks, the event path and the status page give.

    Built from what the run did: the blob, image and prune results (objects or their records;
    ``image_blobs``, each planned image's blobs, lets a blocked image name the blob that
    blocked it and its error code), the images the plan skipped, the primary's ``listing``
    (its errors and problem repositories), a refused prune, the verification's ``findings``
    (objects with ``repository``, ``digest``, ``kind``, ``outcome`` and ``line()``) and the
    ``damaged`` repositories (``damaged_more``: damaged repositories beyond those named).
    The secondary's listing problems are shown, never a failure: the next run lists again.
    """

    blobs: Sequence[Any] = ()
    images: Sequence[Any] = ()
    pruned: Sequence[Any] = ()
    skipped: Sequence[Any] = ()
    listing: Snapshot | None = None
    prune_refused: str | None = None
    findings: Sequence[Any] = ()
    damaged: Iterable[str] = ()
    damaged_more: int = 0
    image_blobs: Mapping[tuple[str, str], Sequence[str]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.problems())

    @property
    def failed_digests(self) -> set[str]:
        return failed_digests(self.blobs)

    @property
    def failed_blobs(self) -> list[dict[str, Any]]:
        return [r for r in map(_record, self.blobs) if r["outcome"] == BlobOutcome.FAILED]

    def counts(self, *, zeros: bool = False) -> dict[str, int]:
        return summarize(self.blobs, self.images, self.pruned, zeros=zeros)

    def problems(self) -> list[Problem]:
        """Every problem, in the order the report names them: blobs, images, the primary's
        listing, skipped images, tag removals, a refused prune, verification, damage."""
        return [*self._blob_problems(), *self._image_problems(), *self._listing_problems(),
                *self._skipped_problems(), *self._prune_problems(),
                *self._verification_problems()]

    def lines(self, shown: int | None = None) -> list[str]:
        """Each problem's line; with ``shown``, at most that many of each kind, then how many
        more (the task logs name them all)."""
        lines: list[str] = []
        seen: Counter[str] = Counter()
        for problem in self.problems():
            seen[problem.kind] += 1
            if shown is None or seen[problem.kind] <= shown:
                lines.append(problem.line)
        for kind, count in seen.items():
            if shown is not None and count > shown:
                lines.append(f"and {count - shown} more {KINDS.get(kind, kind)}: see the "
                             "run's task logs")
        if self.damaged_more:
            lines.append(f"and {self.damaged_more} more damaged repositories: see the verify "
                         "log")
        return lines

    def errors_by_tag(self) -> dict[str, str]:
        """Each tag's error, for the event path (one repository's run): images not pushed,
        then images skipped (a ``PermanentFailure`` when no retry helps), then tag removals."""
        return {tag: p.error for p in self.problems() for tag in p.tags}

    def _blob_problems(self) -> list[Problem]:
        problems = []
        for r in self.failed_blobs:
            reason, advice = _split(r.get("error"), "failed to copy")
            subject = f"{r['repository']}@{r['digest']}"
            problems.append(Problem("blob", subject, reason, f"blob {subject}: {r.get('error')}",
                                    r["repository"], (), r["digest"], r.get("code"), advice))
        return problems

    def _image_problems(self) -> list[Problem]:
        failed = {r["digest"]: r for r in self.failed_blobs}
        problems = []
        for r in map(_record, self.images):
            if r["outcome"] not in NOT_PUSHED:
                continue
            # A blocked image: the blob that blocked it, and its error (code, advice).
            cause = next((failed[d] for d in self.image_blobs.get((r["repository"], r["digest"]),
                                                                   ()) if d in failed), None)
            error = (cause or r).get("error") or f"not pushed ({r['outcome']})"
            reason, advice = _split(error, "")
            subject = f"{r['repository']}:{_tags(r['tags'])} ({r['digest']})"
            problems.append(Problem("image", subject, reason, f"{subject}: {error}",
                                    r["repository"], tuple(r["tags"]), r["digest"],
                                    cause and cause.get("code"), advice))
        return problems

    def _listing_problems(self) -> list[Problem]:
        if self.listing is None:
            return []
        problems = [Problem("listing", "the primary's listing", error,
                            f"the primary's listing was incomplete ({error})")
                    for error in self.listing.errors]
        for found in self.listing.problems:
            tag = found.get("tag")
            subject = f"{found['repository']}" + (f":{tag}" if tag else "")
            problems.append(Problem(
                "listing", subject, found["reason"] or "",
                f"cannot replicate {subject}: {found['reason']}{ADVICE_MARK}{found['advice']}",
                found["repository"], (tag,) if tag else (), None, None, found.get("advice")))
        return problems

    def _skipped_problems(self) -> list[Problem]:
        problems = []
        for s in map(_record, self.skipped):
            subject = f"{s['repository']}:{_tags(s['tags'])} ({s['digest']})"
            reason, advice = _split(s["reason"], "")
            problems.append(Problem("skipped", subject, reason,
                                    f"cannot replicate {subject}: {s['reason']}",
                                    s["repository"], tuple(s["tags"]), s["digest"], None, advice,
                                    permanent=s.get("permanent", True)))
        return problems

    def _prune_problems(self) -> list[Problem]:
        problems = []
        for r in map(_record, self.pruned):
            if r["outcome"] != PruneOutcome.FAILED:
                continue
            subject = f"{r['repository']}:{r['tag']} ({r['digest']})"
            reason, advice = _split(r.get("error"), "failed to remove")
            problems.append(Problem("prune", subject, reason,
                                    f"removing {subject} failed: {r.get('error')}",
                                    r["repository"], (r["tag"],), r["digest"], None, advice))
        if self.prune_refused:
            problems.append(Problem("prune", "prune", self.prune_refused,
                                    f"prune refused: {self.prune_refused}"))
        return problems

    def _verification_problems(self) -> list[Problem]:
        problems = [Problem("verification", f"{f.kind} {f.repository}@{f.digest}",
                            f.found, f.line(), f.repository, (), f.digest, None,
                            _split(f.line(), "")[1])
                    for f in self.findings
                    if f.outcome not in (CheckOutcome.OK, CheckOutcome.REPAIRED)]
        damaged = sorted(set(self.damaged))  # a repository is damaged once, however often named
        if damaged:
            advice = ("the verify_closure log of the run that found it names each data file to "
                      "remove, then run verify=blobs")
            problems += [Problem("damaged", repository, "damaged on the secondary",
                                 f"{repository} is damaged on the secondary: {advice}",
                                 repository, advice=advice) for repository in damaged]
        return problems


def recorded_problems(summary: Mapping[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """A recorded run's problem lines and its other counts, as the report stored them in the
    run history (``RunHistory.record_run``): what the status page and the alerts show."""
    counts = dict(summary or {})
    return list(counts.pop("problems", None) or []), counts


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
    return (f"{type(exc).__name__}: {text[:500]} (unexpected: the task log has the traceback; "
            "the object is skipped, others go on)")


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
                f"tag pattern {self.tags!r} is not a valid regular expression: {exc}") from exc

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
