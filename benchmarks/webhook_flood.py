"""Notification flood: thousands of events from concurrent senders against the webhook.

The webhook runs as Airflow's API server would serve it (uvicorn, in its own process) on an
SQLite event store (WAL, synchronous=FULL). Each sender posts envelopes the way distribution
does, with a share of redeliveries (the same envelope again) and of events out of grammar
(``Foo/app``, stored as rejected). Afterwards the store is read back: every accepted event
must be there exactly once, none lost, each in the right state.

    .venv/bin/python benchmarks/webhook_flood.py                  # 20 senders, 10000 events
    .venv/bin/python benchmarks/webhook_flood.py --events 2000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
import sqlalchemy as sa

from registry_replication.outcomes import EventStatus
from registry_replication.store import Store
from registry_replication.store.schema import ACCEPTED, events
from registry_replication.web.notifications import ENVELOPE_MEDIA_TYPE
from replication_harness.registry import free_port

SECRET = "flood-benchmark-secret-0123456789abcdef"
DIGEST = "sha256:" + "d" * 64


def event(sender: int, n: int, *, odd: bool) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "timestamp": "2026-11-30T02:00:00Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "repository": "Foo/app" if odd else f"group/sender-{sender}",
            "tag": f"v{n}",
            "digest": DIGEST,
            "size": 1234,
        },
    }


def serve(db_url: str, port: int, log: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REGISTRY_NOTIFICATION_SECRET": SECRET,
        "REGISTRY_REPLICATION_DB_URL": db_url,
    }
    Store(db_url)  # the schema, before the first request
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "registry_replication.web.webhook:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the webhook did not start; see {log}")


def flood(
    url: str, *, senders: int, events_total: int, batch: int, odd_every: int, redeliver_every: int
) -> dict:
    """Post from ``senders`` threads; returns what was accepted and each request's latency."""
    per_sender = events_total // senders
    accepted: list[str] = []
    odd_ids: list[str] = []
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(senders + 1)

    def send(sender: int) -> None:
        session = requests.Session()
        headers = {"Content-Type": ENVELOPE_MEDIA_TYPE, "Authorization": SECRET}
        mine, odd, times, errors = [], [], [], []
        start.wait()
        for first in range(0, per_sender, batch):
            envelope = [
                event(sender, n, odd=odd_every > 0 and n % odd_every == 0)
                for n in range(first, min(first + batch, per_sender))
            ]
            body = json.dumps({"events": envelope}).encode()
            deliveries = 2 if redeliver_every and (first // batch) % redeliver_every == 0 else 1
            for _ in range(deliveries):
                began = time.perf_counter()
                try:
                    response = session.post(url, data=body, headers=headers, timeout=60)
                except requests.RequestException as exc:
                    errors.append(type(exc).__name__)
                    continue
                times.append(time.perf_counter() - began)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    continue
                ids = [e["id"] for e in envelope]
                mine += ids
                odd += [e["id"] for e in envelope if e["target"]["repository"] == "Foo/app"]
        with lock:
            accepted.extend(mine)
            odd_ids.extend(odd)
            latencies.extend(times)
            failures.extend(errors)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    return {
        "accepted": accepted,
        "odd": set(odd_ids),
        "latencies": latencies,
        "failures": failures,
        "seconds": seconds,
    }


def check(db_url: str, accepted: list[str], odd: set[str]) -> dict:
    """Every accepted event stored exactly once, in the right state; nothing else stored."""
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.id, events.c.status)).all()
    stored = [row.id for row in rows]
    status = {row.id: row.status for row in rows}
    unique = set(accepted)
    return {
        "stored_rows": len(stored),
        "unique_accepted": len(unique),
        "duplicate_rows": len(stored) - len(set(stored)),
        "lost": len(unique - set(stored)),
        "unexpected": len(set(stored) - unique),
        "wrong_state": sum(
            status.get(i) != (EventStatus.REJECTED if i in odd else ACCEPTED) for i in unique
        ),
        "rejected": sum(1 for s in status.values() if s == EventStatus.REJECTED),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--events", type=int, default=10_000, help="events in all")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="events per envelope (distribution sends one per envelope)",
    )
    parser.add_argument(
        "--odd-every", type=int, default=10, help="every Nth event names Foo/app (0: none)"
    )
    parser.add_argument(
        "--redeliver-every",
        type=int,
        default=20,
        help="every Nth envelope is delivered twice (0: never)",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--workdir", type=Path, help="where the event store goes (default: temp)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="webhook-flood-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{workdir / 'events.db'}"
    port = free_port()
    server = serve(db_url, port, workdir / "uvicorn.log", args.workers)
    try:
        result = flood(
            f"http://127.0.0.1:{port}/events",
            senders=args.senders,
            events_total=args.events,
            batch=args.batch,
            odd_every=args.odd_every,
            redeliver_every=args.redeliver_every,
        )
    finally:
        server.terminate()
        server.wait(30)
    outcome = check(db_url, result["accepted"], result["odd"])
    latencies = result["latencies"]
    figures = {
        "senders": args.senders,
        "workers": args.workers,
        "events_per_envelope": args.batch,
        "requests": len(latencies),
        "events_accepted": len(result["accepted"]),
        "seconds": round(result["seconds"], 2),
        "events_per_second": round(len(result["accepted"]) / result["seconds"], 1),
        "latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 1),
            "p95": round(1000 * percentile(latencies, 95), 1),
            "p99": round(1000 * percentile(latencies, 99), 1),
            "max": round(1000 * max(latencies), 1),
        },
        "failures": result["failures"][:10],
        "failed_requests": len(result["failures"]),
        "store": outcome,
        "db": db_url,
    }
    ok = (
        not result["failures"]
        and outcome["lost"] == 0
        and outcome["duplicate_rows"] == 0
        and outcome["unexpected"] == 0
        and outcome["wrong_state"] == 0
        and outcome["stored_rows"] == outcome["unique_accepted"]
    )
    figures["ok"] = ok
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        lat = figures["latency_ms"]
        print(
            f"{args.senders} senders, {figures['requests']} requests, "
            f"{figures['events_accepted']} events accepted ({outcome['unique_accepted']} "
            f"unique, the rest redeliveries; {args.batch} per envelope) "
            f"in {figures['seconds']} s"
        )
        print(f"accepted: {figures['events_per_second']} events/s")
        print(
            f"latency: p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, "
            f"max {lat['max']} ms"
        )
        print(f"store: {outcome}")
        print(
            f"result: {'OK' if ok else 'FAILED'}; every accepted event stored exactly once: "
            f"{'yes' if ok else 'no'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
