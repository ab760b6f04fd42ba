#!/usr/bin/env python
"""Scale benchmark: N tags over R repositories, the CLI and ``registry_reconcile`` side by side.

1. A primary (``docker-registry``, no auth, loopback) is filled with ``--tags`` distinct
   manifests over ``--repos`` repositories, pushed concurrently over shared base layers (the
   corpus of ``sync_vs_skopeo.py``).
2. In one run, each timed as a child process under GNU ``time`` (wall time, peak RSS):

   * CLI ``registry-replication sync`` full, into an empty secondary, then its no-op;
   * ``skopeo sync`` no-op against that same, synced secondary (digests are preserved, so it
     only checks every tag; its full sync is ``sync_vs_skopeo.py``'s business);
   * ``airflow dags test registry_reconcile`` with an empty scope (Airflow's fixed per-run
     cost), full into a second empty secondary, then its no-op.

   ``airflow dags test`` runs every task in one process, so its peak RSS bounds each task's.
   For each DAG run: the largest XCom value it wrote (from the metadata DB) and the bytes of
   its snapshot files (and of all its artifacts) in ``artifacts_path``.

    .venv/bin/python benchmarks/scale.py --tags 5000 --repos 10
    .venv/bin/python benchmarks/scale.py --tags 100000 --repos 100
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sync_vs_skopeo import (  # noqa: E402 (a sibling script)
    ENGINE,
    Run,
    _mib,
    _rss,
    _s,
    engine_sync,
    generate,
    plan_corpus,
    run_child,
    skopeo_sync,
    write_skopeo_yaml,
)

from replication_harness.registry import LocalRegistry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
EMPTY_SCOPE = {"include": ["no-such-repository/*"]}


def markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows])


def airflow_env(workdir: Path, primary: LocalRegistry, secondary: LocalRegistry) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__REGISTRY_REPLICATION__RECONCILE_SCHEDULE": "none",
        "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES": "0",
        "AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH": f"file://{workdir / 'artifacts'}",
        "AIRFLOW_CONN_REGISTRY_PRIMARY": json.dumps(primary.connection()),
        "AIRFLOW_CONN_REGISTRY_SECONDARY": json.dumps(secondary.connection()),
        "REGISTRY_REPLICATION_DB_URL": f"sqlite:///{workdir / 'replication.db'}",
    }


def dag_run(env: dict[str, str], conf: dict, log_path: Path) -> Run:
    """``airflow dags test registry_reconcile`` with ``conf``; notes its XCom and storage."""
    run = run_child_env([AIRFLOW, "dags", "test", "registry_reconcile", "-c", json.dumps(conf)],
                        log_path, env)
    home = Path(env["AIRFLOW_HOME"])
    with sqlite3.connect(home / "airflow.db") as db:
        run_id, state = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = "
                                   "'registry_reconcile' ORDER BY id DESC LIMIT 1").fetchone()
        largest = db.execute("SELECT task_id, key, length(value) FROM xcom WHERE run_id = ? "
                             "ORDER BY length(value) DESC LIMIT 1", (run_id,)).fetchone()
    if state != "success":
        run.error = run.error or f"run {run_id} ended {state}"
    folders = [f for f in (Path(env["AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH"]
                                .removeprefix("file://")) / "registry_reconcile").iterdir()
               if f.name.endswith(re.sub(r"[^A-Za-z0-9._-]", "_", run_id))]
    files = [p for f in folders for p in f.iterdir()]
    snapshot_bytes = sum(p.stat().st_size for p in files if p.name.startswith("snapshot_"))
    run.note = (f"largest XCom {largest[2] if largest else 0} B"
                f" ({largest[0]}.{largest[1]})" if largest else "no XCom")
    run.note += f"; snapshots {snapshot_bytes} B, all artifacts {sum(p.stat().st_size for p in files)} B"
    return run


def run_child_env(argv: Sequence[str], log_path: Path, env: dict[str, str]) -> Run:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return run_child(argv, log_path, Run())
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--repos", type=int, default=10)
    parser.add_argument("--unique-mib", type=float, default=100.0)
    parser.add_argument("--base-sets", type=int, default=4)
    parser.add_argument("--threads", type=int, default=16, help="threads pushing the corpus")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # The CLI's own replication store (leases, the record of the secondary's tags): a store
    # left by an earlier run must not describe this run's fresh secondaries.
    os.environ["REGISTRY_REPLICATION_DB_URL"] = f"sqlite:///{workdir / 'replication-cli.db'}"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    registries: list[LocalRegistry] = []

    def start(name: str) -> LocalRegistry:
        registry = LocalRegistry(workdir / name, name=name)
        registries.append(registry)
        return registry.start()

    rows: list[tuple[str, Run]] = []

    def record(name: str, run: Run) -> Run:
        rows.append((name, run))
        print(f"[{name}] {_s(run.seconds)}, peak RSS {_rss(run.max_rss_kib)}"
              + (f", {run.note}" if run.note else "")
              + (f" FAILED: {run.error}" if run.error else ""), flush=True)
        return run

    try:
        primary = start("primary")
        corpus = plan_corpus(args.repos, args.tags, args.unique_mib, args.base_sets, args.seed)
        generate(primary, corpus, args.threads)
        print(f"corpus: {corpus.tags} tags in {len(corpus.repositories)} repositories, "
              f"{corpus.manifests} manifests, {len(corpus.blobs)} unique blobs "
              f"({_mib(corpus.unique_bytes)}); pushed in {corpus.seconds:.1f}s; engine {ENGINE}",
              flush=True)

        cli = start("secondary-cli")
        record("CLI full", engine_sync(primary, cli, logs / "cli-full.log"))
        record("CLI no-op", engine_sync(primary, cli, logs / "cli-noop.log"))
        skopeo_yaml = workdir / "skopeo-source.yaml"
        write_skopeo_yaml(primary, corpus, skopeo_yaml)
        record("skopeo sync no-op", skopeo_sync(skopeo_yaml, cli, logs / "skopeo-noop.log"))
        cli.stop()

        dag = start("secondary-dag")
        env = airflow_env(workdir, primary, dag)
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
        record("registry_reconcile empty scope",
               dag_run(env, EMPTY_SCOPE, logs / "dag-empty.log"))
        record("registry_reconcile full", dag_run(env, {}, logs / "dag-full.log"))
        record("registry_reconcile no-op", dag_run(env, {}, logs / "dag-noop.log"))

        by_name = dict(rows)
        print(f"\n{corpus.tags} tags, {len(corpus.repositories)} repositories, "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
              f"{os.cpu_count()} CPUs\n")
        skopeo_noop = by_name["skopeo sync no-op"].seconds
        print(markdown(["run", "wall", "vs skopeo no-op", "peak RSS", "notes"], [
            [name, _s(run.seconds),
             f"{run.seconds / skopeo_noop:.3f}x" if skopeo_noop and run.seconds else "-",
             _rss(run.max_rss_kib), (run.note or "") + (f" FAILED: {run.error}" if run.error
                                                         else "")]
            for name, run in rows]))
        fixed = by_name["registry_reconcile empty scope"].seconds
        noop = by_name["registry_reconcile no-op"].seconds
        cli_noop = by_name["CLI no-op"].seconds
        if fixed and noop and cli_noop:
            print(f"\nDAG no-op {noop:.1f}s vs CLI no-op + Airflow's fixed cost "
                  f"{cli_noop:.1f} + {fixed:.1f} = {cli_noop + fixed:.1f}s")
        return 0 if all(run.ok for _, run in rows) else 1
    finally:
        for registry in registries:
            registry.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
