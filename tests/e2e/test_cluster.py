"""The Celery cluster, with its defaults (a PostgreSQL store, no ``artifacts_path``, each process
its own AIRFLOW_HOME and temporary directory): a reconcile fans out over both workers, survives a
SIGKILLed worker, and the status page reads the same PostgreSQL store as an ``airflow
standalone`` next to it. What a cluster cannot share (a local artifacts directory, a SQLite
store) fails the run's first tasks at once, naming the setting."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from replication_harness import corpus
from replication_harness.cluster import AirflowCluster
from replication_harness.skopeo import skopeo_raw
from replication_harness.standalone import AirflowStandalone


def running_copy_tasks(cluster: AirflowCluster, run_id: str) -> dict[tuple[str, int], str]:
    """(task id, map index) -> worker of the run's copy tasks running now."""
    workers = {address: name for name, address in cluster.worker_addresses().items()}
    instances = cluster.api(
        "GET",
        f"dags/registry_reconcile/dagRuns/{run_id}/taskInstances",
        params={"limit": 1000, "state": "running"},
    )["task_instances"]
    return {
        (ti["task_id"], ti["map_index"]): workers.get(ti["hostname"], ti["hostname"])
        for ti in instances
        if ti["task_id"] == "registry_secondary.copy_blobs" and ti["hostname"]
    }


