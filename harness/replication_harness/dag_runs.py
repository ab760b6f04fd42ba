"""The project's DAGs run in-process with ``dag.test()``, for tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DAGS = Path(__file__).resolve().parents[2] / "dags"


def migrate_metadata_db() -> None:
    """A migrated metadata DB in this process's AIRFLOW_HOME (``dag.test()`` needs one)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        timeout=300,
    )


def load_dags() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def run(dag_id: str, conf: dict | None = None) -> Any:
    """One run of ``dag_id`` with ``conf``, every task in this process; returns the DagRun."""
    return load_dags().get_dag(dag_id).test(run_conf=conf or {})


def wait_for_events(store: Any, tags: set[str], timeout: float = 30) -> None:
    """Wait until the store has received an event for each of ``tags``."""
    deadline = time.monotonic() + timeout
    while {e["tag"] for e in store.queue.events()} < tags:
        assert time.monotonic() < deadline, f"notifications for {tags} never arrived"
        time.sleep(0.1)
