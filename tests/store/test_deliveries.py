"""Deliveries per secondary: each secondary's deliveries of the same events are claimed,
acknowledged, backed off, postponed and dead-lettered on their own, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_replication.store import Store
from registry_replication.store.queue import RETRY_BACKOFF_MAX, Event
from registry_replication.store.schema import aware, deliveries, now
from replication_harness.queue_counts import queue_counts

A, B = "registry_secondary", "registry_eu"
T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)


def events(n: int) -> list[Event]:
    return [
        Event(f"e{i}", "push", "group/app", f"v{i}", None, None, T0 + dt.timedelta(seconds=i))
        for i in range(n)
    ]


def test_a_worker_killing_event_is_isolated_on_its_secondary_alone(store_url):
    """On A, e5 kills every worker that claims it; B replicates it fine. A's lost-worker
    bisection isolates e5 and dead-letters it there; the others are done on A, everything on
    B in one claim each."""
    store = Store(store_url)
    store.queue.add(events(8), [A, B])
    owner, claimed = store.queue.claim(B)
    store.queue.complete(B, owner, [e.id for e in claimed])
    done, dead, claims = set(), [], 0
    waiting = lambda: sum(store.queue.stats(A)["counts"][s] for s in ("pending", "processing"))  # noqa: E731
    while waiting():
        assert not store.queue.dead_letter_lost(B, 10)
        dead += store.queue.dead_letter_lost(A, 10)
        owner, claimed = store.queue.claim(A, max_attempts=10)
        claims += 1
        assert claims < 40, "the bisection does not converge"
        ids = [e.id for e in claimed]
        if "e5" in ids:  # the worker dies: its claims' leases run out unacknowledged
            store.queue.renew_claims(owner, -1)
        else:
            store.queue.complete(A, owner, ids)
            done.update(ids)
    assert [(e.id, e.attempts) for e in dead] == [("e5", 10)]
    assert "worker lost" in dead[0].error
    assert done == {f"e{i}" for i in range(8)} - {"e5"}
    assert store.queue.stats(A)["counts"] == queue_counts(done=7, failed=1)
    assert store.queue.stats(B)["counts"]["done"] == 8
    assert {e["id"]: e["attempts"] for e in store.queue.events(secondary=B)} == {
        f"e{i}": 1 for i in range(8)
    }
    assert [(d["id"], d["secondary"]) for d in store.queue.dead_letters()] == [("e5", A)]


def test_postponing_a_secondary_counts_no_attempt(store_url):
    """A down secondary's deliveries wait, attempts untouched; the other's stay due."""
    store = Store(store_url)
    store.queue.add(events(3), [A, B])
    owner, claimed = store.queue.claim(B, limit=1)
    store.queue.retry_later(B, owner, [claimed[0].id], "HTTP 503", backoff=dt.timedelta(0))
    assert store.queue.postpone(B, now() + dt.timedelta(hours=1)) == 3
    assert store.queue.ready_counts([A, B]) == {A: 3, B: 0}
    assert {e["id"]: e["attempts"] for e in store.queue.events(secondary=B)} == {
        "e0": 1,
        "e1": 0,
        "e2": 0,
    }
    assert store.queue.postpone(B, now() - dt.timedelta(seconds=1)) == 3  # never earlier
    assert store.queue.ready_counts([A, B]) == {A: 3, B: 0}


# One step on one secondary: claim (up to n), or complete / fail / back off (its held claims).
STEPS = st.lists(
    st.tuples(
        st.sampled_from([A, B]),
        st.sampled_from(["claim", "complete", "fail", "retry"]),
        st.integers(1, 4),
    ),
    max_size=25,
)


def replay(url: str, steps: list[tuple[str, str, int]]) -> dict[str, list[tuple]]:
    """Apply ``steps`` to a new store at ``url``; returns each secondary's deliveries."""
    store = Store(url)
    store.queue.add(events(6), [A, B])
    held: dict[str, tuple[str, list[str]]] = {}
    for secondary, step, n in steps:
        if step == "claim":
            owner, claimed = store.queue.claim(secondary, limit=n, max_attempts=3)
            held[secondary] = (owner, [e.id for e in claimed])
            continue
        owner, ids = held.pop(secondary, ("nobody", []))
        if step == "complete":
            store.queue.complete(secondary, owner, ids[:n])
        elif step == "fail":
            store.queue.fail(secondary, owner, ids, "malformed")
        else:
            store.queue.retry_later(
                secondary, owner, ids, "503", max_attempts=3, backoff=dt.timedelta(0)
            )
    return {
        s: sorted(
            (d["id"], d["status"], d["attempts"], d["last_error"])
            for d in store.queue.events(secondary=s)
        )
        for s in (A, B)
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_each_secondarys_deliveries_are_its_own_whatever_the_interleaving(steps):
    """Any interleaving of claims and acknowledgements on two secondaries leaves each one's
    deliveries exactly as its own steps alone would."""
    with tempfile.TemporaryDirectory() as folder:
        both = replay(f"sqlite:///{Path(folder) / 'both.db'}", steps)
        for secondary in (A, B):
            alone = replay(
                f"sqlite:///{Path(folder) / f'{secondary}.db'}",
                [step for step in steps if step[0] == secondary],
            )
            assert both[secondary] == alone[secondary]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attempts=st.integers(min_value=1, max_value=10**6))
def test_a_retry_waits_at_most_the_cap_whatever_its_attempts(attempts):
    """Any number of attempts so far (``event_max_attempts`` has no upper bound): the delivery
    goes back, due within ``RETRY_BACKOFF_MAX``, never an overflow that loses it."""
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{Path(folder) / 'q.db'}")
        store.queue.add(events(1), [A])
        owner, claimed = store.queue.claim(A)
        with store.engine.begin() as conn:
            conn.execute(deliveries.update().values(attempts=attempts))
        before = now()
        assert (
            store.queue.retry_later(A, owner, [claimed[0].id], "503", max_attempts=attempts + 1)
            == []
        )
        (waiting,) = store.queue.events(secondary=A)
        assert waiting["status"] == "pending" and waiting["attempts"] == attempts
        assert before < aware(waiting["next_attempt_at"]) <= now() + RETRY_BACKOFF_MAX


@pytest.mark.parametrize("redelivered", [False, True])
def test_the_webhooks_secondaries_are_the_deliveries(store, redelivered):
    """Events added for three secondaries: three deliveries each; a redelivery, none more."""
    assert store.queue.add(events(2), [A, B, "registry_ap"]) == 2
    if redelivered:
        assert store.queue.add(events(2), [A, B, "registry_ap"]) == 0
    assert store.queue.ready_counts([A, B, "registry_ap"]) == {A: 2, B: 2, "registry_ap": 2}
    assert store.queue.stats()["counts"]["pending"] == 6
