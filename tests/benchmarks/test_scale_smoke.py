"""Smoke test of benchmarks/scale.py: a tiny run completes and reports every row.

No timing assertions: the script runs end to end (CLI, skopeo, the floors and three ``airflow
dags test`` runs), every run succeeds, and its table names the XCom and snapshot figures.
"""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_tiny_scale_run_reports_every_row(run_benchmark) -> None:
    stdout = run_benchmark(
        "scale.py", "--tags", "40", "--repos", "4", "--unique-mib", "2", "--base-sets", "2"
    )
    for row in (
        "CLI full",
        "CLI no-op",
        "skopeo sync no-op",
        "skopeo sync full",
        "floor: full copy",
        "floor: primary HEADs",
        "floor: primary conditional HEADs",
        "registry_reconcile empty scope",
        "registry_reconcile one tag",
        "registry_reconcile full",
        "registry_reconcile no-op",
    ):
        assert f"| {row} |" in stdout, stdout
    assert "40 tags: tag lists + conditional HEAD of every tag" in stdout
    assert "the primary's floor (tag lists + a HEAD per tag, bare http.client)" in stdout
    assert "40 tags: manifest GET + PUT each" in stdout
    assert "full sync vs the full-copy floor" in stdout
    assert "vs CLI full + the one-tag DAG's fixed cost" in stdout
    assert "x the conditional HEADs'" in stdout  # the CLI no-op's ratio to its floor
    assert "largest XCom" in stdout and "snapshots " in stdout
    assert "corpus: 40 tags in 4 repositories" in stdout
