"""Replicate each push within seconds of the primary's notification (Geo's event path)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.configuration import conf
from airflow.sdk import dag

from registry_replication.airflow import alerts
from registry_replication.airflow.event_tasks import replicate_events
from registry_replication.airflow.sensors import PendingEventsSensor


@dag(
    dag_id="registry_events",
    schedule="@continuous",
    max_active_runs=1,  # required by @continuous; also keeps event claims in one run at a time
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"owner": "platform", "retries": 2, "retry_delay": timedelta(seconds=5)},
    on_failure_callback=alerts.on_dag_failure,
    on_success_callback=alerts.on_dag_success,
    tags=["registry-replication", "geo"],
    doc_md="""
### Registry events

The primary registry POSTs a notification for every push and delete to
`/registry-replication/events` on Airflow's API server; the webhook stores it durably.
`wait_for_events` waits in the triggerer (no worker slot) until events are waiting, then
`replicate_events` claims them under a lease, coalesces them per tag, replicates through the
engine and acknowledges each once its image is complete on the secondary. Failed events back
off and retry; after 10 attempts (`[registry_replication] event_max_attempts`) they are marked failed:
the status page's dead-letter list shows them, with a Retry button.
""",
)
def registry_events() -> None:
    # AIRFLOW__REGISTRY_REPLICATION__EVENT_MAX_ATTEMPTS: attempts before an event is dead-lettered.
    max_attempts = conf.getint("registry_replication", "event_max_attempts", fallback=10)
    # No task retries: events retry through the store's backoff, and a task retry would find the
    # dead-lettered events gone and turn the run green (no failure alert).
    PendingEventsSensor(task_id="wait_for_events", poll_interval=0.5) >> replicate_events.override(
        retries=0)(max_attempts=max_attempts)


registry_events()
