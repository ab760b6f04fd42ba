"""The one run outcome: what failed in a run, and why (no network)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from registry_replication.engine.copy import BlobResult, ImageResult
from registry_replication.engine.findings import Finding
from registry_replication.engine.plan import Skipped
from registry_replication.engine.prune import PruneResult
from registry_replication.outcomes import (
    BlobOutcome,
    CheckOutcome,
    ImageOutcome,
    PermanentFailure,
    PruneOutcome,
    Snapshot,
    VerifyLevel,
    failed_digests,
    summarize,
)
from registry_replication.run_outcome import RunOutcome
from replication_harness.run_results import results

DENIED = (
    "push blob c@sha256:3: HTTP 403 DENIED requested access to the resource is denied. "
    "What to do: give the secondary's user push rights on c"
)


def test_a_run_that_did_everything_did_not_fail():
    blobs, images, pruned = results()
    outcome = RunOutcome(blobs[:3], images[:1], pruned)
    assert not outcome.failed and outcome.problems() == [] and outcome.lines() == []
    assert outcome.counts() == summarize(blobs[:3], images[:1], pruned)


def test_each_problem_names_its_object_the_registry_code_and_the_advice():
    blobs = [
        BlobResult("c", "sha256:3", 5, BlobOutcome.FAILED, error=DENIED, status=403, code="DENIED")
    ]
    images = [
        ImageResult(
            "c",
            "sha256:8",
            ["2", "latest"],
            "m",
            ImageOutcome.BLOCKED,
            error="not pushed: blob sha256:3 failed to copy; fix that blob and rerun",
        )
    ]
    pruned = [PruneResult("d", "old", "sha256:7", PruneOutcome.FAILED, error="HTTP 500")]
    skipped = [Skipped("e", ["v1"], "sha256:5", "m", "too deep", permanent=True)]
    listing = Snapshot(
        "primary",
        pd.DataFrame(columns=["repository", "tag"]),
        ["catalog: 503"],
        [{"repository": "f", "tag": None, "reason": "invalid name", "advice": "rename it"}],
    )
    finding = Finding(
        "g", "sha256:4", "blob", CheckOutcome.DAMAGED, "5 bytes", "4 bytes", VerifyLevel.BLOBS
    )
    repaired = Finding(
        "g", "sha256:6", "blob", CheckOutcome.REPAIRED, "5 bytes", "missing", VerifyLevel.BLOBS
    )
    outcome = RunOutcome(
        blobs,
        images,
        pruned,
        skipped,
        listing,
        "67% of the tags",
        [finding, repaired],
        ["g"],
        image_blobs={("c", "sha256:8"): ["sha256:1", "sha256:3"]},
    )
    assert outcome.failed and outcome.failed_digests == {"sha256:3"}
    by_kind = {p.kind: p for p in outcome.problems()}
    blob = by_kind["blob"]
    assert (blob.repository, blob.digest, blob.code) == ("c", "sha256:3", "DENIED")
    assert blob.advice == "give the secondary's user push rights on c"
    assert blob.line == f"blob c@sha256:3: {DENIED}" and blob.error == DENIED
    # A blocked image names the blob that blocked it, with its code and advice.
    image = by_kind["image"]
    assert (image.repository, image.tags, image.digest, image.code) == (
        "c",
        ("2", "latest"),
        "sha256:8",
        "DENIED",
    )
    assert image.line == f"c:2,latest (sha256:8): {DENIED}"
    assert by_kind["skipped"].line == "cannot replicate e:v1 (sha256:5): too deep"
    assert isinstance(by_kind["skipped"].error, PermanentFailure)
    assert [p.line for p in outcome.problems() if p.kind == "listing"] == [
        "the primary's listing was incomplete (catalog: 503)",
        "cannot replicate f: invalid name. What to do: rename it",
    ]
    assert [p.line for p in outcome.problems() if p.kind == "prune"] == [
        "removing d:old (sha256:7) failed: HTTP 500",
        "prune refused: 67% of the tags",
    ]
    assert [p.line for p in outcome.problems() if p.kind == "verification"] == [finding.line()]
    assert by_kind["damaged"].repository == "g"
    assert outcome.errors_by_tag() == {
        "2": DENIED,
        "latest": DENIED,
        "v1": "too deep",
        "old": "HTTP 500",
    }


def test_lines_show_a_few_of_each_kind_and_count_the_rest():
    blobs = [BlobResult("a", f"sha256:{i}", 1, BlobOutcome.FAILED, error="boom") for i in range(5)]
    outcome = RunOutcome(
        blobs, skipped=[Skipped("b", ["t"], "sha256:9", "m", "odd")], damaged=["c"], damaged_more=3
    )
    assert outcome.lines(shown=2) == [
        "blob a@sha256:0: boom",
        "blob a@sha256:1: boom",
        "cannot replicate b:t (sha256:9): odd",
        "c is damaged on the secondary: the verify_closure log of the run that found it names "
        "each data file to remove, then run verify=blobs",
        "and 3 more failed blobs: see the run's task logs",
        "and 3 more damaged repositories: see the verify log",
    ]
    assert len(outcome.lines()) == 7 + 1  # every problem, and the damage only counted


def test_records_read_back_as_their_results():
    blobs, images, pruned = results()
    records = json.loads(json.dumps([asdict(r) for r in blobs + images + pruned]))
    from_records = RunOutcome(records[:4], records[4:6], records[6:])
    assert from_records.lines() == RunOutcome(blobs, images, pruned).lines()
    assert failed_digests(records[:4]) == failed_digests(blobs) == {"sha256:3"}


def test_a_refused_prune_fails_the_run():
    """The reconcile failed a run whose prune was refused; the CLI exited 0. Now both fail."""
    assert RunOutcome(prune_refused="2 of the secondary's 3 tags (67%)").failed


names = st.text("abcdefgh/-", min_size=1, max_size=12)
digests = st.text("0123456789abcdef", min_size=1, max_size=8).map(lambda h: f"sha256:{h}")
errors = st.none() | st.text(max_size=40) | st.just(DENIED)
blob_results = st.builds(
    BlobResult,
    names,
    digests,
    st.integers(0, 10),
    st.sampled_from(BlobOutcome),
    error=errors,
    code=st.none() | st.sampled_from(["DENIED", "BLOB_UNKNOWN"]),
)
image_results = st.builds(
    ImageResult,
    names,
    digests,
    st.lists(names, min_size=1, max_size=3),
    st.just("m"),
    st.sampled_from(ImageOutcome),
    error=errors,
)
prune_results = st.builds(
    PruneResult, names, names, digests, st.sampled_from(PruneOutcome), error=errors
)
skipped_images = st.builds(
    Skipped,
    names,
    st.lists(names, min_size=1, max_size=3),
    digests,
    st.just("m"),
    st.text(min_size=1, max_size=40),
    st.booleans(),
)
findings = st.builds(
    Finding,
    names,
    digests,
    st.sampled_from(["blob", "manifest"]),
    st.sampled_from(CheckOutcome),
    st.just("5 bytes"),
    st.text(max_size=20),
    st.just(VerifyLevel.BLOBS),
    error=errors,
)


@given(
    st.lists(blob_results, max_size=6),
    st.lists(image_results, max_size=6),
    st.lists(prune_results, max_size=6),
    st.lists(skipped_images, max_size=3),
    st.lists(findings, max_size=4),
    st.lists(names, max_size=3),
    st.none() | st.just("no"),
)
def test_a_run_failed_exactly_when_it_has_a_problem_and_each_names_its_object(
    blobs, images, pruned, skipped, found, damaged, refused
):
    outcome = RunOutcome(
        blobs, images, pruned, skipped, prune_refused=refused, findings=found, damaged=damaged
    )
    problems = outcome.problems()
    assert outcome.failed == bool(problems)
    expected = (
        sum(r.outcome == BlobOutcome.FAILED for r in blobs)
        + sum(r.outcome in (ImageOutcome.FAILED, ImageOutcome.BLOCKED) for r in images)
        + sum(r.outcome == PruneOutcome.FAILED for r in pruned)
        + len(skipped)
        + sum(
            f.outcome in (CheckOutcome.MISSING, CheckOutcome.DAMAGED, CheckOutcome.FAILED)
            for f in found
        )
        + len(set(damaged))
        + bool(refused)
    )
    assert len(problems) == expected
    for problem in problems:
        assert problem.subject and problem.subject in problem.line and problem.reason is not None
        if problem.repository is not None:  # a result's problem: repository, and tag or digest
            assert problem.repository in problem.subject
            assert problem.digest or problem.tags or problem.kind == "damaged"
            assert problem.digest is None or problem.digest in problem.line
            assert all(tag in problem.line for tag in problem.tags)
    assert outcome.failed_digests == {r.digest for r in blobs if r.outcome == BlobOutcome.FAILED}
