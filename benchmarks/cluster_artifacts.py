#!/usr/bin/env python
"""Where a cluster's run artifacts live: the replication store (the default) or a shared
directory, timed by ``registry_reconcile`` on the Celery cluster (``scripts/cluster``'s).

The primary holds ``--tags`` tags (``replication_harness.synthetic.plan_scale_corpus``, as
``benchmarks/scale.py``). For each way, in turn (``--rounds`` times): a fresh empty secondary,
an emptied replication store, a full reconcile, then its no-op; the run's time is the DAG run's
own (its ``start_date`` to ``end_date`` in Airflow). The shared directory is a local folder both
workers reach (they run on one machine), declared shared with ``artifacts_path_shared``.

    .venv/bin/python benchmarks/cluster_artifacts.py --tags 5000 --repos 10
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from registry_replication.store.schema import run_artifacts
from replication_harness.cluster import AirflowCluster
from replication_harness.measure import load_average, markdown, prepare_workdir
from replication_harness.registry import LocalRegistry
from replication_harness.synthetic import ensure_generated, plan_scale_corpus


def run_seconds(cluster: AirflowCluster, run_id: str) -> float:
    run = cluster.api("GET", f"dags/registry_reconcile/dagRuns/{run_id}")
    return (
        datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])
    ).total_seconds()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--repos", type=int, default=10)
    parser.add_argument("--unique-mib", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="kept; its primary is reused")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = prepare_workdir(args.workdir, prefix="cluster-artifacts-")
    registries: list[LocalRegistry] = []
    cluster = AirflowCluster(
        workdir / "cluster",
        env={
            "AIRFLOW__REGISTRY_REPLICATION__RECONCILE_SCHEDULE": "none",
            "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES": "0",
        },
    )
    shared = workdir / "shared-artifacts"
    ways = {
        "store": {},
        "shared directory": {
            "AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH": f"file://{shared}",
            "AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH_SHARED": "True",
        },
    }
    results: dict[str, dict[str, list[float]]] = {w: {"full": [], "no-op": []} for w in ways}
    try:
        primary = LocalRegistry(workdir / "primary", name="primary").start()
        registries.append(primary)
        corpus = plan_scale_corpus(args.repos, args.tags, args.unique_mib, 4, 1)
        ensure_generated(primary, corpus, 16)
        print(f"corpus: {corpus.tags} tags in {len(corpus.repositories)} repositories", flush=True)
        cluster.start()
        cluster.wait_ready()
        cluster.wait_for_dag("registry_reconcile")
        workers = list(cluster.worker_addresses())
        cluster.set_connection("registry_primary", primary.connection())
        for round_number in range(args.rounds):
            for way, settings in ways.items():
                cluster.restart_with(workers, **settings)
                cluster.wait_ready()
                secondary_dir = workdir / "secondary"
                shutil.rmtree(secondary_dir, ignore_errors=True)
                shutil.rmtree(shared, ignore_errors=True)
                secondary = LocalRegistry(secondary_dir, name="secondary").start()
                registries.append(secondary)
                cluster.set_connection("registry_secondary", secondary.connection())
                store = cluster.empty_store()
                for kind in ("full", "no-op"):
                    run_id = cluster.trigger("registry_reconcile")
                    state = cluster.wait_for_run("registry_reconcile", run_id, timeout=3600)
                    seconds = run_seconds(cluster, run_id)
                    with store.engine.connect() as conn:
                        stored = (
                            conn.execute(
                                run_artifacts.select().with_only_columns(run_artifacts.c.size)
                            )
                            .scalars()
                            .all()
                        )
                    print(
                        f"round {round_number + 1}, {way}, {kind}: {state} in {seconds:.1f}s "
                        f"({sum(s or 0 for s in stored)} artifact bytes in the store, "
                        f"load average {load_average()})",
                        flush=True,
                    )
                    if state != "success":
                        return 1
                    results[way][kind].append(seconds)
                secondary.stop()
                registries.remove(secondary)
        print(
            f"\n{corpus.tags} tags, {len(corpus.repositories)} repositories, "
            f"{args.rounds} rounds (median)\n"
        )
        print(
            markdown(
                ["artifacts in", "full reconcile", "no-op reconcile"],
                [
                    [
                        way,
                        *(f"{statistics.median(results[way][k]):.1f} s" for k in ("full", "no-op")),
                    ]
                    for way in ways
                ],
            )
        )
        return 0
    finally:
        cluster.stop()
        for registry in registries:
            registry.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
