"""Ad-hoc sync of chosen repositories, triggered from the UI form or the REST API."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from registry_replication.airflow import alerts
from registry_replication.airflow.reconcile import replicate
from registry_replication.airflow.settings import params
from registry_replication.settings import SYNC_DAG_ID


@dag(
    dag_id=SYNC_DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={
        "owner": "platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=15),
        "retry_exponential_backoff": 2.0,
    },
    params=params(repositories_required=True),
    on_failure_callback=alerts.on_dag_failure,
    on_success_callback=alerts.on_dag_success,
    tags=["registry-replication"],
    doc_md="""
### Registry sync (ad hoc)

Replicates the **repositories** you name (optionally only tags matching `tags`) from the primary
to every configured secondary (or those in `secondaries`), a task group each, with the same
engine and logs as `registry_reconcile` (with several, each blob read from the primary once by
`fanout_blobs`). It does not read the catalog, and prunes only if you
tick `prune`.

CLI: `airflow dags trigger registry_sync --conf '{"repositories": ["group/app"]}'`
""",
)
def registry_sync() -> None:
    replicate()


registry_sync()
