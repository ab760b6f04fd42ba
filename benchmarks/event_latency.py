"""Push-to-replica latency of the event path in ``airflow standalone`` (the hot drain).

Three figures, in one run, against real registries whose primary notifies Airflow's webhook:

1. the median over ``--sequential`` pushes made one after another, each once the previous one
   has replicated (the drain replicates them without a new task each time);
2. the first push after ``--idle-minutes`` of quiet (the drain has ended: this one goes through
   the deferrable sensor and a new task);
3. a burst of ``--burst`` pushes over ``--burst-repositories`` repositories, made concurrently:
   the time from the last push until all of them are on the secondary.

Latency is measured from the end of the push (the manifest PUT answered) until the tag
answers with the pushed digest on the secondary.

    .venv/bin/python benchmarks/event_latency.py --idle-minutes 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from registry_replication.store.schema import events
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.event_stack import event_stack
from replication_harness.measure import load_average


def say(text: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {text}", flush=True)


def wait_for(
    reader: RegistryClient, repository: str, tag: str, digest: str, timeout: float = 300
) -> float:
    """Seconds until ``repository:tag`` answers with ``digest`` on the secondary."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        found = reader.head_manifest(repository, tag)
        if found is not None and found.digest == digest:
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{repository}:{tag} did not replicate in {timeout}s")


def last_received(store_url: str, repositories: str) -> float:
    """When the webhook stored the last tag push event for ``repositories`` (a LIKE pattern),
    as a Unix time."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            when = conn.execute(
                sa.select(sa.func.max(events.c.received_at)).where(
                    events.c.repository.like(repositories),
                    events.c.action == "push",
                    events.c.tag.is_not(None),
                )
            ).scalar()
    finally:
        engine.dispose()
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def measure(
    workdir: Path,
    *,
    sequential: int,
    idle_minutes: float,
    burst: int,
    burst_repositories: int,
    drain_idle_seconds: float | None,
) -> dict:
    with ExitStack() as stack:
        env = {}
        if drain_idle_seconds is not None:
            env["AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS"] = str(drain_idle_seconds)
        else:  # the default (60 s), whatever the caller's environment says
            os.environ.pop("AIRFLOW__REGISTRY_REPLICATION__EVENT_DRAIN_IDLE_SECONDS", None)
        started_stack = stack.enter_context(event_stack(workdir, env))
        primary, secondary = started_stack.primary, started_stack.secondary
        airflow = started_stack.airflow
        say(f"starting airflow standalone at {airflow.url} ...")
        airflow.wait_ready()
        airflow.wait_for_dag("registry_events")
        airflow.api("PATCH", "dags/registry_events", json={"is_paused": False})
        writer = stack.enter_context(RegistryClient(primary.client_config(), writable=True))
        reader = stack.enter_context(RegistryClient(secondary.client_config()))
        factory = images.ImageFactory(layer_size=16 * 1024)

        def push_and_wait(repository: str, tag: str) -> float:
            img = factory.make()
            images.push(writer, repository, img, [tag])
            return wait_for(reader, repository, tag, img.digest)

        say("warm-up push (the continuous DAG's first run)")
        warm_up = push_and_wait("bench/app", "warm-up")
        say(f"warm-up replicated in {warm_up:.2f}s; {sequential} sequential pushes")
        one_after_another = [push_and_wait("bench/app", f"seq-{i}") for i in range(sequential)]

        say(f"quiet for {idle_minutes:g} min, then one push")
        time.sleep(idle_minutes * 60)
        after_idle = push_and_wait("bench/app", "after-idle")

        say(f"burst: {burst} pushes over {burst_repositories} repositories")
        planned = [
            (f"bench/burst-{i % burst_repositories}", f"b{i}", factory.make()) for i in range(burst)
        ]
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: images.push(writer, p[0], p[2], [p[1]]), planned))
        last_push, last_push_at = time.monotonic(), time.time()
        for repository, tag, img in planned:
            wait_for(reader, repository, tag, img.digest)
        all_replicated = time.monotonic()
        delivered = last_received(started_stack.store_url, "bench/burst-%") - last_push_at
        return {
            "drain_idle_seconds": drain_idle_seconds if drain_idle_seconds is not None else 60,
            "warm_up_seconds": round(warm_up, 2),
            "sequential_seconds": [round(x, 2) for x in one_after_another],
            "sequential_median_seconds": round(statistics.median(one_after_another), 2),
            "sequential_max_seconds": round(max(one_after_another), 2),
            "after_idle_minutes": idle_minutes,
            "after_idle_seconds": round(after_idle, 2),
            "burst_pushes": burst,
            "burst_repositories": burst_repositories,
            "burst_push_seconds": round(last_push - started, 2),
            "burst_replicated_after_last_push_seconds": round(all_replicated - last_push, 2),
            # The primary's notifications go out one at a time: how late the last one came
            # (below 0 when it was stored before the pushing client read its last answer).
            "burst_last_event_stored_after_last_push_seconds": round(delivered, 2),
            "load_average": load_average(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--idle-minutes", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--burst-repositories", type=int, default=20)
    parser.add_argument(
        "--drain-idle-seconds",
        type=float,
        help="[registry_replication] event_drain_idle_seconds (default: 60)",
    )
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="latency-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(workdir / "airflow"))
    result = measure(
        workdir,
        sequential=args.sequential,
        idle_minutes=args.idle_minutes,
        burst=args.burst,
        burst_repositories=args.burst_repositories,
        drain_idle_seconds=args.drain_idle_seconds,
    )
    print("== event latency ==")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
