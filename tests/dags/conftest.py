"""Fixtures for the DAG tests: the replication store the tasks use, and the webhook the
primary notifies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry_replication.store import Store
from replication_harness.servers import serve_on_loopback


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    """The test's own replication store, for the tasks and the app alike."""
    url = f"sqlite:///{tmp_path / 'replication.db'}"
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", url)
    return Store(url)


@pytest.fixture
def webhook_secret() -> str:
    return "operating_Notification-Secret"


@pytest.fixture
def webhook_url(store, webhook_secret) -> Iterator[str]:
    """The webhook on a loopback port, storing into ``store``."""
    from registry_replication.webhook import create_app

    with serve_on_loopback(create_app(store, secret=webhook_secret)) as url:
        yield f"{url}/events"
