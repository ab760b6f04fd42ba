#!/usr/bin/env python
"""Scale benchmark: N tags over R repositories, the CLI and ``registry_reconcile`` side by side.

1. A primary (``docker-registry``, no auth, loopback) is filled with ``--tags`` distinct
   manifests over ``--repos`` repositories, pushed concurrently over blobs shared within each
   repository (``replication_harness.synthetic.plan_scale_corpus``: N tags cost N manifest
   ``PUT``\\ s). With ``--workdir``, a primary already filled with the same corpus is reused
   (``--generate-only`` fills one and stops).
2. In one run, each timed as a child process under GNU ``time`` (wall time, peak RSS):

   * CLI ``registry-replication sync`` full, into an empty secondary, then its no-op
     (``--no-cli``: skipped, with the skopeo runs and the floors), each followed at once by
     its floor, so that each ratio is of two runs under the same load;
   * ``skopeo sync`` no-op against that same, synced secondary (digests are preserved, so it
     only checks every tag), and ``skopeo sync`` full into an empty secondary of its own
     (``--no-skopeo``: skipped);
   * the full-copy floor into another empty secondary: each repository's blobs uploaded once,
     then a manifest ``GET`` from the primary and a ``PUT`` to the secondary per tag, by a bare
     ``http.client`` over 16 keep-alive connections (``floor.floor_full_copy``); the full
     runs' ratios are to it;
   * ``airflow dags test registry_reconcile`` with an empty scope (Airflow's fixed per-run
     cost), one tag into an empty secondary of its own (the fixed cost of a full sync: every
     task runs once), full into a second empty secondary, then its no-op (``--no-dag``:
     skipped).

   ``airflow dags test`` runs every task in one process: its peak RSS bounds each task's, and
   the process's RSS, sampled while each task instance runs, is that task's peak (an upper
   bound: memory a task freed may still be held). For each DAG run: the largest XCom value it
   wrote (from the metadata DB) and the bytes of its snapshot files (and of all its artifacts)
   in ``artifacts_path``.

    .venv/bin/python benchmarks/scale.py --tags 5000 --repos 10
    .venv/bin/python benchmarks/scale.py --tags 100000 --repos 100 --workdir /tmp/scale100k
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from registry_replication.settings import current
from registry_replication.store import Store
from registry_replication.store.record import TagRecord
from replication_harness.floor import floor_full_copy, floor_primary_noop
from replication_harness.measure import (
    ENGINE,
    PrimaryMeter,
    Run,
    airflow_env,
    dag_run,
    engine_sync,
    fmt_mib,
    fmt_rss,
    fmt_seconds,
    fresh_airflow,
    load_average,
    markdown,
    prepare_workdir,
    skopeo_sync,
    timed,
    write_skopeo_yaml,
)
from replication_harness.registry import LocalRegistry
from replication_harness.synthetic import ensure_generated, plan_scale_corpus

EMPTY_SCOPE = {"include": ["no-such-repository/*"]}
# Rows compared with the full-copy floor.
FULL_RUNS = ("CLI full", "skopeo sync full", "floor: full copy", "registry_reconcile full")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--repos", type=int, default=10)
    parser.add_argument("--unique-mib", type=float, default=100.0)
    parser.add_argument("--base-sets", type=int, default=4)
    parser.add_argument("--threads", type=int, default=16, help="threads pushing the corpus")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workdir", type=Path, help="kept; a primary there holding the same corpus is reused"
    )
    parser.add_argument(
        "--generate-only", action="store_true", help="fill the primary in --workdir and stop"
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI and skopeo runs")
    parser.add_argument("--no-skopeo", action="store_true", help="skip the skopeo runs")
    parser.add_argument("--no-dag", action="store_true", help="skip the registry_reconcile runs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = prepare_workdir(args.workdir, prefix="scale-")
    logs = workdir / "logs"
    registries: list[LocalRegistry] = []

    def start(name: str, fresh: bool = True) -> LocalRegistry:
        if fresh:
            shutil.rmtree(workdir / name, ignore_errors=True)
        registry = LocalRegistry(workdir / name, name=name)
        registries.append(registry)
        return registry.start()

    rows: list[tuple[str, Run]] = []
    task_rows: list[list[str]] = []

    def record(name: str, run: Run) -> Run:
        rows.append((name, run))
        print(
            f"[{name}] {fmt_seconds(run.seconds)}, peak RSS {fmt_rss(run.max_rss_kib)}"
            + (f", {run.note}" if run.note else "")
            + (f" FAILED: {run.error}" if run.error else ""),
            flush=True,
        )
        return run

    def record_dag(name: str, conf: dict, run_env: dict[str, str] | None = None) -> None:
        per_task: list[list[str]] = []

        def one() -> Run:
            run, rows = dag_run(run_env or env, conf, logs / f"{name.replace(' ', '-')}.log")
            per_task.extend(rows)
            return run

        record(name, timed(meter, one))
        task_rows.extend([[name, *row] for row in per_task])

    try:
        primary = start("primary", fresh=False)
        corpus = plan_scale_corpus(
            args.repos, args.tags, args.unique_mib, args.base_sets, args.seed
        )
        pushed = ensure_generated(primary, corpus, args.threads)
        print(
            f"corpus: {corpus.tags} tags in {len(corpus.repositories)} repositories, "
            f"{corpus.manifests} manifests, {len(corpus.blobs)} unique blobs "
            f"({fmt_mib(corpus.unique_bytes)}); "
            + (f"pushed in {corpus.seconds:.1f}s" if pushed else f"reused from {workdir}")
            + f"; engine {ENGINE}",
            flush=True,
        )
        if args.generate_only:
            return 0

        meter = PrimaryMeter(primary)
        if not args.no_cli:
            cli = start("secondary-cli")
            # A fresh secondary, a fresh store: a record kept in a reused --workdir would make
            # the primary's listing conditional on digests from an earlier run.
            Path(os.environ["REGISTRY_REPLICATION_DB_URL"].removeprefix("sqlite:///")).unlink(
                missing_ok=True
            )
            record("CLI full", timed(meter, engine_sync, primary, cli, logs / "cli-full.log"))
            # Right after the CLI's full sync, so that the ratio of the two is measured under
            # the same load.
            copied = start("secondary-floor")
            record("floor: full copy", timed(meter, floor_full_copy, primary, copied, corpus, 16))
            copied.stop()
            record("CLI no-op", timed(meter, engine_sync, primary, cli, logs / "cli-noop.log"))
            # The least a correct no-op asks of the primary, by the barest client: what is left
            # of a no-op once the client costs next to nothing. The conditional one uses the
            # CLI's record, as the CLI does. Right after the CLI's no-op, as above.
            record("floor: primary HEADs", timed(meter, floor_primary_noop, primary, corpus, 16))
            known = {
                pair: d.digest
                for pair, d in TagRecord(Store(), current().secondaries[0])
                .descriptors(corpus.repositories)
                .items()
            }
            record(
                "floor: primary conditional HEADs",
                timed(meter, floor_primary_noop, primary, corpus, 16, known),
            )
            if not args.no_skopeo:
                skopeo_yaml = workdir / "skopeo-source.yaml"
                write_skopeo_yaml(primary, corpus, skopeo_yaml)
                record(
                    "skopeo sync no-op",
                    timed(meter, skopeo_sync, skopeo_yaml, cli, logs / "skopeo-noop.log"),
                )
                copied = start("secondary-skopeo")
                record(
                    "skopeo sync full",
                    timed(meter, skopeo_sync, skopeo_yaml, copied, logs / "skopeo-full.log"),
                )
                copied.stop()
            cli.stop()

        if not args.no_dag:
            dag = start("secondary-dag")
            env = fresh_airflow(workdir, primary, dag)
            record_dag("registry_reconcile empty scope", EMPTY_SCOPE)
            # One tag into an empty secondary of its own (and a store of its own): every task runs
            # once, so this is the DAG's fixed cost for a full sync.
            one = start("secondary-dag-one")
            (workdir / "replication-one.db").unlink(missing_ok=True)
            first = corpus.specs[0]
            record_dag(
                "registry_reconcile one tag",
                {"repositories": [first.repository], "tags": re.escape(first.tag)},
                {
                    **airflow_env(workdir, primary, one),
                    "REGISTRY_REPLICATION_DB_URL": f"sqlite:///{workdir / 'replication-one.db'}",
                },
            )
            one.stop()
            record_dag("registry_reconcile full", {})
            record_dag("registry_reconcile no-op", {})

        by_name = dict(rows)
        print(
            f"\n{corpus.tags} tags, {len(corpus.repositories)} repositories, "
            f"load average {load_average()}\n"
        )
        skopeo_noop = by_name["skopeo sync no-op"].seconds if "skopeo sync no-op" in by_name else 0
        floor = by_name["floor: full copy"].seconds if "floor: full copy" in by_name else 0
        print(
            markdown(
                [
                    "run",
                    "wall",
                    "vs skopeo no-op",
                    "vs full-copy floor",
                    "peak RSS",
                    "primary CPU",
                    "notes",
                ],
                [
                    [
                        name,
                        fmt_seconds(run.seconds),
                        f"{run.seconds / skopeo_noop:.3f}x" if skopeo_noop and run.seconds else "-",
                        f"{run.seconds / floor:.2f}x"
                        if floor and run.seconds and name in FULL_RUNS
                        else "-",
                        fmt_rss(run.max_rss_kib),
                        "-"
                        if run.primary_cpu_seconds is None
                        else f"{run.primary_cpu_seconds:.1f}s",
                        (run.note or "") + (f" FAILED: {run.error}" if run.error else ""),
                    ]
                    for name, run in rows
                ],
            )
        )
        print(
            "\nper task (peak RSS: the `airflow dags test` process while the task ran, "
            "sampled every 0.2 s; all map indexes of a mapped task together)\n"
        )
        print(markdown(["run", "task", "instances", "time", "peak RSS", "largest XCom"], task_rows))
        seconds = {name: run.seconds for name, run in rows}
        fixed = seconds.get("registry_reconcile empty scope")
        noop = seconds.get("registry_reconcile no-op")
        cli_noop = seconds.get("CLI no-op")
        floors = [by_name.get(f"floor: primary {kind}HEADs") for kind in ("", "conditional ")]
        if cli_noop and all(f and f.ok for f in floors):
            print(
                f"\nCLI no-op {cli_noop:.2f}s vs the primary's floor: "
                f"{cli_noop / floors[0].seconds:.2f}x the HEADs', "
                f"{cli_noop / floors[1].seconds:.2f}x the conditional HEADs'"
            )
        if skopeo_noop and all(f and f.ok for f in floors):
            print(
                f"\nthe primary's floor (tag lists + a HEAD per tag, bare http.client): "
                f"{floors[0].seconds:.2f}s = {floors[0].seconds / skopeo_noop:.3f}x skopeo's "
                f"no-op; conditional {floors[1].seconds:.2f}s = "
                f"{floors[1].seconds / skopeo_noop:.3f}x"
            )
        if fixed and noop and cli_noop:
            print(
                f"\nDAG no-op {noop:.1f}s vs CLI no-op + Airflow's fixed cost "
                f"{cli_noop:.1f} + {fixed:.1f} = {cli_noop + fixed:.1f}s"
            )
        full, cli_full = seconds.get("registry_reconcile full"), seconds.get("CLI full")
        one_tag = seconds.get("registry_reconcile one tag")
        if cli_full and floor:
            print(
                f"\nfull sync vs the full-copy floor {floor:.1f}s: CLI {cli_full:.1f}s"
                f" = {cli_full / floor:.2f}x"
            )
        if cli_full and full and one_tag:
            print(
                f"DAG full {full:.1f}s vs CLI full + the one-tag DAG's fixed cost "
                f"{cli_full:.1f} + {one_tag:.1f} = {cli_full + one_tag:.1f}s "
                f"({full / (cli_full + one_tag):.2f}x)"
            )
        return 0 if all(run.ok for _, run in rows) else 1
    finally:
        for registry in registries:
            registry.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
