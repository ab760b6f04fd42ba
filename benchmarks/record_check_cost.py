#!/usr/bin/env python
"""Cost of the record check that every cheap run makes, against the cheap no-op it is part of.

A cheap run trusts the record of the secondary's tags only after checking it
(``engine.record_check.check_record``): the secondary's catalog, then a rotating sample of recorded
tags per repository (at least one, 1%), each ``HEAD``ed. This runs the cheap CLI no-op
(``run_sync``, in-process, ``verify=tags``) ``--runs`` times on a synced secondary and times the
check inside each: its share of the no-op must stay within 10%.

The synced pair comes from ``benchmarks/scale.py --workdir``: its primary, and the secondary
and replication store its DAG runs left (``secondary-dag``, ``replication.db``); without them,
a secondary of its own is synced first (``secondary-sample``, ``sample.db``).

    .venv/bin/python benchmarks/scale.py --tags 5000 --repos 10 --workdir /tmp/scale5k --no-cli
    .venv/bin/python benchmarks/record_check_cost.py --workdir /tmp/scale5k
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa

from registry_replication.engine import secondary_listing
from registry_replication.engine.leases import Leases
from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.settings import current
from registry_replication.store import Store
from registry_replication.store.schema import recorded_verifications
from registry_replication.transport.client import RegistryClient
from replication_harness.measure import load_average
from replication_harness.registry import LocalRegistry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True, help="a scale.py workdir")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir: Path = args.workdir
    reused = (workdir / "secondary-dag").exists() and (workdir / "replication.db").exists()
    name, db = ("secondary-dag", "replication.db") if reused else ("secondary-sample", "sample.db")
    store = Store(f"sqlite:///{workdir / db}")
    checks: list[tuple[float, int, int]] = []  # (seconds, tags HEADed, catalog size)
    real_check = secondary_listing.check_record

    def timed_check(*args, **kwargs):
        started = time.monotonic()
        found = real_check(*args, **kwargs)
        checks.append((time.monotonic() - started, found.sampled, found.catalog))
        return found

    secondary_listing.check_record = timed_check
    # The record is the secondary's by its URL: a reused secondary listens where it did.
    with store.engine.connect() as conn:
        recorded = conn.execute(sa.select(recorded_verifications.c.registry).limit(1)).scalar()
    port = {"port": urlsplit(recorded).port} if reused and recorded else {}
    # A workdir from before several secondaries: its record is the CLI's secondary's.
    settings = current()
    store.secondaries.adopt_legacy(settings.secondaries, lambda _: None, settings.secondary_conn_id)
    with (
        LocalRegistry(workdir / "primary", name="primary") as primary,
        LocalRegistry(workdir / name, name=name, **port) as secondary,
        RegistryClient(primary.client_config()) as source,
        RegistryClient(secondary.client_config(), writable=True) as target,
        Leases(store, current().secondaries[0]) as leases,
    ):
        if not reused:
            started = time.monotonic()
            run_sync(source, target, SyncOptions(verify="tags"), leases=leases)
            print(f"synced a secondary of its own in {time.monotonic() - started:.0f}s")
        noops = []
        for _ in range(args.runs):
            started = time.monotonic()
            report = run_sync(source, target, SyncOptions(verify="tags"), leases=leases)
            noops.append(time.monotonic() - started)
            assert not report.failed and report.run_kind.kind == "cheap", report.run_kind.line()
            assert not report.plan.images, "not a no-op: the secondary is not in sync"
    listed = len(report.primary.tags)
    check = statistics.median(c[0] for c in checks)
    noop = statistics.median(noops)
    print(
        f"\n{listed} tags, {checks[-1][2]} repositories in the secondary's catalog, "
        f"{args.runs} runs, load average {load_average()}\n"
    )
    print("| run | median wall | share of the no-op |")
    print("|---|---|---|")
    print(f"| cheap no-op (CLI, in-process) | {noop:.2f} s | 100% |")
    print(
        f"| its record check: catalog + {checks[-1][1]} sampled HEADs | {check:.2f} s | "
        f"{check / noop:.1%} |"
    )


if __name__ == "__main__":
    main()
