"""Real registries for every test: Debian's docker-registry (distribution 2.8) on loopback."""

from __future__ import annotations

import os
import tempfile

# Airflow reads its configuration on import: give the test session its own home and DB first.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(
    __import__("pathlib").Path(__file__).resolve().parent.parent / "dags"
)
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES"] = "0"  # failures show at once
# replicate_events ends after its batch unless a test asks for the hot drain.
os.environ["AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS"] = "0"

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from registry_replication.engine.leases import Leases
from registry_replication.store import Store
from registry_replication.store.queue import Event
from registry_replication.transport.client import RegistryClient
from registry_replication.web.webhook import create_app
from replication_harness import envelopes, images
from replication_harness.dag_runs import load_dags, migrate_metadata_db
from replication_harness.keys import KeyPair, generate_key_pair
from replication_harness.postgres import LocalPostgres
from replication_harness.registry import LocalRegistry, Notifications
from replication_harness.servers import TokenService, serve_on_loopback
from replication_harness.sites import Site
from replication_harness.skopeo import LOGIN


@pytest.fixture(autouse=True)
def default_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's own default replication store: the record of the secondary's tags
    (``store.record``) must not outlive the registries a test started."""
    folder = tmp_path_factory.mktemp("default-store")
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", f"sqlite:///{folder / 'replication.db'}")


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated metadata DB in the session's AIRFLOW_HOME: ``dag.test()`` needs one."""
    migrate_metadata_db()
    # Loading DAGs sets up Airflow's logging once, before any test's caplog attaches.
    load_dags()


@pytest.fixture
def connections(
    monkeypatch: pytest.MonkeyPatch, primary: LocalRegistry, secondary: LocalRegistry
) -> None:
    """The DAGs' registry connections point at this test's registries."""
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_PRIMARY", json.dumps(primary.connection()))
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_SECONDARY", json.dumps(secondary.connection()))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The shared registry key pair (the stand-in for gitlab-registry.key)."""
    return generate_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (Debian's postgresql); tests create databases on it."""
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def token_service(keys: KeyPair) -> Iterator[TokenService]:
    """GitLab's /jwt/auth stand-in, the realm of the token-auth registries."""
    # skopeo's login: the independent checker reads the registries as people do.
    with TokenService(keys, {LOGIN[0]: (LOGIN[1], {"pull", "push", "delete"})}) as service:
        yield service


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[..., LocalRegistry]]:
    """Start more registries: ``start_registry("name", keys=..., notifications=...)``."""
    started: list[LocalRegistry] = []

    def start(
        name: str,
        keys: KeyPair | None = None,
        notifications: Notifications | None = None,
        token_realm: str | None = None,
        htpasswd: Path | None = None,
    ) -> LocalRegistry:
        registry = LocalRegistry(
            tmp_path / name,
            keys=keys,
            notifications=notifications,
            token_realm=token_realm,
            htpasswd=htpasswd,
            name=name,
        )
        started.append(registry.start())
        return registry

    yield start
    for registry in started:
        registry.stop()


def _token_registry(name: str, doc: str) -> Any:
    """The fixture ``name``: a registry of that name trusting the test's key pair and token
    service, as GitLab configures its registries."""

    def registry(
        start_registry: Callable[..., LocalRegistry], keys: KeyPair, token_service: TokenService
    ) -> LocalRegistry:
        return start_registry(name, keys=keys, token_realm=token_service.realm)

    registry.__doc__ = doc
    return pytest.fixture(registry, name=name)


primary = _token_registry(
    "primary", "A primary configured as GitLab configures its registry (token auth, gitlab-issuer)."
)
secondary = _token_registry("secondary", "A secondary trusting the same key pair, as Geo requires.")
eu = _token_registry(
    "eu", "A second secondary of the same primary (issue 22), ``registry_eu`` in the store."
)


