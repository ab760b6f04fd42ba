"""The durable event queue: idempotent adds, leases, backoff, failure after max attempts."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from registry_replication.store import Store, engine, migrate
from registry_replication.store.queue import Event
from registry_replication.store.schema import deliveries, events
from replication_harness.legacy_store import (
    assert_made_like_upgraded,
    assert_premigration_store_upgrades,
    assert_revision_upgrades,
    assert_schema_matches,
    revisions,
)
from replication_harness.queue_counts import queue_counts

T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)
S, EU = "registry_secondary", "registry_eu"


def test_sqlite_store_uses_wal(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'q.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_claim_complete_and_idempotent_add(ev, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'q.db'}")
    assert store.queue.add([ev(1), ev(2)], [S]) == 2 and store.queue.add([ev(1)], [S]) == 0
    assert store.queue.ready_counts([S]) == {S: 2}
    owner, claimed = store.queue.claim(S)
    assert [e.id for e in claimed] == ["e1", "e2"] and claimed[0].attempts == 1
    assert (
        store.queue.ready_counts([S]) == {S: 0} and store.queue.claim(S)[1] == []
    )  # leased, not claimable twice
    store.queue.complete(S, owner, ["e1", "e2"])
    assert store.queue.stats()["counts"] == queue_counts(done=2)


def test_an_event_is_stored_once_with_a_delivery_per_secondary(ev, tmp_path):
    """A redelivered notification adds nothing; a rejected event gets no delivery; each
    secondary claims and acknowledges its own delivery."""
    store = Store(f"sqlite:///{tmp_path / 'q.db'}")
    rejected = Event("bad", "push", "Group/BAD", "v1", None, None, T0, status="rejected")
    assert store.queue.add([ev(1), ev(1), rejected], [S, EU]) == 2
    assert store.queue.add([ev(1), rejected], [S, EU]) == 0
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 2
        assert sorted(conn.execute(sa.select(deliveries.c.event_id, deliveries.c.secondary))) == [
            ("e1", EU),
            ("e1", S),
        ]
    assert store.queue.ready_counts([S, EU, "registry_ap"]) == {S: 1, EU: 1, "registry_ap": 0}
    owner, claimed = store.queue.claim(S)
    assert [e.id for e in claimed] == ["e1"]
    store.queue.complete(EU, owner, ["e1"])  # not EU's claim: changes nothing
    assert store.queue.ready_counts([S, EU]) == {S: 0, EU: 1}
    store.queue.complete(S, owner, ["e1"])
    assert store.queue.stats(S)["counts"]["done"] == 1
    assert store.queue.stats(EU)["counts"]["pending"] == 1
    assert store.queue.stats()["counts"] == queue_counts(pending=1, done=1, rejected=1)
    assert sorted((e["status"], e["secondary"]) for e in store.queue.events()) == [
        ("done", S),
        ("pending", EU),
        ("rejected", None),
    ]
    assert [e["secondary"] for e in store.queue.events(secondary=EU)] == [EU]


def test_expired_lease_is_reclaimed(ev, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'q.db'}")
    store.queue.add([ev(1)], [S])
    crashed_owner, _ = store.queue.claim(S, lease_seconds=-1)  # the run died holding the lease
    owner, claimed = store.queue.claim(S)
    assert [e.id for e in claimed] == ["e1"] and owner != crashed_owner
    store.queue.complete(S, crashed_owner, ["e1"])  # a late ack from the dead run changes nothing
    assert store.queue.stats()["counts"]["processing"] == 1


def test_retry_backs_off_then_fails(ev, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'q.db'}")
    store.queue.add([ev(1)], [S])
    owner, _ = store.queue.claim(S)
    assert (
        store.queue.retry_later(
            S, owner, ["e1"], "HTTP 503", max_attempts=2, backoff=dt.timedelta(seconds=60)
        )
        == []
    )
    assert store.queue.ready_counts([S]) == {S: 0}  # backing off
    with store.engine.begin() as conn:
        conn.execute(deliveries.update().values(next_attempt_at=T0))
    owner, claimed = store.queue.claim(S)
    assert claimed[0].attempts == 2
    assert store.queue.retry_later(S, owner, ["e1"], "HTTP 503 again", max_attempts=2) == ["e1"]
    failed = store.queue.events(status="failed")
    assert [(e["id"], e["last_error"]) for e in failed] == [("e1", "HTTP 503 again")]
    assert store.queue.ready_counts([S]) == {S: 0}
    assert store.queue.retry_failed("e1", EU) is False
    assert store.queue.retry_failed("e1", S) is True
    assert store.queue.ready_counts([S]) == {S: 1}


def test_a_store_upgraded_by_newer_code_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    with Store(url).engine.begin() as conn:
        conn.execute(sa.text("UPDATE rr_alembic_version SET version_num = '9999'"))
    fresh = engine.create(url)  # as another process would, on its first use of the store
    with pytest.raises(
        RuntimeError,
        match=r"at revision 9999, which this code \(head "
        r"\d+\) does not know.*upgrade this installation",
    ):
        migrate.upgrade(fresh)


def test_one_engine_per_url_in_a_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert Store(url).engine is Store(url).engine
    assert Store(url).engine is not Store(f"sqlite:///{tmp_path / 'other.db'}").engine


def test_a_new_store_is_made_exactly_like_an_upgraded_one(tmp_path):
    assert_made_like_upgraded(
        f"sqlite:///{tmp_path / 'new.db'}", f"sqlite:///{tmp_path / 'old.db'}"
    )


def test_a_store_from_before_migrations_upgrades_with_its_data(tmp_path):
    assert_premigration_store_upgrades(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.parametrize("revision", revisions())
def test_a_store_at_each_revision_upgrades_with_its_data(tmp_path, revision):
    assert_revision_upgrades(f"sqlite:///{tmp_path / 'old.db'}", revision)


def test_the_head_read_off_the_file_names_is_alembics():
    """``migrate.head()`` spares a store at head the import of Alembic: it must be the head
    Alembic walks to, each revision named by its file's number, one chain."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.config())
    assert script.get_heads() == [migrate.head()]
    for revision in script.walk_revisions():
        assert revision.path.rpartition("/")[2][:4] == revision.revision


def test_the_cli_upgrades_a_store(tmp_path, capsys):
    from registry_replication.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["store", "upgrade", "--url", url]) == 0
    assert f"upgraded from None to {migrate.head()}" in capsys.readouterr().out
    assert main(["store", "upgrade", "--url", url]) == 0
    assert f"already at revision {migrate.head()}" in capsys.readouterr().out
    assert_schema_matches(Store(url))


def test_a_new_sqlite_store_is_readable_only_by_its_owner(ev, tmp_path):
    """It holds event payloads, error texts and the registries' names: 0600, in folders made
    0700 (SQLite gives the -wal and -shm files the database's mode)."""
    path = tmp_path / "private" / "store" / "replication.db"
    store = Store(f"sqlite:///{path}")
    store.queue.add([ev(1)], [S])
    with store.engine.connect() as conn:  # the WAL holds the write until a checkpoint
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        files = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
    assert files["replication.db"] == 0o600 and "replication.db-wal" in files
    assert set(files.values()) == {0o600}, files
    assert {(p.name, p.stat().st_mode & 0o777) for p in (path.parent, path.parent.parent)} == {
        ("store", 0o700),
        ("private", 0o700),
    }