def status_json(airflow: AirflowStandalone) -> dict[str, Any]:
    token = requests.post(
        f"{airflow.url}/auth/token",
        timeout=10,
        json={"username": "admin", "password": airflow.password},
    ).json()["access_token"]
    response = requests.get(
        f"{airflow.url}/registry-replication/api/status",
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    response.raise_for_status()
    return response.json()


# Depend on the moment of the request: the chart's time axis, and when the page was made.
MOMENTARY = {"generated_at", "since", "until", "pending_depth"}


def comparable(value: Any, base_url: str) -> Any:
    """The status without what depends on the moment or the server's own address."""
    if isinstance(value, dict):
        return {
            k: comparable(v, base_url)
            for k, v in value.items()
            if k not in MOMENTARY and not k.endswith("_seconds")
        }
    if isinstance(value, list):
        return [comparable(v, base_url) for v in value]
    if isinstance(value, str):
        return value.replace(base_url, "<ui>")
    return value


def test_reconcile_fans_out_survives_a_killed_worker_and_shares_its_status(
    cluster,
    use_cluster,
    primary,
    secondary,
    primary_writer,
    secondary_reader,
    tmp_path,
    start_standalone,
    capsys,
):
    pushed = corpus.push_every_kind(primary_writer, layer_size=256 * 1024)
    # 128 KiB/s per copy task from the primary: the copy lasts long enough to kill a worker.
    store = use_cluster(primary, secondary, max_bytes_per_second=128 * 1024)
    started = time.monotonic()
    run_id = cluster.trigger("registry_reconcile")
    # An airflow standalone on the same PostgreSQL store, for the status page at the end; it
    # starts while the reconcile runs.
    airflow = start_standalone(
        tmp_path / "standalone", primary, secondary, cluster.store_url, wait=False
    )

    # Fan-out: copy tasks run on both workers at once; then one of those workers dies.
    victim = "worker1"
    deadline = time.monotonic() + 180
    while len(set((running := running_copy_tasks(cluster, run_id)).values())) < 2:
        assert time.monotonic() < deadline, "copy tasks never ran on both workers at once"
        time.sleep(0.3)
    doomed = {key for key, worker in running.items() if worker == victim}
    cluster.kill_worker(victim)  # SIGKILL, with every process it started
    killed_at = time.monotonic() - started
    try:
        state = cluster.wait_for_run("registry_reconcile", run_id, timeout=400)
        ran = cluster.task_hosts("registry_reconcile", run_id, tasks=None)
    finally:
        cluster.start_component(victim)  # for the tests after this one (use_cluster waits)
    with capsys.disabled():
        print(
            f"\nreconcile {run_id}: {state} in {time.monotonic() - started:.1f}s; "
            f"copy tasks running at once: {sorted(running.items())}; "
            f"{victim} killed at {killed_at:.1f}s"
        )
        for task_id, map_index, try_number, worker in ran:
            print(f"  {task_id}[{map_index}] try {try_number} on {worker}")
    assert state == "success"
    final = {
        (task_id, map_index): (try_number, worker) for task_id, map_index, try_number, worker in ran
    }
    for key in doomed:  # retried on the surviving worker
        assert final[key][0] >= 2 and final[key][1] == "worker2", (key, final[key])

    # The secondary is exact: every tag, byte for byte (skopeo is the independent check).
    for (repository, tag), digest in pushed.items():
        assert secondary_reader.head_manifest(repository, tag).digest == digest, (repository, tag)
    for repository, tag in pushed:
        assert skopeo_raw(secondary, repository, tag) == skopeo_raw(primary, repository, tag)
    last = store.history.last_run("registry_reconcile")
    assert last["state"] == "success" and last["summary"]["problems"] == []

    # The status page of the airflow standalone reading the same PostgreSQL store says the same.
    airflow.wait_ready()
    from_cluster, from_standalone = status_json(cluster), status_json(airflow)
    assert from_cluster["states"]["synced"] == len({r for r, _ in pushed})
    seen_by_cluster = comparable(from_cluster, cluster.url)
    seen_by_standalone = comparable(from_standalone, airflow.url)
    # Compared section by section: a failure names the sections (a diff of the whole would be
    # slow to render).
    differ = sorted(
        key
        for key in seen_by_cluster.keys() | seen_by_standalone.keys()
        if seen_by_cluster.get(key) != seen_by_standalone.get(key)
    )
    assert differ == [], differ


@pytest.fixture(scope="module")
def reconfigured(cluster: AirflowCluster) -> Iterator[Any]:
    """Restart the workers with some settings changed; as first started after the module."""
    workers = list(cluster.worker_addresses())
    changed = []

    def change(**settings: str | None) -> None:
        changed.append(settings)
        cluster.restart_with(workers, **settings)

    yield change
    if changed:
        cluster.restart_with(workers)
        cluster.wait_ready()


def assert_refused_at_once(cluster: AirflowCluster, setting: str) -> None:
    """A reconcile fails within seconds, its first tasks on their first try, each log naming
    ``setting``."""
    started = time.monotonic()
    run_id = cluster.trigger("registry_reconcile")
    state = cluster.wait_for_run("registry_reconcile", run_id, timeout=180)
    took = time.monotonic() - started
    instances = {
        ti["task_id"]: ti
        for ti in cluster.api(
            "GET", f"dags/registry_reconcile/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )["task_instances"]
    }
    print(
        f"\nrefused: {state} in {took:.1f}s; "
        + ", ".join(
            f"{t} {ti['state']} try {ti['try_number']}" for t, ti in sorted(instances.items())
        )
    )
    assert state == "failed"
    for task_id in ("snapshot_primary", "registry_secondary.snapshot_secondary"):
        ti = instances[task_id]
        # Failed on the first try although the cluster's tasks have a retry: not retried.
        assert ti["state"] == "failed" and ti["try_number"] == 1, ti
        assert ti["duration"] is not None and ti["duration"] < 30, ti
        log = cluster.api(
            "GET", f"dags/registry_reconcile/dagRuns/{run_id}/taskInstances/{task_id}/logs/1"
        )
        text = json.dumps(log)
        assert "refusing to start" in text and setting in text, text[-3000:]
    assert took < 120, took


def test_a_local_artifacts_path_is_refused_at_once(
    cluster, use_cluster, reconfigured, primary, secondary, tmp_path
):
    use_cluster(primary, secondary)
    reconfigured(AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH=f"file://{tmp_path}/artifacts")
    cluster.wait_ready()
    assert_refused_at_once(cluster, f"artifacts_path = file://{tmp_path}/artifacts")
    assert not (tmp_path / "artifacts").exists()  # refused before anything was written


def test_no_store_url_is_refused_at_once(cluster, use_cluster, reconfigured, primary, secondary):
    use_cluster(primary, secondary)
    reconfigured(REGISTRY_REPLICATION_DB_URL=None)
    cluster.wait_ready()
    assert_refused_at_once(cluster, "set REGISTRY_REPLICATION_DB_URL")
