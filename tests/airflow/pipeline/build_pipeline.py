"""A build pipeline's DAG: replicate the image it just pushed, then deploy from the secondary.

The README's example; ``tests/airflow/test_operators.py`` runs it as its own DAG bundle.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from registry_replication.airflow.operators import ReplicateImagesOperator

with DAG(
    "build_pipeline",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"repository": "team/app", "tags": "latest"},
):
    replicate = ReplicateImagesOperator(
        task_id="replicate",
        repositories="{{ params.repository }}",
        tags="{{ params.tags }}",
    )

    @task
    def deploy(replicated: dict[str, int]) -> None:
        print(f"deploying from the secondary: {replicated}")

    deploy(replicate.output)
