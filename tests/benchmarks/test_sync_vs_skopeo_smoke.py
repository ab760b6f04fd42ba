"""Smoke test of benchmarks/sync_vs_skopeo.py: a --quick run completes and reports all three tools.

No timing assertions: only that the script runs end to end, prints its table, and that every
secondary verified in sync.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sync_vs_skopeo.py"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("skopeo", "curl", "docker-registry")),
    reason="needs skopeo, curl and docker-registry",
)


def test_quick_benchmark_runs_and_verifies(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path / "work")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
    )
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script stops its registries on SIGTERM
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"the quick benchmark did not finish in 300s:\n{out[-4000:]}")

    assert proc.returncode == 0, out[-4000:]
    assert "== results ==" in out, out
    table = out.split("== results ==", 1)[1].split("\n\n", 1)[0]
    rows = {line.split()[0]: line for line in table.strip().splitlines()[2:]}
    assert set(rows) == {"engine", "skopeo", "floor"}, table
    assert "in sync (3/3 repositories)" in rows["engine"], table
    assert "in sync (3/3 repositories)" in rows["skopeo"], table
    assert re.search(r"blobs present \((\d+)/\1 blobs\)", rows["floor"]), table
    assert "FAILED" not in out, out
    assert "== targets ==" in out and "result: OK; every secondary verified: yes" in out, out
