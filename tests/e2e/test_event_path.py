"""End to end: a push to the primary appears on the secondary by itself.

On ``airflow standalone`` and on the Celery cluster: scheduler, triggerer, DAG processor, API
server (and Celery workers) run for real on loopback; the primary's notifications go to the
plugin's webhook; the registry_events DAG does the rest.
"""

from __future__ import annotations

import statistics
import time

from replication_harness import images
from replication_harness.cluster import AirflowCluster
from replication_harness.standalone import AirflowStandalone
from replication_harness.watch import wait_for_replica, warmed_up


def stop_api_server(airflow: AirflowStandalone) -> None:
    if isinstance(airflow, AirflowCluster):
        airflow.stop_component("api-server")
    else:
        airflow.stop()


def start_api_server(airflow: AirflowStandalone) -> None:
    if isinstance(airflow, AirflowCluster):
        airflow.start_component("api-server")
    else:
        airflow.start()
    airflow.wait_ready()


def wait_until_no_task_is_running(
    airflow: AirflowStandalone, dag_id: str, task_id: str, timeout: float = 120
) -> None:
    """A paused DAG's running task carries on (a draining ``replicate_events``): wait for it."""
    deadline = time.monotonic() + timeout
    while [
        ti
        for ti in airflow.api(
            "GET", f"dags/{dag_id}/dagRuns/~/taskInstances", params={"state": ["running", "queued"]}
        )["task_instances"]
        if ti["task_id"] == task_id
    ]:
        assert time.monotonic() < deadline, f"{dag_id}.{task_id} still running after {timeout}s"
        time.sleep(0.5)


def test_push_replicates_by_itself_and_survives_an_api_server_restart(notified_stack, capsys):
    primary, secondary, airflow, store = notified_stack
    writer, reader, factory = warmed_up(primary, secondary, layer_size=256 * 1024)

    latencies = []
    for i in range(5):
        img = factory.multi_arch() if i % 2 else factory.make()
        pushed_at = time.monotonic()
        images.push(writer, "group/app", img, [f"v{i}"])
        pushed = time.monotonic() - pushed_at
        latencies.append(pushed + wait_for_replica(reader, "group/app", f"v{i}", img.digest))
        assert reader.get_manifest("group/app", f"v{i}").raw == img.raw
    with capsys.disabled():
        print(
            f"\n{type(airflow).__name__} push-to-replica latency (s): {', '.join(f'{x:.2f}' for x in latencies)}; "
            f"median {statistics.median(latencies):.2f}"
        )

    # Durability: an event acknowledged (2xx) just before the API server stops is not lost.
    airflow.api("PATCH", "dags/registry_events", json={"is_paused": True})
    time.sleep(1)  # a run starting just now
    wait_until_no_task_is_running(airflow, "registry_events", "replicate_events")
    late = factory.make()
    images.push(writer, "group/app", late, ["after-restart"])
    deadline = time.monotonic() + 30
    while not any(e["tag"] == "after-restart" for e in store.queue.events()):
        assert time.monotonic() < deadline, "the notification never reached the webhook"
        time.sleep(0.1)
    stop_api_server(airflow)
    assert reader.head_manifest("group/app", "after-restart") is None
    start_api_server(airflow)
    airflow.api("PATCH", "dags/registry_events", json={"is_paused": False})
    wait_for_replica(reader, "group/app", "after-restart", late.digest, timeout=180)
    assert store.queue.stats()["counts"]["pending"] == 0
