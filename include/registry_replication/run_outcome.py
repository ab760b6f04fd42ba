"""A run's verdict: did it fail, and why (``RunOutcome``), each ``Problem`` it names, and the
problems a recorded run kept (``recorded_problems``).

The CLI's exit code, ``SyncReport``, the reconcile's report and copy tasks, the operator, the
event path and a repair all answer with a ``RunOutcome``; the status page and the alerts read its
lines back from the run history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from registry_replication.outcomes import (
    NOT_PUSHED,
    BlobOutcome,
    CheckOutcome,
    PermanentFailure,
    PruneOutcome,
    Snapshot,
    failed_digests,
    result_record,
    summarize,
)

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
KINDS = {
    "blob": "failed blobs",
    "image": "images not pushed",
    "listing": "listing problems",
    "skipped": "images that cannot be replicated",
    "prune": "failed tag removals",
    "verification": "verification problems",
    "damaged": "damaged repositories",
}


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
        return [r for r in map(result_record, self.blobs) if r["outcome"] == BlobOutcome.FAILED]

    def counts(self, *, zeros: bool = False) -> dict[str, int]:
        return summarize(self.blobs, self.images, self.pruned, zeros=zeros)

    def problems(self) -> list[Problem]:
        """Every problem, in the order the report names them: blobs, images, the primary's
        listing, skipped images, tag removals, a refused prune, verification, damage."""
        return [
            *self._blob_problems(),
            *self._image_problems(),
            *self._listing_problems(),
            *self._skipped_problems(),
            *self._prune_problems(),
            *self._verification_problems(),
        ]

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
                lines.append(
                    f"and {count - shown} more {KINDS.get(kind, kind)}: see the run's task logs"
                )
        if self.damaged_more:
            lines.append(f"and {self.damaged_more} more damaged repositories: see the verify log")
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
            problems.append(
                Problem(
                    "blob",
                    subject,
                    reason,
                    f"blob {subject}: {r.get('error')}",
                    r["repository"],
                    (),
                    r["digest"],
                    r.get("code"),
                    advice,
                )
            )
        return problems

    def _image_problems(self) -> list[Problem]:
        failed = {r["digest"]: r for r in self.failed_blobs}
        problems = []
        for r in map(result_record, self.images):
            if r["outcome"] not in NOT_PUSHED:
                continue
            # A blocked image: the blob that blocked it, and its error (code, advice).
            cause = next(
                (
                    failed[d]
                    for d in self.image_blobs.get((r["repository"], r["digest"]), ())
                    if d in failed
                ),
                None,
            )
            error = (cause or r).get("error") or f"not pushed ({r['outcome']})"
            reason, advice = _split(error, "")
            subject = f"{r['repository']}:{_tags(r['tags'])} ({r['digest']})"
            problems.append(
                Problem(
                    "image",
                    subject,
                    reason,
                    f"{subject}: {error}",
                    r["repository"],
                    tuple(r["tags"]),
                    r["digest"],
                    cause and cause.get("code"),
                    advice,
                )
            )
        return problems

    def _listing_problems(self) -> list[Problem]:
        if self.listing is None:
            return []
        problems = [
            Problem(
                "listing",
                "the primary's listing",
                error,
                f"the primary's listing was incomplete ({error})",
            )
            for error in self.listing.errors
        ]
        for found in self.listing.problems:
            tag = found.get("tag")
            subject = f"{found['repository']}" + (f":{tag}" if tag else "")
            problems.append(
                Problem(
                    "listing",
                    subject,
                    found["reason"] or "",
                    f"cannot replicate {subject}: {found['reason']}{ADVICE_MARK}{found['advice']}",
                    found["repository"],
                    (tag,) if tag else (),
                    None,
                    None,
                    found.get("advice"),
                )
            )
        return problems

    def _skipped_problems(self) -> list[Problem]:
        problems = []
        for s in map(result_record, self.skipped):
            subject = f"{s['repository']}:{_tags(s['tags'])} ({s['digest']})"
            reason, advice = _split(s["reason"], "")
            problems.append(
                Problem(
                    "skipped",
                    subject,
                    reason,
                    f"cannot replicate {subject}: {s['reason']}",
                    s["repository"],
                    tuple(s["tags"]),
                    s["digest"],
                    None,
                    advice,
                    permanent=s.get("permanent", True),
                )
            )
        return problems

    def _prune_problems(self) -> list[Problem]:
        problems = []
        for r in map(result_record, self.pruned):
            if r["outcome"] != PruneOutcome.FAILED:
                continue
            subject = f"{r['repository']}:{r['tag']} ({r['digest']})"
            reason, advice = _split(r.get("error"), "failed to remove")
            problems.append(
                Problem(
                    "prune",
                    subject,
                    reason,
                    f"removing {subject} failed: {r.get('error')}",
                    r["repository"],
                    (r["tag"],),
                    r["digest"],
                    None,
                    advice,
                )
            )
        if self.prune_refused:
            problems.append(
                Problem(
                    "prune", "prune", self.prune_refused, f"prune refused: {self.prune_refused}"
                )
            )
        return problems

    def _verification_problems(self) -> list[Problem]:
        problems = [
            Problem(
                "verification",
                f"{f.kind} {f.repository}@{f.digest}",
                f.found,
                f.line(),
                f.repository,
                (),
                f.digest,
                None,
                _split(f.line(), "")[1],
            )
            for f in self.findings
            if f.outcome not in (CheckOutcome.OK, CheckOutcome.REPAIRED)
        ]
        damaged = sorted(set(self.damaged))  # a repository is damaged once, however often named
        if damaged:
            advice = (
                "the verify_closure log of the run that found it names each data file to "
                "remove, then run verify=blobs"
            )
            problems += [
                Problem(
                    "damaged",
                    repository,
                    "damaged on the secondary",
                    f"{repository} is damaged on the secondary: {advice}",
                    repository,
                    advice=advice,
                )
                for repository in damaged
            ]
        return problems


def recorded_problems(summary: Mapping[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """A recorded run's problem lines and its other counts, as the report stored them in the
    run history (``RunHistory.record_run``): what the status page and the alerts show."""
    counts = dict(summary or {})
    return list(counts.pop("problems", None) or []), counts
