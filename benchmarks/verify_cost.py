#!/usr/bin/env python
"""Cost of deep verification at scale: ``blobs`` and ``content`` on a synced secondary.

A primary is filled with ``--tags`` tags over ``--repos`` repositories
(``synthetic.plan_scale_corpus``), replicated once, then each level is run over the whole
replica through a counting proxy in front of the secondary: wall time, requests by kind, and
the bytes the secondary sent, next to the distinct (repository, blob) pairs and manifests
(``blobs`` must cost at most one HEAD per pair and one GET per manifest).

    .venv/bin/python benchmarks/verify_cost.py --tags 5000 --repos 10
    .venv/bin/python benchmarks/verify_cost.py --perf
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from registry_replication.engine import verify as verifying
from registry_replication.engine.leases import Leases
from registry_replication.engine.snapshot import take_snapshot
from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.outcomes import VerifyLevel
from registry_replication.settings import current
from registry_replication.store import Store
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from replication_harness import synthetic
from replication_harness.registry import LocalRegistry
from replication_harness.servers import FaultProxy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--repos", type=int, default=10)
    parser.add_argument("--unique-mib", type=float, default=50.0)
    parser.add_argument(
        "--perf",
        action="store_true",
        help="the perf corpus of sync_vs_skopeo.py instead (40 repositories, "
        "120 tags, multi-arch indexes, 600 MiB planned)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="verify-cost-"))
    store = Store(f"sqlite:///{work / 'store.db'}")
    with (
        LocalRegistry(work / "primary", name="primary") as primary,
        LocalRegistry(work / "secondary", name="secondary") as secondary,
        FaultProxy(secondary.url) as proxy,
    ):
        corpus = (
            synthetic.plan_corpus(40, 120, 600.0, 4, 1)
            if args.perf
            else synthetic.plan_scale_corpus(args.repos, args.tags, args.unique_mib, 4, 1)
        )
        started = time.monotonic()
        synthetic.generate(primary, corpus, 16)
        print(
            f"corpus: {corpus.tags} tags in {len(corpus.repositories)} repositories, "
            f"{corpus.unique_bytes / (1 << 20):.0f} MiB unique, pushed in "
            f"{time.monotonic() - started:.0f}s"
        )
        source = RegistryClient(primary.client_config())
        with Leases(store, current().secondaries[0]) as leases:
            started = time.monotonic()
            run_sync(
                source,
                RegistryClient(secondary.client_config(), writable=True),
                SyncOptions(verify="tags"),
                leases=leases,
            )
            print(f"replicated in {time.monotonic() - started:.0f}s")
            listing = take_snapshot(source)
            images = verifying.images_of(listing)
            print(
                "| level | seconds | HEAD blob | GET manifest | GET blob | other | bytes from "
                "the secondary | (repository, blob) pairs | manifests | problems |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            for level in (VerifyLevel.BLOBS, VerifyLevel.CONTENT):
                target = RegistryClient(_through(secondary, proxy.url), writable=True)
                proxy.log.clear()
                report = verifying.deep_verify(source, target, images, level, leases=leases)
                kinds = Counter(_kind(method, path) for method, path, _ in proxy.log)
                print(
                    f"| {level} | {report.seconds:.1f} | {kinds['HEAD blob']} | "
                    f"{kinds['GET manifest']} | {kinds['GET blob']} | "
                    f"{sum(kinds.values()) - kinds['HEAD blob'] - kinds['GET manifest'] - kinds['GET blob']} | "
                    f"{target.bytes_read / (1 << 20):.1f} MiB | {report.blobs_checked} | "
                    f"{report.manifests_checked} | {len(report.problems)} |"
                )


def _through(registry: LocalRegistry, url: str) -> RegistryConfig:
    return RegistryConfig.from_connection({**registry.connection(), "host": url})


def _kind(method: str, path: str) -> str:
    kind = "blob" if "/blobs/" in path else "manifest" if "/manifests/" in path else "other"
    return f"{method} {kind}"


if __name__ == "__main__":
    main()
