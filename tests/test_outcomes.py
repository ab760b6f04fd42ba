"""Typed outcomes, the one run summary and the one size formatter (no network). The run
outcome (what failed, and why) is ``test_run_outcome.py``'s."""

from __future__ import annotations

import json
from dataclasses import asdict

from registry_replication.outcomes import (
    BlobOutcome,
    EventStatus,
    ImageOutcome,
    PruneOutcome,
    human_size,
    summarize,
)
from replication_harness.run_results import results


def test_summary_is_the_same_from_results_and_from_their_json_records():
    blobs, images, pruned = results()
    expected = {
        "blobs copied": 2,
        "blobs mounted": 1,
        "blobs failed": 1,
        "images pushed": 1,
        "images blocked": 1,
        "manifests pushed": 2,
        "bytes copied": 30,
        "tags pruned": 1,
        "tags moved since the plan": 1,
        "tags kept, pushed again": 1,
    }
    assert summarize(blobs, images, pruned) == expected
    # What XCom carries: JSON records whose outcomes are plain strings again.
    records = [json.loads(json.dumps([asdict(r) for r in group])) for group in results()]
    assert summarize(*records) == expected


def test_summary_with_zeros_names_every_outcome():
    counts = summarize([], [], [], zeros=True)
    assert {f"blobs {o}" for o in BlobOutcome} | {f"images {o}" for o in ImageOutcome} <= set(
        counts
    )
    assert counts["bytes copied"] == 0 and counts["tags kept, pushed again"] == 0
    assert summarize([], [], []) == {"manifests pushed": 0, "bytes copied": 0, "tags pruned": 0}


def test_outcomes_are_the_strings_stored_and_logged_before():
    assert [str(o) for o in PruneOutcome] == ["deleted", "would delete", "kept", "failed"]
    assert [str(s) for s in EventStatus] == ["pending", "processing", "done", "failed", "rejected"]
    assert f"blob {BlobOutcome.COPIED:<7}|" == "blob copied |"
    assert json.dumps({"outcome": ImageOutcome.BLOCKED}) == '{"outcome": "blocked"}'


def test_one_size_formatter():
    assert [human_size(n) for n in (None, 0, 512, 64 * 1024, 3 << 20, 5 << 30, 2 << 40)] == [
        "–",
        "0 B",
        "512 B",
        "64.0 KiB",
        "3.0 MiB",
        "5.0 GiB",
        "2.0 TiB",
    ]
