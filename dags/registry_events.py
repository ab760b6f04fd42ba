"""Replicate each push within seconds of the primary's notification (Geo's event path)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from registry_replication.airflow import alerts
from registry_replication.airflow.event_tasks import drains
from registry_replication.airflow.sensors import PendingEventsSensor
from registry_replication.settings import EVENTS_DAG_ID, current


@dag(
    dag_id=EVENTS_DAG_ID,
    schedule="@continuous",
    max_active_runs=1,  # required by @continuous; also keeps event claims in one run at a time
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"owner": "platform", "retry_delay": timedelta(seconds=5)},
    on_failure_callback=alerts.on_dag_failure,
    on_success_callback=alerts.on_dag_success,
    tags=["registry-replication", "geo"],
    doc_md="""
### Registry events

The primary registry POSTs a notification for every push and delete to
`/registry-replication/events` on Airflow's API server; the webhook stores it durably.
Each event is stored once, with a delivery to each configured secondary.
`wait_for_events` waits in the triggerer (no worker slot) until a delivery is waiting, then
`replicate_events` (one per secondary, `replicate_events_<conn id>` when there are several)
claims that secondary's deliveries under a lease, coalesces them per tag, replicates through
the engine and acknowledges each once its image is complete there. Failed deliveries back off
and retry; after 10 attempts (`[registry_replication] event_max_attempts`) they are marked
failed: the status page's dead-letter list shows them, with a Retry button. A secondary that
does not answer is skipped: its deliveries wait, no attempt counted, and drain once it is back.
""",
)
def registry_events() -> None:
    # The sensor retries a failed poke (a store that did not answer); replicate_events does
    # not retry (its @task says why).
    PendingEventsSensor(task_id="wait_for_events", poll_interval=0.5, retries=2) >> drains(
        max_attempts=current().event_max_attempts
    )


registry_events()
