"""Fixtures for the DAG tests: the replication store the tasks use, and a primary that
notifies the webhook."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from registry_replication.store import Store
from replication_harness.keys import KeyPair
from replication_harness.registry import LocalRegistry, Notifications
from replication_harness.servers import TokenService


@pytest.fixture
def store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The test's own replication store (``tests/conftest.py``), for the tasks and the app alike."""
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", store.url)
    return store


@pytest.fixture
def notifying_primary(
    connections: None,
    start_registry: Callable[..., LocalRegistry],
    keys: KeyPair,
    token_service: TokenService,
    webhook_url: str,
    webhook_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> LocalRegistry:
    """A primary whose notifications reach the webhook over HTTP, as in production; the DAGs'
    primary connection points at it instead of at the ``connections`` fixture's primary."""
    primary = start_registry(
        "notifying",
        keys=keys,
        token_realm=token_service.realm,
        notifications=Notifications(webhook_url, webhook_secret, backoff="200ms"),
    )
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_PRIMARY", json.dumps(primary.connection()))
    return primary
