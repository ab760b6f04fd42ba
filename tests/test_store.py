"""The durable event queue: idempotent adds, leases, backoff, failure after max attempts."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from registry_replication.store import Event, EventStore, events

T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.timezone.utc)


def ev(i: int, tag: str = "1.0") -> Event:
    return Event(f"e{i}", "push", "group/app", tag, "sha256:" + "a" * 64, "m",
                 T0 + dt.timedelta(seconds=i))


def test_sqlite_store_uses_wal(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'q.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_claim_complete_and_idempotent_add(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'q.db'}")
    assert store.add([ev(1), ev(2)]) == 2 and store.add([ev(1)]) == 0
    assert store.ready_count() == 2
    owner, claimed = store.claim()
    assert [e.id for e in claimed] == ["e1", "e2"] and claimed[0].attempts == 1
    assert store.ready_count() == 0 and store.claim()[1] == []  # leased, not claimable twice
    store.complete(owner, ["e1", "e2"])
    assert store.queue()["counts"] == {"pending": 0, "processing": 0, "done": 2, "failed": 0,
                                       "rejected": 0}


def test_expired_lease_is_reclaimed(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'q.db'}")
    store.add([ev(1)])
    crashed_owner, _ = store.claim(lease_seconds=-1)  # the run died holding the lease
    owner, claimed = store.claim()
    assert [e.id for e in claimed] == ["e1"] and owner != crashed_owner
    store.complete(crashed_owner, ["e1"])  # a late ack from the dead run changes nothing
    assert store.queue()["counts"]["processing"] == 1


def test_retry_backs_off_then_fails(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'q.db'}")
    store.add([ev(1)])
    owner, _ = store.claim()
    assert store.retry_later(owner, ["e1"], "HTTP 503", max_attempts=2, backoff_seconds=60) == []
    assert store.ready_count() == 0  # backing off
    with store.engine.begin() as conn:
        conn.execute(events.update().values(next_attempt_at=T0))
    owner, claimed = store.claim()
    assert claimed[0].attempts == 2
    assert store.retry_later(owner, ["e1"], "HTTP 503 again", max_attempts=2) == ["e1"]
    failed = store.events(status="failed")
    assert [(e["id"], e["last_error"]) for e in failed] == [("e1", "HTTP 503 again")]
    assert store.ready_count() == 0


def test_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    store = EventStore(url)
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO rr_schema (version) VALUES (99)"))
    try:
        EventStore(url)
    except RuntimeError as exc:
        assert "schema version 99" in str(exc)
    else:
        raise AssertionError("a newer schema was accepted")
