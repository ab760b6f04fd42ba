"""The rows from before several secondaries (revision 0007 put them on ``LEGACY``) are adopted
by one configured secondary: the one whose URL the record was verified at, else the
``secondary_conn_id`` setting's, else the first; once, whoever asks at the same time."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_replication.store import Store, engine, migrate, retention
from registry_replication.store.queue import Event
from registry_replication.store.record import INTENT, PRESENT, TagRecord
from registry_replication.store.schema import (
    LEGACY,
    carried_totals,
    deliveries,
    events,
    leases,
    now,
    push_latency,
    recorded_tags,
    recorded_verifications,
    repository_state,
)
from registry_replication.store.secondaries import KEYED, Secondaries
from replication_harness.legacy_store import T0, secondaries_of, store_at


def legacy_store(url: str) -> Store:
    """A store from before several secondaries (revision 0006, a row in every table, the
    record verified at ``x``), upgraded."""
    store_at(url, "0006")
    return Store(url)


@pytest.mark.parametrize(
    ("urls", "preferred", "chosen"),
    [
        ({"registry_eu": "https://eu", "registry_ap": "x"}, "registry_eu", "registry_ap"),
        ({"registry_eu": "https://eu"}, "registry_ap", "registry_ap"),  # unknown URLs
        ({}, "registry_us", "registry_eu"),  # secondary_conn_id not configured: the first
    ],
    ids=["by-url", "by-setting", "first"],
)
def test_the_legacy_rows_go_to_one_secondary(store_url, urls, preferred, chosen):
    store = legacy_store(store_url)
    configured = ("registry_eu", "registry_ap")
    assert store.secondaries.adopt_legacy(configured, urls.get, preferred) == chosen
    assert set().union(*secondaries_of(store).values()) == {chosen}
    assert TagRecord(store, chosen).verified("x") == {"x": T0}
    assert (
        TagRecord(store, "registry_eu" if chosen != "registry_eu" else "registry_ap").rows("x")
        == {}
    )


def test_a_row_written_meanwhile_stays_and_its_legacy_twin_goes(store_url):
    store = legacy_store(store_url)
    store.state.set_repository_state(
        "registry_eu", [{"repository": "group/app", "state": "synced"}]
    )
    assert store.secondaries.adopt_legacy(("registry_eu",), lambda _: None, "registry_eu")
    assert [
        (r["secondary"], r["repository"], r["state"]) for r in store.state.repository_states()
    ] == [("registry_eu", "group/app", "synced")]


def test_a_new_store_has_nothing_to_adopt(store_url):
    store = Store(store_url)
    assert store.secondaries.adopt_legacy(("registry_eu",), lambda _: None, "registry_eu") is None


def test_writers_adopting_at_once_agree_on_one(store_url):
    """Each writer proposes another secondary; one transaction takes the placeholder, the
    others find it gone and change nothing."""
    legacy_store(store_url)
    configured = tuple(f"registry_{n}" for n in range(6))
    start = threading.Barrier(len(configured))

    def adopt(preferred: str) -> str | None:
        own = engine.create(store_url)  # as another process would, with its own connections
        try:
            start.wait()
            return Secondaries(own).adopt_legacy(configured, lambda _: None, preferred)
        finally:
            own.dispose()

    with ThreadPoolExecutor(len(configured)) as pool:
        chosen = [c for c in pool.map(adopt, configured) if c is not None]
    assert len(chosen) == 1
    assert set().union(*secondaries_of(Store(store_url)).values()) == set(chosen)


def test_each_secondary_has_its_own_rows(store_url, ev):
    """Leases, record, repository states and latencies of one secondary are not another's."""
    store = Store(store_url)
    assert store.state.acquire_lease("registry_eu", "repository:app", "w1", 60) is None
    assert store.state.acquire_lease("registry_ap", "repository:app", "w2", 60) is None
    assert store.state.acquire_lease("registry_eu", "repository:app", "w2", 60)["owner"] == "w1"
    eu, ap = TagRecord(store, "registry_eu"), TagRecord(store, "registry_ap")
    eu.record("app", "v1", "sha256:" + "a" * 64, "w1")
    ap.intend("app", ["v1"], "w2")
    assert eu.rows("app") == {"v1": (PRESENT, "sha256:" + "a" * 64)}
    assert ap.rows("app") == {"v1": (INTENT, None)}
    assert eu.tag_count() == ap.tag_count() == 1
    store.state.set_repository_state("registry_eu", [{"repository": "app", "state": "synced"}])
    store.state.set_repository_state("registry_ap", [{"repository": "app", "state": "failed"}])
    assert [(r["secondary"], r["state"]) for r in store.state.repository_states()] == [
        ("registry_ap", "failed"),
        ("registry_eu", "synced"),
    ]
    assert [r["state"] for r in store.state.repository_states("registry_eu")] == ["synced"]
    assert len(store.history.record_acknowledged("registry_eu", [ev(1)])) == 1
    assert len(store.history.record_acknowledged("registry_ap", [ev(1)])) == 1
    assert store.history.record_acknowledged("registry_eu", [ev(1)]) == []  # a redelivery
    assert store.history.push_latency_histogram()[1] == 2


