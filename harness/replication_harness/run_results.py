"""A small run's typed results, shared by the outcome tests (no network)."""

from __future__ import annotations

from registry_replication.engine.copy import BlobResult, ImageResult
from registry_replication.engine.prune import PruneResult
from registry_replication.outcomes import BlobOutcome, ImageOutcome, PruneOutcome


def results() -> tuple[list[BlobResult], list[ImageResult], list[PruneResult]]:
    """Two copied blobs, one mounted, one failed; one image pushed, one blocked; one tag
    pruned and one kept because it was pushed again."""
    blobs = [
        BlobResult("a", "sha256:1", 10, BlobOutcome.COPIED, bytes=10),
        BlobResult("a", "sha256:2", 20, BlobOutcome.COPIED, bytes=20),
        BlobResult("b", "sha256:1", 10, BlobOutcome.MOUNTED),
        BlobResult("c", "sha256:3", 5, BlobOutcome.FAILED, error="boom"),
    ]
    images = [
        ImageResult("a", "sha256:9", ["1"], "m", ImageOutcome.PUSHED, manifests_pushed=2),
        ImageResult("c", "sha256:8", ["2"], "m", ImageOutcome.BLOCKED, moved={"3": None}),
    ]
    pruned = [
        PruneResult("a", "old", "sha256:7", PruneOutcome.DELETED),
        PruneResult("a", "again", "sha256:6", PruneOutcome.KEPT),
    ]
    return blobs, images, pruned
