"""Smoke test of benchmarks/scale.py: a tiny run completes and reports every row.

No timing assertions: the script runs end to end (CLI, skopeo and three ``airflow dags test``
runs), every run succeeds, and its table names the XCom and snapshot figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


@pytest.mark.slow
def test_tiny_scale_run_reports_every_row(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tags", "40", "--repos", "4", "--unique-mib", "2",
         "--base-sets", "2", "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for row in ("CLI full", "CLI no-op", "skopeo sync no-op", "floor: primary HEADs",
                "floor: primary conditional HEADs", "registry_reconcile empty scope",
                "registry_reconcile full", "registry_reconcile no-op"):
        assert f"| {row} |" in done.stdout, done.stdout
    assert "40 tags: tag lists + conditional HEAD of every tag" in done.stdout
    assert "the primary's floor (tag lists + a HEAD per tag, bare http.client)" in done.stdout
    assert "largest XCom" in done.stdout and "snapshots " in done.stdout
    assert "corpus: 40 tags in 4 repositories" in done.stdout
