"""End to end, issue 22: three real secondaries behind one ``airflow standalone``.

One ``registry_reconcile`` run backfills all three (every tag's manifest bytes equal on each,
the primary's blob bytes measured against the unique bytes). Then the primary notifies the
webhook; ``registry_ap`` is stopped and 4 images are pushed: they reach the other two through
the event path while ``registry_ap``'s drain is skipped, its deliveries postponed with no
attempt counted. Restarted (same port, same storage), it gets the 4 through the event path
alone: the reconcile schedule is off and the API shows no run but the backfill.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa

from registry_replication.outcomes import EventStatus
from registry_replication.store import Store
from registry_replication.store.schema import events, push_latency
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.registry import free_port
from replication_harness.sites import Site, assert_exact
from replication_harness.standalone import AirflowStandalone
from replication_harness.watch import wait_for_replica

AP = "registry_ap"
OUTAGE_TAGS = [f"during-outage-{i}" for i in range(4)]
# The bound: the 4 pushes reach the restarted secondary within 4 minutes (its
# deliveries wait out PROBE_SECONDS, then the sensor, the drain's probe and the copy).
RESTARTED_WITHIN = 240.0


def push_corpus(writer: RegistryClient) -> dict[str, int]:
    """Six tags in three repositories over shared base layers; returns the size of each unique
    blob (what one secondary needs from the primary)."""
    oci = images.ImageFactory(layer_size=256 * 1024)
    docker = images.ImageFactory(layer_size=256 * 1024, docker=True)
    corpus = [
        ("group/app", oci.make(), ["v1"]),
        ("group/app", oci.make(), ["v2", "latest"]),
        ("group/tool", oci.multi_arch(), ["multi"]),  # the app's base layers: shared blobs
        ("other/svc", docker.make(2), ["1.0", "schema2"]),
    ]
    unique = {}
    for repository, img, tags in corpus:
        images.push(writer, repository, img, tags)
        unique.update({blob.digest: blob.size for blob in img.all_blobs()})
    return unique


def latencies(store: Store, repository: str) -> dict[str, list[float]]:
    """Per secondary, the push-to-replica seconds the drains recorded for ``repository``'s
    tagged pushes (``rr_push_latency``), in push order."""
    query = (
        sa.select(push_latency.c.secondary, push_latency.c.seconds)
        .join(events, events.c.id == push_latency.c.event_id)
        .where(push_latency.c.repository == repository, events.c.tag.is_not(None))
        .order_by(push_latency.c.pushed_at)
    )
    found: dict[str, list[float]] = {}
    with store.engine.connect() as conn:
        for secondary, seconds in conn.execute(query):
            found.setdefault(secondary, []).append(round(seconds, 2))
    return found


def skipped_drains(airflow: AirflowStandalone, timeout: float = 120) -> list[dict[str, Any]]:
    """The skipped task instances of registry_events, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        skipped = airflow.api(
            "GET",
            "dags/registry_events/dagRuns/~/taskInstances",
            params={"state": ["skipped"], "limit": 100},
        )["task_instances"]
        if skipped:
            return skipped
        assert time.monotonic() < deadline, f"no drain of registry_events skipped in {timeout}s"
        time.sleep(0.5)