def test_retention_takes_only_the_old_latency_of_an_event(store, ev):
    """One event, acknowledged on two secondaries a month apart: the old row goes, counted."""
    store.history.record_acknowledged("registry_eu", [ev(1)])
    store.history.record_acknowledged("registry_ap", [ev(1)])
    with store.engine.begin() as conn:
        conn.execute(
            push_latency.update()
            .where(push_latency.c.secondary == "registry_eu")
            .values(acknowledged_at=now() - dt.timedelta(days=40))
        )
    assert retention.prune(store.engine, dt.timedelta(days=30)).push_latencies == 1
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(push_latency.c.secondary)).scalars().all() == ["registry_ap"]
    assert store.history.push_latency_histogram()[1] == 2


def test_a_downgrade_keeps_the_first_secondarys_rows_and_upgrades_again(store_url):
    """Revision 0006's keys hold one secondary: the first by name keeps its rows."""
    store = Store(store_url)
    for secondary, state in (("registry_eu", "synced"), ("registry_ap", "failed")):
        store.state.set_repository_state(secondary, [{"repository": "app", "state": state}])
    down = engine.create(store_url)
    try:
        with down.connect() as conn:
            cfg = migrate.config(conn)
            command.downgrade(cfg, "0006")
            conn.commit()
            assert conn.execute(sa.text("SELECT state FROM rr_repository_state")).all() == [
                ("failed",)
            ]
            command.upgrade(cfg, "head")
            conn.commit()
    finally:
        down.dispose()
    assert [(r["secondary"], r["state"]) for r in store.state.repository_states()] == [
        (LEGACY, "failed")
    ]


def test_an_adopted_store_gives_its_events_deliveries_to_one_secondary(store_url):
    """A store adopted at 0007 (one secondary's state, its events' delivery state on
    ``rr_events``) upgrades to 0008: each accepted event's state becomes its delivery on
    ``LEGACY``, adopted like the rest, attempts and status kept."""
    store_at(store_url, "0007")
    at_0007 = engine.create(store_url)
    try:
        with at_0007.begin() as conn:
            for table in ("rr_leases", "rr_repository_state", "rr_recorded_tags"):
                conn.execute(sa.text(f"UPDATE {table} SET secondary = 'registry_eu'"))
            conn.execute(sa.text("DELETE FROM rr_secondaries"))
            waiting = dict(
                conn.execute(
                    sa.text("SELECT id, attempts FROM rr_events WHERE status = 'pending'")
                ).all()
            )
    finally:
        at_0007.dispose()
    store = Store(store_url)
    assert {e["id"]: e["secondary"] for e in store.queue.events(status="pending")} == dict.fromkeys(
        waiting, LEGACY
    )
    assert store.secondaries.adopt_legacy(("registry_eu", "registry_ap"), lambda _: None, "x")
    assert store.queue.ready_counts(["registry_eu", "registry_ap"]) == {
        "registry_eu": len(waiting),
        "registry_ap": 0,
    }
    _, claimed = store.queue.claim("registry_eu")
    assert {e.id: e.attempts for e in claimed} == {i: n + 1 for i, n in waiting.items()}


