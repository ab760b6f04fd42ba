"""One reconcile serves every configured secondary: a task group each, the primary listed once.

The secondaries are read when the DAGs are parsed (``PARSED``), so each run goes in its own
process, configured as a deployment would be: two connections and
``[registry_replication] secondary_conn_ids``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry_replication.store import Store
from registry_replication.store.record import TagRecord
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.registry import LocalRegistry
from replication_harness.skopeo import skopeo_raw

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("registry_secondary", "registry_eu")

# Runs one DAG in this process and prints its state and each task's, as JSON.
RUN = (
    "import json, sys; from airflow.dag_processing.dagbag import DagBag;"
    f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r});"
    "dag_id, conf = sys.argv[1], json.loads(sys.argv[2]);"
    "run = bag.get_dag(dag_id).test(run_conf=conf);"
    "print(json.dumps({'state': run.state, 'tasks': "
    "{f'{ti.task_id}[{ti.map_index}]': ti.state for ti in run.get_task_instances()}}))"
)


@pytest.fixture
def run_dag(
    airflow_db: None, store: Store, connections: None, eu: LocalRegistry
) -> Callable[..., dict[str, Any]]:
    """Run a DAG with both secondaries configured; returns its state and its tasks' states."""
    env = {
        **os.environ,
        "AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS": ",".join(NAMES),
        # Quick to give up, so that a stopped secondary fails its group in seconds.
        "AIRFLOW_CONN_REGISTRY_EU": json.dumps(eu.connection(max_retries=1, backoff_seconds=0.05)),
        "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES": "0",
    }

    def run(dag_id: str = "registry_reconcile", conf: dict | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", RUN, dag_id, json.dumps(conf or {})],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        print(f"{dag_id} ran in {time.perf_counter() - started:.1f}s")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["log"] = done.stdout + done.stderr
        return result

    return run


def exact(primary: LocalRegistry, secondary: LocalRegistry, pushed: dict) -> bool:
    """Every pushed tag's manifest on ``secondary`` byte for byte as on the primary."""
    return all(
        skopeo_raw(secondary, repository, tag) == skopeo_raw(primary, repository, tag)
        for repository, tag in pushed
    )


def push_two(primary_writer: Any) -> dict[tuple[str, str], str]:
    factory = images.ImageFactory()
    return {
        (repository, "v1"): images.push(primary_writer, repository, factory.make(), ["v1"])
        for repository in ("group/app", "group/db")
    }


def failed(result: dict[str, Any]) -> set[str]:
    """The groups (or top-level tasks) with a failed task."""
    return {
        task.split("[")[0].rsplit(".", 1)[0]
        for task, state in result["tasks"].items()
        if state in ("failed", "upstream_failed")
    }


def test_one_run_backfills_every_secondary_then_does_nothing(
    run_dag, primary, secondary, eu, primary_writer
):
    pushed = push_two(primary_writer)
    first = run_dag()
    assert first["state"] == "success", first["log"][-3000:]
    assert {t.split("[")[0].split(".")[0] for t in first["tasks"]} >= {*NAMES, "snapshot_primary"}
    assert exact(primary, secondary, pushed) and exact(primary, eu, pushed)
    for name in NAMES:
        record = TagRecord(Store(), name)
        for (repository, tag), digest in pushed.items():
            assert record.rows(repository)[tag] == ("present", digest), (name, repository)

    second = run_dag()
    assert second["state"] == "success", second["log"][-3000:]
    summary = Store().history.last_run("registry_reconcile")["summary"]
    assert summary["bytes copied"] == 0 and summary["manifests pushed"] == 0, summary
    assert "registry_eu: cheap run" in summary["run kind"], summary


def test_a_stopped_secondary_fails_only_its_group(run_dag, primary, secondary, eu, primary_writer):
    pushed = push_two(primary_writer)
    eu.stop()
    result = run_dag()
    assert result["state"] == "failed", result["tasks"]
    assert failed(result) == {"registry_eu", "report"}, result["tasks"]
    # It fails fast, at its first task, and names the site and what happens next.
    assert result["tasks"]["registry_eu.reach[-1]"] == "failed", result["tasks"]
    assert result["tasks"]["registry_eu.snapshot_secondary[-1]"] == "upstream_failed"
    assert "secondary registry_eu does not answer" in result["log"]
    assert "the other secondaries go on" in result["log"]
    # Nothing is listed at a site that is down: its verification is skipped, not a listing.
    assert result["tasks"]["registry_eu.verify[-1]"] == "skipped"
    assert exact(primary, secondary, pushed)
    problems = Store().history.last_run("registry_reconcile")["summary"]["problems"]
    assert problems and all(line.startswith("registry_eu: ") for line in problems), problems
    assert "failed for registry_eu" in result["log"]


def test_the_secondaries_param_narrows_the_run(run_dag, primary, secondary, eu, primary_writer):
    pushed = push_two(primary_writer)
    conf = {"repositories": ["group/app", "group/db"], "secondaries": ["registry_eu"]}
    result = run_dag("registry_sync", conf)
    assert result["state"] == "success", result["log"][-3000:]
    assert exact(primary, eu, pushed)
    with RegistryClient(secondary.client_config()) as reader:
        assert list(reader.catalog()) == []
    untouched = {t: s for t, s in result["tasks"].items() if t.startswith("registry_secondary.")}
    assert untouched and set(untouched.values()) == {"skipped"}, untouched
    assert TagRecord(Store(), "registry_secondary").rows("group/app") == {}


def test_a_secondary_outside_the_configured_ones_is_refused(run_dag):
    with pytest.raises(AssertionError, match="registry_ap"):
        run_dag("registry_reconcile", {"secondaries": ["registry_ap"]})