def test_three_secondaries_backfill_in_one_run_and_one_catches_up_by_events_alone(
    tmp_path,
    primary,
    primary_writer,
    secondary,
    eu,
    start_registry,
    keys,
    token_service,
    start_standalone,
    webhook_notifications,
    capsys,
):
    started = time.monotonic()
    sites = [
        Site("registry_secondary", secondary),
        Site("registry_eu", eu),
        Site(AP, start_registry("ap", keys=keys, token_realm=token_service.realm)),
    ]
    ap = sites[2].registry
    unique = push_corpus(primary_writer)

    store_url = f"sqlite:///{tmp_path / 'replication.db'}"
    port = free_port()
    airflow = start_standalone(
        tmp_path / "airflow",
        primary,
        secondary,
        store_url,
        port=port,
        AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS=",".join(s.conn_id for s in sites),
        AIRFLOW_CONN_REGISTRY_EU=json.dumps(eu.connection()),
        AIRFLOW_CONN_REGISTRY_AP=json.dumps(ap.connection()),
        # The hot drain on, short: the outage's pushes replicate within one drain, and the run
        # a drain keeps going ends soon after.
        AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS="5",
    )
    airflow.wait_for_dag("registry_reconcile")
    airflow.wait_for_dag("registry_events")

    # (1) One reconcile run backfills all three.
    ready = time.monotonic()
    served = primary.served_bytes()
    backfill = airflow.trigger("registry_reconcile")
    assert airflow.wait_for_run("registry_reconcile", backfill) == "success"
    read = primary.served_bytes() - served
    backfilled = time.monotonic()
    for site in sites:
        assert_exact(primary, site)
    with capsys.disabled():
        print(
            f"\nbackfill of 3 secondaries in {backfilled - ready:.0f}s (airflow ready after "
            f"{ready - started:.0f}s): the primary served {read} blob bytes for "
            f"{sum(unique.values())} unique ({read / sum(unique.values()):.2f}x)"
        )

    # From here on the primary notifies the webhook, as a deployment's would after its backfill:
    # the corpus above was for the reconcile alone.
    primary.notifications = webhook_notifications(port)
    primary.stop()
    primary.start()  # same port, same storage
    factory = images.ImageFactory(layer_size=256 * 1024)
    warm = factory.make()
    images.push(primary_writer, "group/app", warm, ["warm-up"])  # the event path's first run
    for site in sites:
        with site.client() as reader:
            wait_for_replica(reader, "group/app", "warm-up", warm.digest, timeout=180)

    # (2) registry_ap stopped: 4 pushes reach the other two through the event path.
    ap.stop()
    outage = {
        tag: factory.multi_arch() if i % 2 else factory.make() for i, tag in enumerate(OUTAGE_TAGS)
    }
    arrivals: list[float] = []
    with sites[0].client() as first, sites[1].client() as second:
        for tag, img in outage.items():
            pushed_at = time.monotonic()
            images.push(primary_writer, "group/app", img, [tag])
            wait_for_replica(first, "group/app", tag, img.digest, timeout=60)
            wait_for_replica(second, "group/app", tag, img.digest, timeout=60)
            arrivals.append(time.monotonic() - pushed_at)
    # registry_ap's drain finds it down, probes it while the pushes come, then is skipped.
    assert {ti["task_id"] for ti in skipped_drains(airflow)} == {f"replicate_events_{AP}"}
    store = Store(store_url)
    waiting = [e for e in store.queue.events(secondary=AP) if e["tag"] in outage]
    assert len(waiting) == len(outage)
    assert {(e["status"], e["attempts"]) for e in waiting} == {("pending", 0)}

    # (3) Restarted, registry_ap gets the 4 pushes through the event path alone.
    ap.start()  # same port, same storage
    restarted = time.monotonic()
    with sites[2].client() as reader:
        for tag, img in outage.items():
            left = RESTARTED_WITHIN - (time.monotonic() - restarted)
            wait_for_replica(reader, "group/app", tag, img.digest, timeout=max(left, 0))
    caught_up = time.monotonic() - restarted
    runs = airflow.api("GET", "dags/registry_reconcile/dagRuns", params={"limit": 100})
    assert [run["dag_run_id"] for run in runs["dag_runs"]] == [backfill]

    # (4) All three exact; every delivery done, none dead-lettered, and registry_ap's outage
    # cost its deliveries no attempt: each was done on the one claim made once it answered.
    for site in sites:
        assert_exact(primary, site)
    deadline = time.monotonic() + 60
    while any(
        store.queue.stats()["counts"][s] for s in (EventStatus.PENDING, EventStatus.PROCESSING)
    ):
        assert time.monotonic() < deadline, store.queue.stats()
        time.sleep(0.5)
    assert store.queue.dead_letters() == []
    delivered = [e for e in store.queue.events(secondary=AP) if e["tag"] in outage]
    assert {(e["status"], e["attempts"]) for e in delivered} == {("done", 1)}
    with capsys.disabled():
        print(
            f"outage pushes on the two live secondaries (s): "
            f"{', '.join(f'{x:.2f}' for x in arrivals)}; registry_ap caught up "
            f"{caught_up:.1f}s after its restart; rr_push_latency (s): "
            f"{latencies(store, 'group/app')}; test wall {time.monotonic() - started:.0f}s"
        )
    # Last, so that the event path above is checked whatever this measured.
    assert sum(unique.values()) <= read <= 1.2 * sum(unique.values()), (read, unique)
