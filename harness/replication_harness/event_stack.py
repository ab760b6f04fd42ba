"""The event path on one machine, for benchmarks: a notifying primary, a secondary and
``airflow standalone`` with this project's DAGs, wired together (``event_stack()``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from replication_harness.keys import generate_key_pair
from replication_harness.registry import LocalRegistry, Notifications, free_port
from replication_harness.servers import TokenService
from replication_harness.standalone import AirflowStandalone, replication_env

SECRET = "bench_" + "s" * 32


@dataclass
class EventStack:
    primary: LocalRegistry
    secondary: LocalRegistry
    airflow: AirflowStandalone
    store_url: str


@contextmanager
def event_stack(workdir: Path, env: dict[str, str] | None = None) -> Iterator[EventStack]:
    """Start everything under ``workdir`` (``env``: more Airflow settings); stop it on exit.

    Airflow is started, not yet ready: call ``airflow.wait_ready()``.
    """
    with ExitStack() as stack:
        keys = generate_key_pair(workdir / "keys")
        tokens = stack.enter_context(TokenService(keys, {}))
        port = free_port()
        primary = stack.enter_context(
            LocalRegistry(
                workdir / "primary",
                keys=keys,
                token_realm=tokens.realm,
                name="primary",
                notifications=Notifications(
                    f"http://127.0.0.1:{port}/registry-replication/events", SECRET, backoff="500ms"
                ),
            )
        )
        secondary = stack.enter_context(
            LocalRegistry(
                workdir / "secondary", keys=keys, token_realm=tokens.realm, name="secondary"
            )
        )
        store_url = f"sqlite:///{workdir / 'replication.db'}"
        airflow = stack.enter_context(
            AirflowStandalone(
                workdir / "airflow",
                port=port,
                env=replication_env(primary, secondary, store_url, SECRET, **(env or {})),
            )
        )
        yield EventStack(primary, secondary, airflow, store_url)
