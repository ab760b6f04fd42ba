#!/usr/bin/env python
"""Benchmark: a full sync to one secondary and to three in one run, against ``skopeo sync``
run once per secondary (issue 22).

On loopback, against real ``docker-registry`` (distribution 2.8) processes without auth: a
primary filled with the perf corpus (``synthetic.plan_corpus``: ``--repos`` repositories,
``--tags`` tags, about ``--unique-mib`` MiB of unique layers, shared base layers, multi-arch
indexes, Docker and OCI media types), then each case into fresh, empty secondaries:

* ``engine, 1 secondary``: ``registry-replication sync --no-prune``;
* ``engine, 3 secondaries``: one ``registry-replication sync --secondary a=... --secondary
  b=... --secondary c=...``: the primary listed once and each blob the three lack read once;
* ``skopeo x 3``: ``skopeo sync --all --preserve-digests`` once per secondary, one after
  another (skopeo copies to one destination);
* ``registry_reconcile (dags test) -> 3``: one ``airflow dags test registry_reconcile`` with the
  three configured as ``registry_secondary``, ``registry_eu`` and ``registry_ap``
  (``secondary_conn_ids``): each blob the three lack read once by ``fanout_blobs[*]``, each
  group's ``copy_blobs`` copying only what the fan-out did not (``--no-dag``: skipped). Its wall
  time includes Airflow's own (the metadata DB, parsing the DAG, every task's start); ``dags
  test`` runs every task in one process, so that process's peak RSS bounds each task's, and
  the peak while each task ran is printed per task.

The primary's **blob bytes served** are what the primary itself counts
(``registry_http_response_size_bytes`` for its blob handler, on its debug listener), compared
with the corpus's unique blob bytes; "primary sent" is every byte it wrote to sockets (its
``wchar`` minus its log's growth: manifests, headers and listings included). Every secondary is
then verified with ``registry-replication verify``. Peak RSS is the largest process of each
run's tree, as GNU ``time`` reports it (for ``skopeo x 3``: the largest of the three).

    .venv/bin/python benchmarks/secondaries.py            # the perf corpus (600 MiB)
    .venv/bin/python benchmarks/secondaries.py --quick    # smoke run, seconds

Exit status: 0 when every run (the DAG run included) succeeded and every secondary verified in
sync; 1 otherwise.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from replication_harness.measure import (
    PrimaryMeter,
    Run,
    dag_run,
    engine_sync_many,
    fmt_mib,
    fmt_ratio,
    fmt_rss,
    fmt_seconds,
    fresh_airflow,
    load_average,
    markdown,
    prepare_workdir,
    skopeo_sync,
    text_table,
    timed,
    verify,
    write_skopeo_yaml,
)
from replication_harness.registry import LocalRegistry
from replication_harness.synthetic import ensure_generated, plan_corpus

SITES = ("site_a", "site_b", "site_c")
# The DAG's connection ids for SITES, in order (the first is the DAG's default secondary).
CONN_IDS = ("registry_secondary", "registry_eu", "registry_ap")
TARGET_BYTES_RATIO = 1.2  # the primary's blob bytes for three secondaries, against unique bytes
TARGET_TASK_RSS = 1 << 30  # the peak RSS of each DAG task


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops registries
    workdir = prepare_workdir(args.workdir, prefix="secondaries-")
    logs = workdir / "logs"
    started: list[LocalRegistry] = []

    def start(name: str) -> LocalRegistry:
        registry = LocalRegistry(workdir / name, name=name)
        started.append(registry)
        return registry.start()

    def fresh(names: Sequence[str]) -> dict[str, LocalRegistry]:
        for name in names:
            subprocess.run(["rm", "-rf", str(workdir / name)], check=True)
        return {name: start(name) for name in names}

    rows: list[list[str]] = []
    task_rows: list[list[str]] = []  # the DAG run's, per task
    ok = True
    try:
        primary = start("primary")
        corpus = plan_corpus(args.repos, args.tags, args.unique_mib, args.base_sets, args.seed)
        ensure_generated(primary, corpus, args.threads)
        print(
            f"load average {load_average()}; corpus: {len(corpus.repositories)} repositories, "
            f"{corpus.tags} tags, {len(corpus.blobs)} unique blobs, "
            f"{fmt_mib(corpus.unique_bytes)} unique bytes; work directory {workdir}",
            flush=True,
        )
        meter = PrimaryMeter(primary)
        skopeo_yaml = workdir / "skopeo-source.yaml"
        write_skopeo_yaml(primary, corpus, skopeo_yaml)

        def case(label: str, names: Sequence[str], go: Callable[[dict[str, LocalRegistry]], Run]):
            nonlocal ok
            targets = fresh(names)
            # The store describes secondaries it has seen: each case starts from none.
            Path(workdir / "replication-cli.db").unlink(missing_ok=True)
            served = primary.served_bytes()
            run = timed(meter, go, targets)
            blob_bytes = primary.served_bytes() - served
            checks = [
                verify(primary, r, logs / f"{label}-{n}-verify.log") for n, r in targets.items()
            ]
            in_sync = all(good for good, _ in checks)
            ok = ok and run.ok and in_sync
            rows.append(
                [
                    label,
                    fmt_seconds(run.seconds) + ("" if run.ok else " (FAILED)"),
                    fmt_mib(blob_bytes),
                    fmt_ratio(blob_bytes, corpus.unique_bytes),
                    fmt_mib(run.primary_sent),
                    fmt_rss(run.max_rss_kib),
                    "yes" if in_sync else "; ".join(text for good, text in checks if not good),
                ]
            )
            print(f"[{label}] {rows[-1][1]}; {run.note or run.error or ''}", flush=True)
            for registry in targets.values():
                registry.stop()

        case(
            "engine, 1 secondary",
            SITES[:1],
            lambda t: engine_sync_many(primary, t, logs / "one.log"),
        )
        case(
            "engine, 3 secondaries",
            SITES,
            lambda t: engine_sync_many(primary, t, logs / "three.log"),
        )
        case("skopeo x 3", SITES, lambda t: skopeo_each(skopeo_yaml, t, logs))
        if args.dag:

            def reconcile(targets: dict[str, LocalRegistry]) -> Run:
                first, *others = targets.values()
                env = fresh_airflow(workdir, primary, first, **dict(zip(CONN_IDS[1:], others)))
                run, per_task = dag_run(env, {}, logs / "registry_reconcile.log")
                task_rows.extend(per_task)
                return run

            case("registry_reconcile (dags test) -> 3", SITES, reconcile)
    finally:
        for registry in started:
            registry.stop()

    print("\n== full sync: one primary, fresh secondaries ==")
    print(
        text_table(
            [
                "run",
                "wall",
                "primary blob bytes served",
                "/unique",
                "primary sent",
                "peak RSS",
                "every secondary in sync",
            ],
            rows,
        )
    )
    print(
        f"\nunique blob bytes: {fmt_mib(corpus.unique_bytes)}; target for three secondaries: "
        f"blob bytes served <= {TARGET_BYTES_RATIO}x unique"
        + (f"; each DAG task's peak RSS <= {fmt_rss(TARGET_TASK_RSS // 1024)}" if task_rows else "")
    )
    if task_rows:
        print(
            "\nregistry_reconcile per task (peak RSS: the `airflow dags test` process while the "
            "task ran, sampled every 0.2 s; all map indexes of a mapped task together; n/a: "
            "skipped, or over between two samples)\n"
        )
        print(markdown(["task", "instances", "time", "peak RSS", "largest XCom"], task_rows))
    return 0 if ok else 1


def skopeo_each(source_yaml: Path, targets: dict[str, LocalRegistry], logs: Path) -> Run:
    """``skopeo sync`` into each secondary in turn: one run's wall time and outcome."""
    whole = Run(rc=0, error=None)
    started = time.perf_counter()
    for name, registry in targets.items():
        run = skopeo_sync(source_yaml, registry, logs / f"skopeo-{name}.log")
        whole.max_rss_kib = max(whole.max_rss_kib or 0, run.max_rss_kib or 0) or None
        if not run.ok:
            whole.rc, whole.error = run.rc, f"{name}: {run.error}"
    whole.seconds = time.perf_counter() - started
    return whole


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repos", type=int, default=40)
    parser.add_argument("--tags", type=int, default=120, help="tags in total, round-robin")
    parser.add_argument("--unique-mib", type=float, default=600.0)
    parser.add_argument("--base-sets", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8, help="threads pushing the corpus")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 repos, 6 tags, 4 MiB")
    parser.add_argument("--workdir", type=Path, help="keep the registries here (default: temp)")
    parser.add_argument(
        "--no-dag",
        dest="dag",
        action="store_false",
        help="skip the registry_reconcile run (airflow dags test)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repos, args.tags, args.unique_mib, args.base_sets = 3, 6, 4.0, 1
    return args


if __name__ == "__main__":
    sys.exit(main())
