"""The end-to-end tests' Airflows: ``airflow standalone``, and one distributed cluster.

The cluster (CeleryExecutor, PostgreSQL, Redis, two workers) is started once per session and
pointed at each test's registries through Airflow connections in its metadata DB (what a
production deployment's secrets backend serves); the replication store is emptied between
tests (``use_cluster``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_replication.store import Store
from replication_harness.cluster import AirflowCluster
from replication_harness.postgres import LocalPostgres
from replication_harness.registry import LocalRegistry, Notifications, free_port
from replication_harness.standalone import AirflowStandalone, replication_env

SECRET = "e2e_Notification-Secret"


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: LocalPostgres
) -> Iterator[AirflowCluster]:
    airflow = AirflowCluster(
        tmp_path_factory.mktemp("cluster"),
        postgres=postgres,
        env={
            "REGISTRY_NOTIFICATION_SECRET": SECRET,
            "AIRFLOW__REGISTRY_REPLICATION__RECONCILE_SCHEDULE": "none",
            # One retry, soon: a killed worker's tasks run again elsewhere within the test.
            "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES": "1",
            "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRY_DELAY_SECONDS": "2",
            # Small copy batches: even the tests' images make several copy tasks.
            "AIRFLOW__REGISTRY_REPLICATION__BLOB_BATCH_BYTES": str(512 * 1024),
        },
    )
    try:
        airflow.start()
        airflow.wait_ready()
        for dag_id in ("registry_reconcile", "registry_events", "registry_sync"):
            airflow.wait_for_dag(dag_id)
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture
def use_cluster(cluster: AirflowCluster) -> Callable[..., Store]:
    """Point the cluster's connections at this test's registries and empty its store."""

    def use(primary: LocalRegistry, secondary: LocalRegistry, **primary_extra: Any) -> Store:
        cluster.wait_ready()  # a worker a test before this one restarted
        cluster.set_connection("registry_primary", primary.connection(**primary_extra))
        cluster.set_connection("registry_secondary", secondary.connection())
        return cluster.empty_store()

    return use


@pytest.fixture
def start_standalone() -> Iterator[Callable[..., AirflowStandalone]]:
    """``airflow standalone`` with the connections in its environment, started (and ready,
    unless ``wait=False``)."""
    started: list[AirflowStandalone] = []

    def start(
        home: Path,
        primary: LocalRegistry,
        secondary: LocalRegistry,
        store_url: str,
        port: int | None = None,
        wait: bool = True,
        **env: str,
    ) -> AirflowStandalone:
        airflow = AirflowStandalone(
            home,
            port=port or free_port(),
            env=replication_env(primary, secondary, store_url, SECRET, **env),
        )
        started.append(airflow.start())
        if wait:
            airflow.wait_ready()
        return airflow

    yield start
    for airflow in started:
        airflow.stop()


@pytest.fixture
def webhook_notifications() -> Callable[[int], Notifications]:
    """A primary's notifications to the webhook of the Airflow on a port."""

    def to(port: int) -> Notifications:
        return Notifications(
            f"http://127.0.0.1:{port}/registry-replication/events", SECRET, backoff="500ms"
        )

    return to


@pytest.fixture
def notifying_registries(
    start_registry: Callable[..., LocalRegistry],
    keys: Any,
    token_service: Any,
    webhook_notifications: Callable[[int], Notifications],
) -> Callable[[int], tuple[LocalRegistry, LocalRegistry]]:
    """Starts a primary that notifies the webhook of the Airflow on a port, and a secondary,
    both behind the token service."""

    def start(port: int) -> tuple[LocalRegistry, LocalRegistry]:
        primary = start_registry(
            "primary",
            keys=keys,
            token_realm=token_service.realm,
            notifications=webhook_notifications(port),
        )
        return primary, start_registry("secondary", keys=keys, token_realm=token_service.realm)

    return start


@pytest.fixture(params=["standalone", "cluster"])
def notified_stack(request, tmp_path, notifying_registries, start_standalone):
    """Registries, and an Airflow they notify: standalone (SQLite store) or the cluster."""
    cluster = request.getfixturevalue("cluster") if request.param == "cluster" else None
    port = cluster.port if cluster else free_port()
    primary, secondary = notifying_registries(port)
    if cluster:
        store = request.getfixturevalue("use_cluster")(primary, secondary)
        cluster.api("PATCH", "dags/registry_events", json={"is_paused": False})
        return primary, secondary, cluster, store
    db_url = f"sqlite:///{tmp_path / 'events.db'}"
    # The hot drain on (short, so the run a pause leaves going ends soon): pushes made one
    # after another replicate within the same replicate_events task.
    airflow = start_standalone(
        tmp_path / "airflow",
        primary,
        secondary,
        db_url,
        port=port,
        AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS="5",
    )
    airflow.wait_for_dag("registry_events")
    return primary, secondary, airflow, Store(db_url)
