"""Scheduled full reconciliation of the secondary registry (GitLab Geo's backfill)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from registry_replication.airflow import alerts
from registry_replication.airflow.reconcile import replicate
from registry_replication.airflow.settings import params
from registry_replication.settings import RECONCILE_DAG_ID, current

# Read at each parse. The schedule changes without editing code:
# AIRFLOW__REGISTRY_REPLICATION__RECONCILE_SCHEDULE="*/30 * * * *" ("none": only manual runs).
SETTINGS = current()
SCHEDULE = SETTINGS.reconcile_schedule


@dag(
    dag_id=RECONCILE_DAG_ID,
    schedule=None if SCHEDULE.strip().lower() in ("", "none") else SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs never overlap
    default_args={
        "owner": "platform",
        "retries": SETTINGS.task_retries,
        "retry_delay": timedelta(seconds=SETTINGS.task_retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        # Copy tasks in flight at once, per run: bounds the load on both registries.
        "max_active_tis_per_dagrun": SETTINGS.max_active_copy_tasks,
    },
    params=params(),
    on_failure_callback=alerts.on_dag_failure,
    on_success_callback=alerts.on_dag_success,
    deadline=alerts.reconcile_deadline(),
    tags=["registry-replication", "geo"],
    doc_md="""
### Registry reconcile (backfill)

Makes the **secondary** registry (`registry_secondary` connection) an exact replica of the
**primary** (`registry_primary`): lists both catalogs, copies every missing or moved tag (blobs
first, then manifests, tags last), deletes tags the primary no longer has, and verifies
per-repository checksums. Every run is a full, idempotent reconcile, so a backfill over any
date range simply reconciles again; notifications missed by the event DAG are caught here.

One task group per configured secondary (its connection id): the primary is listed once, and
a secondary that fails fails only its own group. With several secondaries, `fanout_blobs`
copies every blob they lack, each read from the primary once; a group's `copy_blobs` copies
only what the fan-out left for it (skipped in a healthy run).

* **Failed layer?** Open the failed `<secondary>.copy_blobs` map index (named
  `blobs i/n (size)`) and search its log for `blob failed` (with several secondaries, the
  `fanout_blobs` log has its first failure: `fan-out: blob`); the `report` task lists every
  failed layer of the run per secondary and decides the run's state; `retention` (a teardown
  after it) removes old run folders and history.
* **Trigger form:** `secondaries` (default: all), scope (`include`/`exclude` globs, `tags`
  regex), `dry_run`, `prune`, `force_prune`, `parallelism`.
""",
)
def registry_reconcile() -> None:
    replicate()


registry_reconcile()