def test_retention_keeps_an_event_while_a_secondary_still_owes_it(store, ev):
    """Done on one secondary a month ago, pending on the other: the done delivery goes
    (counted), the event and the other's delivery stay."""
    store.queue.add([ev(1)], ["registry_eu", "registry_ap"])
    owner, _ = store.queue.claim("registry_eu")
    store.queue.complete("registry_eu", owner, ["e1"])
    old = now() - dt.timedelta(days=40)
    with store.engine.begin() as conn:
        conn.execute(deliveries.update().values(updated_at=old))
        conn.execute(events.update().values(updated_at=old))
    pruned = retention.prune(store.engine, dt.timedelta(days=30))
    assert (pruned.deliveries, pruned.events) == (1, 0)
    assert [(e["id"], e["secondary"]) for e in store.queue.events()] == [("e1", "registry_ap")]
    assert store.queue.status_counts()["done"] == 1  # carried
    owner, _ = store.queue.claim("registry_ap")
    store.queue.complete("registry_ap", owner, ["e1"])
    with store.engine.begin() as conn:
        conn.execute(deliveries.update().values(updated_at=old))
    pruned = retention.prune(store.engine, dt.timedelta(days=30))
    assert (pruned.deliveries, pruned.events) == (1, 1)
    assert store.queue.events() == [] and store.queue.status_counts()["done"] == 2


def test_the_carried_totals_go_to_the_adopting_secondary_added_to_its_own(store_url):
    """A store adopted at 0008 upgrades to 0009: its carried totals wait on ``LEGACY`` (the
    rejected events' is no secondary's), and the adopting secondary's own totals, carried
    meanwhile, are added to, never replaced: its counters never go down."""
    store_at(store_url, "0008")
    at_0008 = engine.create(store_url)
    try:
        with at_0008.begin() as conn:
            for table in KEYED:
                if table is not carried_totals:
                    conn.execute(sa.text(f"UPDATE {table.name} SET secondary = 'registry_eu'"))
            conn.execute(sa.text("DELETE FROM rr_secondaries"))  # adopted already
            conn.execute(sa.text("DELETE FROM rr_carried_totals"))
            conn.execute(
                sa.text(
                    "INSERT INTO rr_carried_totals (name, value) "
                    "VALUES ('bytes_copied', 500), ('events_rejected', 2)"
                )
            )
    finally:
        at_0008.dispose()
    store = Store(store_url)
    rows = store.history.copied_bytes_total("registry_eu")  # its rows, before any total
    rejected = store.queue.status_counts()["rejected"]
    with store.engine.begin() as conn:  # a prune meanwhile carried some of its own
        conn.execute(
            carried_totals.insert().values(secondary="registry_eu", name="bytes_copied", value=100)
        )
    assert store.history.copied_bytes_total("registry_eu") == rows + 100
    assert store.history.copied_bytes_total() == rows + 100 + 500  # LEGACY's, not adopted yet

    assert store.secondaries.adopt_legacy(("registry_eu",), lambda _: None, "registry_eu")
    assert store.history.copied_bytes_total("registry_eu") == rows + 600
    with store.engine.connect() as conn:
        assert {
            (r.secondary, r.name): r.value for r in conn.execute(sa.select(carried_totals))
        } == {("registry_eu", "bytes_copied"): 600, ("", "events_rejected"): 2}
    assert store.queue.status_counts()["rejected"] == rejected
    assert store.queue.status_counts("registry_eu")["rejected"] == 0


