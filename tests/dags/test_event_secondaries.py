"""registry_events with two secondaries, one stopped: a drain per secondary, each its own unit
of failure. Pushes reach the one that answers at once; the stopped one's deliveries wait with
their attempts intact (no dead letter) and drain through the event path once it is back.

dag.test() runs registry_events against real registries; the primary's notifications reach
the webhook over HTTP, as in production.
"""

from __future__ import annotations

from registry_replication.airflow import event_tasks
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.dag_runs import run, wait_for_events
from replication_harness.skopeo import skopeo_raw

EU = "registry_eu"


def test_a_stopped_secondary_waits_and_the_other_replicates(
    airflow_db,
    connections,
    store,
    notifying_primary,
    secondary,
    eu_configured,
    monkeypatch,
):
    eu = eu_configured
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS", "0")
    monkeypatch.setattr(event_tasks, "PROBE_SECONDS", 1.0)
    eu.stop()
    writer = RegistryClient(notifying_primary.client_config(), writable=True)
    factory = images.ImageFactory(layer_size=32 * 1024)
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
