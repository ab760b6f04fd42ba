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

from registry_replication.store import PENDING, REJECTED, events

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "webhook_flood.py"


def test_a_flood_from_20_senders_loses_nothing_and_stores_nothing_twice(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--senders", "20", "--events", "3000", "--batch", "3",
         "--odd-every", "7", "--redeliver-every", "5", "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["ok"] and figures["failed_requests"] == 0, figures
    # Read the store again here: 20 senders x 150 events, each exactly once.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.select(events.c.status, sa.func.count())
                                   .group_by(events.c.status)).all())
        distinct = conn.execute(sa.select(sa.func.count(sa.distinct(events.c.id)))).scalar()
    odd = sum(1 for n in range(150) if n % 7 == 0) * 20
    assert counts == {PENDING: 3000 - odd, REJECTED: odd}
    assert distinct == 3000
    # Some envelopes really were delivered twice.
    assert figures["events_accepted"] > 3000
