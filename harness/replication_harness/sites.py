"""Several secondaries served from one primary and one replication store (issue 22): each is
a ``Site``, named in the store by its connection id, and written by writers of its own."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from registry_replication.store import Store
from registry_replication.store.record import PRESENT, TagRecord
from registry_replication.transport.client import RegistryClient
from replication_harness.registry import LocalRegistry
from replication_harness.skopeo import skopeo_raw
from replication_harness.sync_cli import start_sync, sync_env
from replication_harness.watch import tags_of


@dataclass(frozen=True)
class Site:
    """A secondary: its connection id (its key in the store) and its registry."""

    conn_id: str
    registry: LocalRegistry

    def client(self, *, writable: bool = False) -> RegistryClient:
        return RegistryClient(self.registry.client_config(), writable=writable)


def sites_env(
    store: Store, sites: Sequence[Site], through: dict[str, str] | None = None, **variables: str
) -> dict[str, str]:
    """A CLI's environment: the store, ``sites`` as the configured secondaries, each one's
    connection under its id (addressed at ``through[conn_id]`` where given: a proxy)."""
    through = through or {}
    connections = {
        f"AIRFLOW_CONN_{site.conn_id.upper()}": json.dumps(
            {**site.registry.connection(), "host": through.get(site.conn_id, site.registry.url)}
        )
        for site in sites
    }
    return sync_env(
        store.url,
        AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS=",".join(s.conn_id for s in sites),
        **connections,
        **variables,
    )


def start_site_sync(
    primary: dict[str, Any], site: Site, *args: str, env: dict[str, str]
) -> subprocess.Popen[str]:
    """``registry-replication sync --secondary <conn id>``: the CLI writing one of the sites."""
    return start_sync(primary, site.conn_id, *args, env=env)


def assert_exact(primary: LocalRegistry, site: Site) -> None:
    """The site holds the primary's tags on the same digests, each manifest the same bytes as
    skopeo reads them (an independent client)."""
    with (
        RegistryClient(primary.client_config()) as source,
        site.client() as target,
    ):
        expected, found = tags_of(source), tags_of(target)
    assert found == expected, f"{site.conn_id} is not the primary's replica"
    for repository, tag in expected:
        assert skopeo_raw(site.registry, repository, tag) == skopeo_raw(primary, repository, tag)


def recorded(store: Store, site: Site) -> dict[tuple[str, str], str]:
    """The (repository, tag) -> digest the store's record says ``site`` holds."""
    record = TagRecord(store, site.conn_id)
    return {
        (repository, tag): digest
        for repository in record.repositories()
        for tag, (state, digest) in record.rows(repository).items()
        if state == PRESENT and digest is not None
    }
