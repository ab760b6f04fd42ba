"""An event worker that a test can kill: claims, replicates and acknowledges events the way
``registry_events`` does, until the queue holds nothing it may claim.

An event whose id is ``--poison`` stands for a push that kills its worker (out of memory, a
crash): the worker SIGKILLs itself when a claim hands it that event, mid-batch, before any
event of the batch is acknowledged.

    python -m replication_harness.event_worker --store URL --primary JSON --secondary JSON \
        --poison ID --max-attempts 10 --lease-seconds 1
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from registry_replication.engine.leases import Leases
from registry_replication.engine.realtime import replicate_events
from registry_replication.outcomes import EventStatus
from registry_replication.settings import current
from registry_replication.store import Store
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    for name in ("--store", "--primary", "--secondary", "--poison"):
        parser.add_argument(name, required=True)
    parser.add_argument("--max-attempts", type=int, default=10)
    parser.add_argument("--lease-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    store = Store(args.store)
    primary = RegistryClient(RegistryConfig.from_connection(args.primary))
    secondary = RegistryClient(RegistryConfig.from_connection(args.secondary), writable=True)
    secondary_id = current().secondaries[0]
    with Leases(store, secondary_id, ttl_seconds=args.lease_seconds) as leases:
        leases.keep_alive()
        while True:
            store.queue.dead_letter_lost(secondary_id, args.max_attempts)
            owner, claimed = store.queue.claim(
                secondary_id,
                lease_seconds=leases.ttl,
                owner=leases.owner,
                max_attempts=args.max_attempts,
            )
            if not claimed:
                waiting = store.queue.stats(secondary_id)["counts"]
                if not waiting[EventStatus.PENDING] and not waiting[EventStatus.PROCESSING]:
                    return 0
                time.sleep(0.2)  # leases of a killed worker's events still running
                continue
            print("claimed", ",".join(sorted(e.id for e in claimed)), flush=True)
            if any(e.id == args.poison for e in claimed):
                os.kill(os.getpid(), signal.SIGKILL)
            outcomes = replicate_events(primary, secondary, claimed, leases=leases)
            store.queue.complete(
                secondary_id, owner, [i for i, error in outcomes.items() if error is None]
            )
            for event_id, error in outcomes.items():
                if error is not None:
                    store.queue.retry_later(
                        secondary_id, owner, [event_id], error, max_attempts=args.max_attempts
                    )


if __name__ == "__main__":
    sys.exit(main())
