"""The event path meets the hostile manifests: the primary notifies the webhook of pushes of
JSON 5,000 deep, a chain of 1,100 indexes and an index diamond 14 deep, then of 5 healthy
images. One registry_events run replicates the healthy five, and dead-letters the three at
once with the bound each exceeded (no retry can change them), failing so the alert fires."""

from __future__ import annotations

import time

from registry_replication.transport.client import RegistryClient
from replication_harness import hostile, images
from replication_harness.dag_runs import run
from replication_harness.skopeo import skopeo_raw

HOSTILE = {
    "deep/json": "max_json_depth",
    "chain/idx": "max_index_depth",
    "diamond/big": "max_index_depth",
}


def test_hostile_pushes_are_dead_lettered_and_the_healthy_ones_replicate(
    airflow_db,
    connections,
    secondary,
    store,
    notifying_primary,
    monkeypatch,
):
    primary = notifying_primary
    factory = images.ImageFactory()
    with RegistryClient(primary.client_config(), writable=True) as writer:
        images.push(writer, "deep/json", hostile.deep_json(5000, factory), ["v1"])
        leaf = factory.make()
        hostile.push_stack(writer, "chain/idx", leaf, hostile.chain(1100, leaf), "v1")
        hostile.push_stack(writer, "diamond/big", leaf, hostile.diamond(14, leaf), "v1")
        healthy = [f"team/app{i}" for i in range(5)]
        for repository in healthy:
            images.push(writer, repository, factory.make(), ["v1"])
    deadline = time.monotonic() + 120
    while {e["repository"] for e in store.queue.events(limit=10_000) if e["tag"] == "v1"} < {
        *HOSTILE,
        *healthy,
    }:
        assert time.monotonic() < deadline, "the notifications never arrived"
        time.sleep(0.2)

    result = run("registry_events")
    waited = sorted(
        (e["updated_at"] - e["received_at"]).total_seconds()
        for e in store.queue.events(limit=10_000)
        if e["tag"] == "v1" and e["repository"] in healthy
    )
    print(
        f"healthy pushes: notification to replicated {waited[0]:.2f}-{waited[-1]:.2f}s "
        "(dag.test's start-up included)"
    )

    assert result.state == "failed"  # dead letters alert
    for repository in healthy:
        assert skopeo_raw(secondary, repository, "v1") == skopeo_raw(primary, repository, "v1")
    tagged = {e["repository"]: e for e in store.queue.events(limit=10_000) if e["tag"] == "v1"}
    for repository in healthy:
        assert tagged[repository]["status"] == "done"
    for repository, setting in HOSTILE.items():
        event = tagged[repository]
        assert event["status"] == "failed" and event["attempts"] == 1, event
        assert setting in event["last_error"] and "What to do" in event["last_error"]
    assert {e["status"] for e in store.queue.events(limit=10_000)} == {"done", "failed"}
