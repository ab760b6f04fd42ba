"""Fixtures for the DAG tests: the replication store the tasks use."""

from __future__ import annotations

import pytest

from registry_replication.store import Store


@pytest.fixture
def store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The test's own replication store (``tests/conftest.py``), for the tasks and the app alike."""
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", store.url)
    return store
