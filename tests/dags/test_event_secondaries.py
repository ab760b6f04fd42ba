"""registry_events with two secondaries, one stopped: a drain per secondary, each its own unit
of failure. Pushes reach the one that answers at once; the stopped one's deliveries wait with
their attempts intact (no dead letter) and drain through the event path once it is back.

dag.test() runs registry_events against real registries; the primary's notifications reach
the webhook over HTTP, as in production.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from registry_replication.airflow import event_tasks
from registry_replication.store import Store
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.dag_runs import run, wait_for_events
from replication_harness.registry import LocalRegistry
from replication_harness.skopeo import skopeo_raw

EU = "registry_eu"
LAYER_SIZE = 32 * 1024

pytestmark = pytest.mark.usefixtures("airflow_db")


class EventSites(NamedTuple):
    """What these tests replicate between: their store, the notifying primary, the test's
    secondary and ``eu``, and a client that pushes to the primary as CI jobs do."""

    store: Store
    primary: LocalRegistry
    secondary: LocalRegistry
    eu: LocalRegistry
    writer: RegistryClient


@pytest.fixture
def event_sites(
    store: Store,
    notifying_primary: LocalRegistry,
    secondary: LocalRegistry,
    eu_configured: LocalRegistry,
) -> Iterator[EventSites]:
    """The primary notifies the webhook; both secondaries are configured for the DAGs."""
    with RegistryClient(notifying_primary.client_config(), writable=True) as writer:
        yield EventSites(store, notifying_primary, secondary, eu_configured, writer)


def drain_idle_seconds(monkeypatch: pytest.MonkeyPatch, seconds: int) -> None:
    """How long a drain waits for more events before its run ends."""
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS", str(seconds))


def test_a_stopped_secondary_waits_and_the_other_replicates(event_sites: EventSites, monkeypatch):
    store, notifying_primary, secondary, eu, writer = event_sites
    drain_idle_seconds(monkeypatch, 0)
    monkeypatch.setattr(event_tasks, "PROBE_SECONDS", 1.0)
    eu.stop()
    factory = images.ImageFactory(layer_size=LAYER_SIZE)
    first, second = factory.make(), factory.multi_arch()
    images.push(writer, "group/app", first, ["v1"])
    images.push(writer, "group/other", second, ["v2"])
    wait_for_events(store, {"v1", "v2"})

    down = run("registry_events")
    assert down.state == "success"
    states = {ti.task_id: ti.state for ti in down.get_task_instances()}
    assert states == {
        "wait_for_events": "success",
        "replicate_events_registry_secondary": "success",
        f"replicate_events_{EU}": "skipped",
    }
    for repository, tag in (("group/app", "v1"), ("group/other", "v2")):
        assert skopeo_raw(secondary, repository, tag) == skopeo_raw(
            notifying_primary, repository, tag
        )
    waiting = store.queue.events(secondary=EU)
    assert waiting and {(e["status"], e["attempts"]) for e in waiting} == {("pending", 0)}
    assert {e["status"] for e in store.queue.events(secondary="registry_secondary")} == {"done"}
    assert store.queue.dead_letters() == []

    eu.start()  # same port, same storage
    back = run("registry_events")
    assert back.state == "success"
    assert {ti.task_id: ti.state for ti in back.get_task_instances()}[
        f"replicate_events_{EU}"
    ] == "success"
    for repository, tag in (("group/app", "v1"), ("group/other", "v2")):
        raw = skopeo_raw(notifying_primary, repository, tag)
        assert skopeo_raw(secondary, repository, tag) == raw
        assert skopeo_raw(eu, repository, tag) == raw
    assert {e["status"] for e in store.queue.events(secondary=EU)} == {"done"}
    assert {e["attempts"] for e in store.queue.events(secondary=EU)} == {1}


def test_a_secondary_back_within_the_run_drains_in_it(event_sites: EventSites, monkeypatch):
    """While events still arrive (the drain's idle time), a stopped secondary's drain stays,
    probing: once it answers, its backlog drains in the same run, on its first attempt."""
    store, notifying_primary, _, eu, writer = event_sites
    drain_idle_seconds(monkeypatch, 6)
    monkeypatch.setattr(event_tasks, "DOWN_PROBE_SECONDS", 0.5)
    eu.stop()
    images.push(writer, "group/app", images.ImageFactory(layer_size=LAYER_SIZE).make(), ["v1"])
    wait_for_events(store, {"v1"})

    def start_once_postponed() -> None:
        """Start the secondary again once its drain has found it down (its delivery waits)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            (waiting,) = store.queue.events(secondary=EU)
            if waiting["next_attempt_at"] > waiting["received_at"]:
                eu.start()
                return
            time.sleep(0.1)

    restarter = threading.Thread(target=start_once_postponed)
    restarter.start()
    try:
        result = run("registry_events")
    finally:
        restarter.join()
    assert {ti.task_id: ti.state for ti in result.get_task_instances()}[
        f"replicate_events_{EU}"
    ] == "success"
    raw = skopeo_raw(notifying_primary, "group/app", "v1")
    assert skopeo_raw(eu, "group/app", "v1") == raw
    assert {(e["status"], e["attempts"]) for e in store.queue.events(secondary=EU)} == {("done", 1)}


def test_a_ping_raising_anything_skips_that_secondary_alone(
    event_sites: EventSites, monkeypatch, caplog
):
    """Not only the transport's RegistryError: whatever the ping of a secondary raises (here a
    TLS library's own error) skips that secondary's drain with its deliveries' attempts intact,
    and the other drain replicates."""
    store, notifying_primary, secondary, eu, writer = event_sites
    drain_idle_seconds(monkeypatch, 0)
    ping = RegistryClient.ping

    def ping_failing_on_eu(client: RegistryClient) -> None:
        if client.url == eu.url:
            raise ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
        ping(client)

    monkeypatch.setattr(RegistryClient, "ping", ping_failing_on_eu)
    img = images.ImageFactory(layer_size=LAYER_SIZE).make()
    images.push(writer, "group/app", img, ["v1"])
    wait_for_events(store, {"v1"})
    caplog.set_level("INFO", logger="registry_replication.airflow")

    result = run("registry_events")
    assert result.state == "success"
    states = {ti.task_id: ti.state for ti in result.get_task_instances()}
    assert states[f"replicate_events_{EU}"] == "skipped"
    assert states["replicate_events_registry_secondary"] == "success"
    assert skopeo_raw(secondary, "group/app", "v1") == skopeo_raw(
        notifying_primary, "group/app", "v1"
    )
    assert {(e["status"], e["attempts"]) for e in store.queue.events(secondary=EU)} == {
        ("pending", 0)
    }
    assert f"{eu.url}: its ping raised SSLError, taken as unreachable" in caplog.text
    assert f"{EU} does not answer (its ping raised SSLError" in caplog.text
