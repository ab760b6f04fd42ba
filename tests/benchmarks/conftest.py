"""Runs a benchmark script as its user would, in a work directory of the test's own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def run_benchmark(tmp_path: Path) -> Callable[..., str]:
    """``run_benchmark("scale.py", *args)``: the script's stdout, once it exited 0."""

    def run(script: str, *args: str, timeout: float = 540) -> str:
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), *args, "--workdir", str(tmp_path / "work")],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    return run
