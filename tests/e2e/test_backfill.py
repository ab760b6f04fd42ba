"""Airflow's backfill API on registry_reconcile: every backfill run is a full, idempotent reconcile."""

from __future__ import annotations

import json
import time

from registry_replication.store import Store
from replication_harness import corpus
from replication_harness.standalone import AirflowStandalone


def test_backfill_runs_reconcile_idempotently(
    tmp_path, primary, secondary, primary_writer, secondary_reader
):
    pushed = corpus.push_every_kind(primary_writer)
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    with AirflowStandalone(
        tmp_path / "airflow",
        env={
            "AIRFLOW_CONN_REGISTRY_PRIMARY": json.dumps(primary.connection()),
            "AIRFLOW_CONN_REGISTRY_SECONDARY": json.dumps(secondary.connection()),
            "REGISTRY_REPLICATION_DB_URL": db_url,
            "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES": "0",
        },
    ) as airflow:
        airflow.wait_ready()
        airflow.wait_for_dag("registry_reconcile")
        # Fewer writers on the standalone's SQLite while the backfill is created: Airflow 3.3's
        # scheduler dies (ObjectDeletedError) if it sees a backfill run that the API then rolls
        # back on "database is locked" (HTTP 503). The event DAG is not part of this test, and
        # the hourly run the scheduler started on its own finishes first.
        airflow.api("PATCH", "dags/registry_events", json={"is_paused": True})
        deadline = time.monotonic() + 300
        while airflow.api(
            "GET", "dags/registry_reconcile/dagRuns", params={"state": ["queued", "running"]}
        )["total_entries"]:
            assert time.monotonic() < deadline, "the scheduled reconcile did not finish"
            time.sleep(2)
        body = {
            "dag_id": "registry_reconcile",
            "from_date": "2026-11-27T00:00:00Z",
            "to_date": "2026-11-27T01:00:00Z",
            "max_active_runs": 1,
            "run_backwards": False,
            "dag_run_conf": {},
            "reprocess_behavior": "completed",
        }
        backfill = airflow.api("POST", "backfills", json=body)  # retried while SQLite is busy
        deadline = time.monotonic() + 420
        while airflow.api("GET", f"backfills/{backfill['id']}")["completed_at"] is None:
            assert time.monotonic() < deadline, "the backfill did not complete"
            time.sleep(2)
        runs = airflow.api(
            "GET", "dags/registry_reconcile/dagRuns", params={"run_type": "backfill", "limit": 50}
        )["dag_runs"]
    states = [run["state"] for run in runs]
    assert states and set(states) == {"success"}, states
    for (repository, tag), digest in pushed.items():
        assert secondary_reader.head_manifest(repository, tag).digest == digest
    last = Store(db_url).history.last_run("registry_reconcile")
    assert last["state"] == "success" and last["summary"]["problems"] == []
