#!/usr/bin/env python
"""Benchmark: this engine's sync against ``skopeo sync`` and a raw ``curl`` floor.

Everything runs on loopback against real ``docker-registry`` (distribution 2.8) processes
without auth, under a temporary directory:

1. A primary is started and filled with a synthetic corpus: ``--repos`` repositories holding
   ``--tags`` tags in total (round-robin), about ``--unique-mib`` MiB of unique random layer
   bytes. A few base layer sets are shared across repositories (so cross-repository mounts
   matter), every tenth image is a multi-arch index (amd64 + arm64), and half of the
   repositories use Docker v2 media types, the other half OCI.
2. Each tool syncs the primary into its own fresh, empty secondary (timed):

   * engine: ``registry-replication sync --json --no-prune`` as a child process;
   * skopeo: ``skopeo sync --all --preserve-digests --src yaml --dest docker`` with a YAML
     source listing every repository (``[]`` = all tags), TLS verification off;
   * floor: every unique blob once, ``curl GET`` from the primary piped into a monolithic
     ``curl -X PUT -T -`` on the secondary (upload URL from ``POST /v2/<repo>/blobs/uploads/``),
     ``--parallelism`` pipelines at once (default 8, the engine's default ``--parallelism``).
     The floor copies no manifests and mounts nothing: it is the cost of moving the bytes.

3. Each tool then re-syncs against its already-synced secondary (the no-op, timed). The floor's
   no-op is the least a correct no-op must do: GET every repository's tag list and HEAD every
   tag's manifest on both registries (8 keep-alive curl processes per registry and pass).
4. A table compares wall time, bytes read from the primary, peak RSS and CPU time (GNU
   ``time``'s ``%M``, ``%U`` and ``%S`` of the child), the targets are checked, and the secondaries are verified with
   ``registry-replication verify`` (per-repository checksums of every tag's HEAD digest).

Bytes the primary *sent* are measured for every tool the same way: the growth of the primary
registry process's ``wchar`` (``/proc/<pid>/io``) minus the growth of its log file, i.e. the
bytes it wrote to sockets (HTTP headers included).

    .venv/bin/python benchmarks/sync_vs_skopeo.py               # 40 repos, 120 tags, 600 MiB
    .venv/bin/python benchmarks/sync_vs_skopeo.py --repos 40 --tags 1200 --unique-mib 100
    .venv/bin/python benchmarks/sync_vs_skopeo.py --quick       # smoke run, seconds

Exit status: 0 when every tool ran without error and every secondary verified in sync
(targets that were missed are reported, not failed); 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from replication_harness.floor import floor_noop, floor_sync, verify_blobs
from replication_harness.measure import (
    ENGINE,
    PrimaryMeter,
    Run,
    engine_sync,
    fmt_cpu,
    fmt_mib,
    fmt_ratio,
    fmt_rss,
    fmt_seconds,
    load_average,
    prepare_workdir,
    skopeo_sync,
    text_table,
    timed,
    verify,
    write_skopeo_yaml,
)
from replication_harness.registry import LocalRegistry
from replication_harness.synthetic import Corpus, generate, plan_corpus

TARGET_FLOOR_RATIO = 1.2
TARGET_NOOP_RATIO = 0.1
TARGET_NOOP_MIN_TAGS = 1000
TARGET_BYTES_RATIO = 1.05


def report(
    corpus: Corpus,
    full: dict[str, Run],
    noop: dict[str, Run],
    verified: dict[str, tuple[bool, str]],
    parallelism: int,
) -> None:
    print("\n== results ==")
    header = [
        "tool",
        "full sync",
        "/skopeo",
        "/floor",
        "no-op",
        "/skopeo no-op",
        "read from primary",
        "primary sent",
        "no-op primary sent",
        "peak RSS",
        "no-op peak RSS",
        "CPU",
        "no-op CPU",
        "verified",
    ]
    rows = []
    for tool in ("engine", "skopeo", "floor"):
        f, n = full.get(tool, Run()), noop.get(tool, Run())
        rows.append(
            [
                tool,
                fmt_seconds(f.seconds) + ("" if f.ok else " (FAILED)"),
                fmt_ratio(f.seconds, full.get("skopeo", Run()).seconds),
                fmt_ratio(f.seconds, full.get("floor", Run()).seconds),
                fmt_seconds(n.seconds) + ("" if n.ok or n.rc is None else " (FAILED)"),
                fmt_ratio(n.seconds, noop.get("skopeo", Run()).seconds),
                fmt_mib(f.bytes_read),
                fmt_mib(f.primary_sent),
                fmt_mib(n.primary_sent),
                fmt_rss(f.max_rss_kib),
                fmt_rss(n.max_rss_kib),
                fmt_cpu(f.cpu_seconds),
                fmt_cpu(n.cpu_seconds),
                verified.get(tool, (False, "not run"))[1],
            ]
        )
    print(text_table(header, rows))
    print(
        "\nread from primary: engine = its --json bytes_read_from_primary (blobs + manifests); "
        "floor = the unique blob bytes, by construction;\n  skopeo = n/a (it does not report it; "
        "see 'primary sent', measured for every tool from the primary's socket writes, headers "
        "included)."
    )
    print(
        f"floor: {parallelism} concurrent curl GET | curl PUT pipelines, the engine's default "
        "--parallelism (8 blob transfers in flight); blobs only, no manifests, no mounts, one "
        "process pipeline per blob."
    )
    print(
        "floor no-op: GET every tag list, then HEAD every tag's manifest, on both registries "
        f"at once ({parallelism} keep-alive curl processes per registry, each over a slice)."
    )
    print(
        "peak RSS: GNU time's %M (peak RSS of the largest process in the child's tree): "
        "engine = the CLI process, skopeo = skopeo, floor = the largest curl of any pipeline "
        "(8 pipelines x 2 curls run at once).\nCPU: user + system seconds of the tool's own "
        "processes (GNU time; floor: all its curl and sh processes), registries not included."
    )
    for tool in ("engine", "skopeo", "floor"):
        for label, run in (("full", full.get(tool)), ("no-op", noop.get(tool))):
            if run and run.error:
                print(f"\n{tool} {label} FAILED: {run.error}")
    for label, runs in (("full", full), ("no-op", noop)):
        if runs.get("engine") and runs["engine"].note:
            print(f"engine {label} counts: {runs['engine'].note}")

    print("\n== targets ==")
    e, fl = full.get("engine", Run()), full.get("floor", Run())
    en, sn = noop.get("engine", Run()), noop.get("skopeo", Run())

    def verdict(value: float | None, limit: float, applicable: bool = True) -> str:
        if value is None or math.isnan(value):
            return "not measured"
        met = "MET" if value <= limit else "NOT MET"
        return (
            met if applicable else f"{met} (not applicable: needs >= {TARGET_NOOP_MIN_TAGS} tags)"
        )

    floor_ratio = e.seconds / fl.seconds if fl.seconds and not math.isnan(fl.seconds) else None
    noop_ratio = en.seconds / sn.seconds if sn.seconds and not math.isnan(sn.seconds) else None
    bytes_ratio = e.bytes_read / corpus.unique_bytes if e.bytes_read is not None else None
    print(
        f"full sync within {TARGET_FLOOR_RATIO}x of the floor: "
        f"{fmt_ratio(e.seconds, fl.seconds)} -> {verdict(floor_ratio, TARGET_FLOOR_RATIO)}"
    )
    print(
        f"no-op re-sync <= {TARGET_NOOP_RATIO}x skopeo's at >= {TARGET_NOOP_MIN_TAGS} tags "
        f"({corpus.tags} tags): {fmt_ratio(en.seconds, sn.seconds)} -> "
        f"{verdict(noop_ratio, TARGET_NOOP_RATIO, corpus.tags >= TARGET_NOOP_MIN_TAGS)}"
    )
    print(
        f"bytes read <= {TARGET_BYTES_RATIO}x unique missing bytes: "
        f"{fmt_mib(e.bytes_read)} / {fmt_mib(corpus.unique_bytes)} = "
        f"{fmt_ratio(e.bytes_read, corpus.unique_bytes)} -> {verdict(bytes_ratio, TARGET_BYTES_RATIO)}"
        f" (manifests add {corpus.manifest_bytes / 1024:.0f} KiB)"
    )


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repos", type=int, default=40)
    parser.add_argument("--tags", type=int, default=120, help="tags in total, round-robin")
    parser.add_argument("--unique-mib", type=float, default=600.0)
    parser.add_argument(
        "--base-sets",
        type=int,
        default=0,
        help="shared base layer sets (default: repos // 3, between 1 and 4)",
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=8,
        help="floor pipelines in flight (default 8 = the engine's default)",
    )
    parser.add_argument("--threads", type=int, default=8, help="threads pushing the corpus")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 repos, 6 tags, 4 MiB (overrides the sizes)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep registries' storage here (default: temp)"
    )
    parser.add_argument("--keep", action="store_true", help="do not delete the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.repos, args.tags, args.unique_mib = 3, 6, 4.0
    if args.repos < 1 or args.tags < args.repos:
        parser.error("need --repos >= 1 and --tags >= --repos")
    args.base_sets = args.base_sets or max(1, min(4, args.repos // 3))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops registries
    for tool in ("skopeo", "curl", "docker-registry"):
        if not shutil.which(tool):
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    workdir = prepare_workdir(args.workdir, prefix="sync-vs-skopeo-")
    logs = workdir / "logs"
    registries: list[LocalRegistry] = []

    def start(name: str) -> LocalRegistry:
        registry = LocalRegistry(workdir / name, name=name)
        registries.append(registry)
        return registry.start()

    full: dict[str, Run] = {}
    noop: dict[str, Run] = {}
    verified: dict[str, tuple[bool, str]] = {}
    try:
        primary = start("primary")
        print(
            f"load average {load_average()}; work directory {workdir}; engine {ENGINE}; "
            f"{subprocess.run(['skopeo', '--version'], capture_output=True, text=True).stdout.strip()}"
        )
        corpus = plan_corpus(args.repos, args.tags, args.unique_mib, args.base_sets, args.seed)
        generate(primary, corpus, args.threads)
        print(
            f"corpus: {len(corpus.repositories)} repositories, {corpus.tags} tags "
            f"({corpus.indexes} multi-arch indexes), {corpus.manifests} manifests "
            f"({corpus.manifest_bytes / 1024:.0f} KiB), {args.base_sets} shared base layer sets\n"
            f"corpus: {len(corpus.blobs)} unique blobs, {fmt_mib(corpus.unique_bytes)} unique bytes "
            f"({fmt_mib(corpus.logical_bytes)} counting each repository's copy, "
            f"{len(corpus.repo_blobs)} repository-blob pairs); pushed in {corpus.seconds:.1f}s"
        )
        meter = PrimaryMeter(primary)
        skopeo_yaml = workdir / "skopeo-source.yaml"
        write_skopeo_yaml(primary, corpus, skopeo_yaml)

        for tool in ("engine", "skopeo", "floor"):
            secondary = start(f"secondary-{tool}")
            print(
                f"\n[{tool}] full sync into an empty secondary at {secondary.url} ...", flush=True
            )
            if tool == "engine":
                go = partial(engine_sync, primary, secondary, logs / "engine-full.log")
                again = partial(engine_sync, primary, secondary, logs / "engine-noop.log")
            elif tool == "skopeo":
                go = partial(skopeo_sync, skopeo_yaml, secondary, logs / "skopeo-full.log")
                again = partial(skopeo_sync, skopeo_yaml, secondary, logs / "skopeo-noop.log")
            else:
                go = partial(floor_sync, primary, secondary, corpus, args.parallelism, logs)
                again = partial(floor_noop, primary, secondary, corpus, args.parallelism, logs)
            full[tool] = timed(meter, go)
            print(
                f"[{tool}] full sync: {fmt_seconds(full[tool].seconds)}"
                + (f" FAILED: {full[tool].error}" if full[tool].error else ""),
                flush=True,
            )
            if tool == "floor":
                verified[tool] = verify_blobs(secondary, corpus)
            else:
                verified[tool] = verify(primary, secondary, logs / f"{tool}-verify.log")
            print(f"[{tool}] verify: {verified[tool][1]}", flush=True)
            noop[tool] = timed(meter, again)
            print(
                f"[{tool}] no-op re-sync: {fmt_seconds(noop[tool].seconds)}"
                + (f" FAILED: {noop[tool].error}" if noop[tool].error else ""),
                flush=True,
            )
            secondary.stop()  # frees its memory and CPU for the next tool

        report(corpus, full, noop, verified, args.parallelism)
        ok = all(r.ok for r in [*full.values(), *noop.values()]) and all(
            v[0] for v in verified.values()
        )
        print(f"\nload average at the end: {load_average()}")
        print(
            f"\nresult: {'OK' if ok else 'FAILED'}; every secondary verified: "
            f"{'yes' if all(v[0] for v in verified.values()) else 'NO'}"
        )
        return 0 if ok else 1
    finally:
        for registry in registries:
            registry.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