@pytest.fixture
def eu_configured(eu: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> LocalRegistry:
    """``eu`` configured beside the test's secondary, as a deployment would configure it: its
    connection (``AIRFLOW_CONN_REGISTRY_EU``) and both in ``secondary_conn_ids``."""
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_EU", json.dumps(eu.connection()))
    monkeypatch.setenv(
        "AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS", "registry_secondary,registry_eu"
    )
    return eu


@pytest.fixture(params=["one secondary", "two secondaries"])
def sites(request: pytest.FixtureRequest, secondary: LocalRegistry) -> list[Site]:
    """The secondaries one store serves (issue 22): the test's secondary alone, then with
    ``eu``, written at the same time by writers of its own."""
    sites = [Site("registry_secondary", secondary)]
    if request.param == "two secondaries":
        sites.append(Site("registry_eu", request.getfixturevalue("eu")))
    return sites


@pytest.fixture
def image_factory() -> images.ImageFactory:
    """The test's images: related ones, sharing base layers."""
    return images.ImageFactory()


@pytest.fixture
def odd_repository(primary: LocalRegistry, image_factory: images.ImageFactory) -> str:
    """``Foo/app``, pushed to the primary (tag ``1.0``): the reference grammar refuses it, but
    distribution 2.8 reads ``Foo`` as a hostname and stores it, so it shows in the catalog."""
    images.push_unchecked(primary, "Foo/app", image_factory.make(), "1.0")
    return "Foo/app"


@pytest.fixture
def open_registry(start_registry: Callable[..., LocalRegistry]) -> LocalRegistry:
    """A registry without authentication."""
    return start_registry("open")


def _client(name: str, registry: str, *, writable: bool, doc: str) -> Any:
    """The fixture ``name``: a client of the ``registry`` fixture's registry, closed after the
    test."""

    def client(request: pytest.FixtureRequest) -> Iterator[RegistryClient]:
        config = request.getfixturevalue(registry).client_config()
        with RegistryClient(config, writable=writable) as opened:
            yield opened

    client.__doc__ = doc
    return pytest.fixture(client, name=name)


primary_writer = _client(
    "primary_writer",
    "primary",
    writable=True,
    doc="Pushes to the primary, as CI jobs and developers do (the replicator never does).",
)
primary_reader = _client(
    "primary_reader",
    "primary",
    writable=False,
    doc="The replicator's view of the primary: read-only, pull-scoped tokens.",
)
secondary_writer = _client(
    "secondary_writer", "secondary", writable=True, doc="Writes to the secondary."
)
secondary_reader = _client(
    "secondary_reader", "secondary", writable=False, doc="Reads the secondary, read-only."
)


@pytest.fixture
def replicator(
    primary: LocalRegistry, secondary: LocalRegistry
) -> Iterator[tuple[RegistryClient, RegistryClient]]:
    """The replicator's own pair of clients: the primary read-only, the secondary writable."""
    with (
        RegistryClient(primary.client_config()) as source,
        RegistryClient(secondary.client_config(), writable=True) as target,
    ):
        yield source, target


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A replication store of the test's own (SQLite)."""
    return Store(f"sqlite:///{tmp_path / 'replication.db'}")


@pytest.fixture
def leases(store: Store) -> Iterator[Leases]:
    """A writer's leases in the test's store."""
    with Leases(store, "registry_secondary") as held:
        yield held


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A replication store's URL on each backend: a SQLite file, then a database of its own on
    the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'replication.db'}"
    return request.getfixturevalue("postgres").create_database(f"store_{uuid.uuid4().hex[:12]}")


# When the events of ``ev`` happened: ``ev(i)`` is i seconds after.
T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)


@pytest.fixture
def ev() -> Callable[..., Event]:
    """Events as the webhook stores them: ``ev(i, action, repository, tag, digest)`` is event
    ``e<i>`` at ``T0`` + i seconds (by default a push of ``group/app`` naming no tag or digest)."""

    def make(
        i: int,
        action: str = "push",
        repository: str = "group/app",
        tag: str | None = None,
        digest: str | None = None,
        media_type: str | None = None,
    ) -> Event:
        return Event(
            f"e{i}", action, repository, tag, digest, media_type, T0 + dt.timedelta(seconds=i)
        )

    return make


@pytest.fixture
def webhook_secret() -> str:
    """The secret the webhook and the notifying registries share."""
    return envelopes.SECRET


@pytest.fixture
def webhook(store: Store, webhook_secret: str) -> TestClient:
    """The webhook app in process, storing into ``store`` (``replication_harness.envelopes``
    builds what to post to it)."""
    return TestClient(create_app(store, secret=webhook_secret))


@pytest.fixture
def webhook_url(store: Store, webhook_secret: str) -> Iterator[str]:
    """The webhook behind a real server on a loopback port, storing into ``store``."""
    with serve_on_loopback(create_app(store, secret=webhook_secret)) as url:
        yield f"{url}/events"