# One row of each table of a secondary's own state, changed at ``at``.
def _state_rows(secondary: str, at: dt.datetime) -> dict[sa.Table, dict]:
    return {
        repository_state: {
            "secondary": secondary,
            "repository": "app",
            "state": "synced",
            "updated_at": at,
        },
        recorded_tags: {
            "secondary": secondary,
            "repository": "app",
            "tag": "v1",
            "state": PRESENT,
            "digest": "sha256:" + "1" * 64,
            "recorded_at": at,
            "written_by": "test",
        },
        recorded_verifications: {
            "secondary": secondary,
            "repository": "app",
            "registry": "http://x",
            "verified_at": at,
        },
        leases: {
            "secondary": secondary,
            "resource": "repository:app",
            "owner": "w",
            "expires_at": at,
            "acquired_at": at,
        },
    }


@settings(max_examples=25, deadline=None)
@given(
    recent=st.sets(st.sampled_from(["deliveries", *[t.name for t in _state_rows("s", T0)]])),
    done=st.booleans(),
)
def test_a_departed_secondarys_rows_go_all_at_once_when_all_are_old(
    tmp_path_factory: pytest.TempPathFactory, recent: set[str], done: bool
) -> None:
    """``registry_ap`` is no longer configured: its rows (a delivery, pending or done, and a row
    in every table of its state) go together once none changed within the retention, and
    none of them goes while any did; a configured secondary's and ``LEGACY``'s never go."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('store') / 'replication.db'}")
    old, young = now() - dt.timedelta(days=40), now()
    at = {name: young if name in recent else old for name in ("deliveries", *recent)}
    event = Event("e1", "push", "app", "v1", None, None, T0)
    store.queue.add([event], ["registry_eu", "registry_ap", LEGACY])
    if done:
        owner, _ = store.queue.claim("registry_ap")
        store.queue.complete("registry_ap", owner, ["e1"])
    with store.engine.begin() as conn:
        conn.execute(deliveries.update().values(updated_at=at.get("deliveries", old)))
        conn.execute(events.update().values(updated_at=old))
        for secondary in ("registry_eu", "registry_ap", LEGACY):
            for table, row in _state_rows(secondary, old).items():
                changed = young if secondary == "registry_ap" and table.name in recent else old
                conn.execute(
                    table.insert(), {k: changed if v == old else v for k, v in row.items()}
                )
    before = secondaries_of(store)
    pruned = retention.prune(store.engine, dt.timedelta(days=30), configured=["registry_eu"])
    after = secondaries_of(store)
    departed = not recent
    assert pruned.departed_secondaries == int(departed)
    # A done delivery a month old goes anyway: retention takes any finished delivery, and
    # carries it in the secondary's counters.
    carried = not departed and done and "deliveries" not in recent
    expected = {name: set(names) for name, names in before.items()}
    if departed:
        expected = {name: names - {"registry_ap"} for name, names in expected.items()}
    if carried:
        expected["rr_deliveries"].discard("registry_ap")
        expected["rr_carried_totals"].add("registry_ap")
    assert after == expected
    # A departed secondary's counters go with it; a configured one's never go down.
    assert store.queue.status_counts("registry_ap")["done"] == int(done and not departed)
    # The event stays while the configured secondary (and the unadopted rows) still owe it.
    assert sorted(e["secondary"] for e in store.queue.events()) == sorted(
        [LEGACY, "registry_eu", *(["registry_ap"] if not departed and not carried else [])]
    )


def test_a_store_prune_that_does_not_know_the_secondaries_removes_none(store, ev):
    store.queue.add([ev(1)], ["registry_ap"])
    with store.engine.begin() as conn:
        conn.execute(deliveries.update().values(updated_at=now() - dt.timedelta(days=40)))
    assert retention.prune(store.engine, dt.timedelta(days=30)).departed_secondaries == 0
    assert (
        retention.prune(
            store.engine, dt.timedelta(days=30), configured=["registry_eu"]
        ).departed_secondaries
        == 1
    )
