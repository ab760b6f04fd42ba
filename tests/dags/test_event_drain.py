"""The hot event drain: one replicate_events task keeps replicating pushes that arrive while
it runs, until none has come for ``event_drain_idle_seconds``.

dag.test() runs registry_events against real registries; the primary's notifications reach
the webhook over HTTP, as in production.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from registry_replication.store.queue import Event
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.dag_runs import run, wait_for_events


def test_pushes_during_the_drain_replicate_in_the_same_run(
    airflow_db,
    connections,
    store,
    notifying_primary,
    secondary_reader,
    monkeypatch,
    caplog,
):
    primary = notifying_primary
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS", "4")
    writer = RegistryClient(primary.client_config(), writable=True)
    factory = images.ImageFactory(layer_size=32 * 1024)
    first, second, third = factory.make(), factory.multi_arch(), factory.make()
    images.push(writer, "group/app", first, ["v1"])
    wait_for_events(store, {"v1"})

    # Once v1 is on the secondary (the run's first batch), two more pushes, one after the other.
    later_pushed: list[float] = []

    def push_later() -> None:
        deadline = time.monotonic() + 120
        while secondary_reader.head_manifest("group/app", "v1") is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        images.push(writer, "group/app", second, ["v2"])
        images.push(writer, "group/other", third, ["v3"])
        later_pushed.append(time.monotonic())

    pusher = threading.Thread(target=push_later, daemon=True)
    pusher.start()
    caplog.set_level("INFO", logger="registry_replication.airflow")
    result = run("registry_events")
    ended = time.monotonic()
    pusher.join(10)

    assert result.state == "success"
    for repository, tag, img in (
        ("group/app", "v1", first),
        ("group/app", "v2", second),
        ("group/other", "v3", third),
    ):
        assert secondary_reader.get_manifest(repository, tag).raw == img.raw
    # Every event done: the three tags, and the index's child manifests (pushed by digest).
    assert {e["tag"] for e in store.queue.events()} == {"v1", "v2", "v3", None}
    assert {e["status"] for e in store.queue.events()} == {"done"}
    drained = [r.getMessage() for r in caplog.records if r.getMessage().startswith("drained ")]
    assert drained and drained[-1].startswith(f"drained {len(store.queue.events())} events in ")
    assert int(drained[-1].split(" in ")[1].split()[0]) >= 2  # v1 first, the others later
    # It ended by itself once no event came for the idle period (not at the 3600 s cap).
    assert later_pushed and ended - later_pushed[0] < 120


def test_without_an_idle_period_the_task_ends_after_its_batch(
    airflow_db, connections, store, primary_writer, secondary_reader, monkeypatch, caplog
):
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS", "0")
    img = images.ImageFactory(layer_size=32 * 1024).make()
    images.push(primary_writer, "group/app", img, ["v1"])
    store.queue.add(
        [Event("e1", "push", "group/app", "v1", img.digest, None, dt.datetime.now(dt.UTC))],
        ["registry_secondary"],
    )
    caplog.set_level("INFO", logger="registry_replication.airflow")
    assert run("registry_events").state == "success"
    assert secondary_reader.get_manifest("group/app", "v1").raw == img.raw
    assert any(r.getMessage().startswith("drained 1 events in 1 batches") for r in caplog.records)
