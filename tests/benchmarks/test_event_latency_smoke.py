"""Smoke test of benchmarks/event_latency.py: a tiny run completes and reports every figure.

No timing assertions: the script starts ``airflow standalone`` with notifying registries, every
push it makes reaches the secondary (it waits for each digest there), and its JSON has each
figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "event_latency.py"


@pytest.mark.slow
def test_tiny_event_latency_run_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sequential", "2", "--idle-minutes", "0", "--burst", "6",
         "--burst-repositories", "2", "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.split("== event latency ==", 1)[1])
    assert len(result["sequential_seconds"]) == 2
    assert result["burst_pushes"] == 6 and result["burst_repositories"] == 2
    for figure in ("warm_up_seconds", "sequential_median_seconds", "after_idle_seconds",
                   "burst_replicated_after_last_push_seconds",
                   "burst_last_event_stored_after_last_push_seconds"):
        assert result[figure] >= 0, (figure, result)
