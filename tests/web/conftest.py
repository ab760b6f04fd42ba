"""Fixtures for the web tests: the store's rows as the DAGs' tasks leave them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from registry_replication.store import Store


@pytest.fixture
def set_app_state() -> Callable[..., None]:
    """Records ``group/app``'s state at a secondary, as the reconcile's verify task does: three
    tags on the primary, ``tags_secondary`` at the secondary, and any further columns given."""

    def set_app_state(
        store: Store, secondary: str, state: str, tags_secondary: int, **columns: Any
    ) -> None:
        row = {"repository": "group/app", "state": state, "tags_primary": 3}
        store.state.set_repository_state(
            secondary, [{**row, "tags_secondary": tags_secondary, **columns}]
        )

    return set_app_state
