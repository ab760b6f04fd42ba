"""A notification flood against the webhook served by uvicorn: a smaller run of
benchmarks/webhook_flood.py (20 senders); every accepted event is stored exactly once.

No timing assertions: the figures are the benchmark's to report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from registry_replication.outcomes import EventStatus
from registry_replication.store.schema import ACCEPTED, events

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "webhook_flood.py"


def test_a_flood_from_20_senders_loses_nothing_and_stores_nothing_twice(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--senders",
            "20",
            "--events",
            "3000",
            "--batch",
            "3",
            "--odd-every",
            "7",
            "--redeliver-every",
            "5",
            "--workdir",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["ok"] and figures["failed_requests"] == 0, figures
    # Read the store again here: 20 senders x 150 events, each exactly once.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.select(events.c.status, sa.func.count()).group_by(events.c.status)
            ).all()
        )
        distinct = conn.execute(sa.select(sa.func.count(sa.distinct(events.c.id)))).scalar()
    odd = sum(1 for n in range(150) if n % 7 == 0) * 20
    assert counts == {ACCEPTED: 3000 - odd, EventStatus.REJECTED: odd}
    assert distinct == 3000
    # Some envelopes really were delivered twice.
    assert figures["events_accepted"] > 3000


def test_the_same_envelope_from_20_senders_at_once_is_stored_once(tmp_path):
    """Redeliveries racing each other across two API server worker processes."""
    import importlib.util
    import threading
    import uuid

    import requests

    from registry_replication.store import Store
    from registry_replication.web.notifications import ENVELOPE_MEDIA_TYPE
    from replication_harness.registry import free_port

    spec = importlib.util.spec_from_file_location("webhook_flood", SCRIPT)
    flood = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flood)
    db_url = f"sqlite:///{tmp_path / 'race.db'}"
    port = free_port()
    server = flood.serve(db_url, port, tmp_path / "uvicorn.log", workers=2)
    statuses: list[int] = []
    try:
        for round_ in range(20):
            body = json.dumps(
                {
                    "events": [
                        {
                            "id": str(uuid.uuid4()),
                            "timestamp": "2026-11-30T02:00:00Z",
                            "action": "push",
                            "target": {
                                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "repository": "group/app",
                                "tag": f"v{round_}-{n}",
                                "digest": "sha256:" + "e" * 64,
                            },
                        }
                        for n in range(5)
                    ]
                }
            )
            barrier = threading.Barrier(20)

            def send(barrier: threading.Barrier = barrier, body: str = body) -> None:
                barrier.wait()
                statuses.append(
                    requests.post(
                        f"http://127.0.0.1:{port}/events",
                        data=body,
                        timeout=60,
                        headers={
                            "Content-Type": ENVELOPE_MEDIA_TYPE,
                            "Authorization": flood.SECRET,
                        },
                    ).status_code
                )

            senders = [threading.Thread(target=send) for _ in range(20)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
    finally:
        server.terminate()
        server.wait(30)
    assert statuses == [200] * 400, (tmp_path / "uvicorn.log").read_text()[-3000:]
    rows = Store(db_url).queue.events(limit=1000)
    assert len(rows) == len({r["id"] for r in rows}) == 100
