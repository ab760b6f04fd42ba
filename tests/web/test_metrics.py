"""Prometheus metrics: one scrape reads the store alone and says what the README's table
documents; the endpoint's token matches only as a bearer token, and a short one is warned
about, never logged."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry_replication.store import retention
from registry_replication.store.history import TaskTry
from registry_replication.store.queue import Event
from registry_replication.store.schema import copied_bytes, deliveries
from registry_replication.web import metrics

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TOKEN = "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "token,warned", [("scrape-Token-1", True), ("x" * 31, True), ("0123456789abcdef" * 2, False)]
)
def test_a_metrics_token_shorter_than_32_characters_is_warned_about(
    monkeypatch, caplog, token, warned
):
    monkeypatch.setenv("REGISTRY_REPLICATION_METRICS_TOKEN", token)
    if hasattr(metrics, "_warn_short_token"):
        metrics._warn_short_token.cache_clear()  # once per process: this test's process
    with caplog.at_level(logging.WARNING, logger="registry_replication"):
        assert metrics.configured_token() == token
        assert metrics.configured_token() == token
    lines = [
        r.getMessage()
        for r in caplog.records
        if "REGISTRY_REPLICATION_METRICS_TOKEN" in r.getMessage()
    ]
    if warned:
        assert lines == [
            f"REGISTRY_REPLICATION_METRICS_TOKEN is {len(token)} characters long: "
            "use at least 32 random ones (openssl rand -hex 32); a short token "
            "can be guessed by whoever reaches /metrics"
        ]
    else:
        assert lines == []
    assert not any(token in r.getMessage() for r in caplog.records)


# -- the scrape: what ``exposition`` says, from the store alone -------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def scraped(store) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape, parsed as Prometheus parses it: {(sample name, labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.exposition(store).decode())
        for s in family.samples
    }


def test_the_readme_documents_exactly_the_series_exposed(store):
    table = README.read_text().split("| metric | type | meaning |")[1].split("\n\n")[0]
    documented = {
        (name, kind)
        for name, kind in re.findall(
            r"^\| `(registry_replication_\w+)[^`]*` \| (\w+) \|", table, re.M
        )
    }
    assert len(documented) >= 8  # the table was found and read
    families = {
        family.name: family.type
        for family in text_string_to_metric_families(metrics.exposition(store).decode())
    }
    # The parser names a counter's family without its ``_total``.
    assert {(name.removesuffix("_total"), kind) for name, kind in documented} == set(
        families.items()
    )
    # And the documented repository states are the ones exposed.
    states = (
        re.search(r'repositories\{secondary,state="([^"]+)"\}', table).group(1).replace("\\|", "|")
    )
    assert set(states.split("|")) == set(metrics.STATE_LABELS.values())


HERE = (("secondary", "registry_secondary"),)  # the one configured secondary's series


def outcomes(samples) -> dict[tuple[str, str], float]:
    """``events_total`` by (secondary, outcome)."""
    return {
        (dict(labels)["secondary"], dict(labels)["outcome"]): v
        for (n, labels), v in samples.items()
        if n == "registry_replication_events_total"
    }


def of(samples, name: str, label: str, secondary: str = "registry_secondary") -> dict[str, float]:
    """One family's samples of ``secondary``, by the value of their other label."""
    return {
        dict(labels)[label]: v
        for (n, labels), v in samples.items()
        if n == name and dict(labels).get("secondary") == secondary
    }


def test_an_empty_store_scrapes_as_zeros_with_every_label(store):
    samples = scraped(store)
    assert samples[("registry_replication_events_pending", HERE)] == 0
    assert samples[("registry_replication_oldest_pending_event_age_seconds", HERE)] == 0
    assert outcomes(samples) == {
        ("registry_secondary", "done"): 0,
        ("registry_secondary", "failed"): 0,
        ("", "rejected"): 0,  # rejected events are no secondary's
    }
    assert of(samples, "registry_replication_repositories", "state") == {
        "synced": 0,
        "pending": 0,
        "failed": 0,
        "damaged": 0,
        "never": 0,
    }
    assert samples[("registry_replication_tags", (*HERE, ("side", "primary")))] == 0
    assert samples[("registry_replication_bytes_copied_total", HERE)] == 0
    assert samples[("registry_replication_push_to_replica_seconds_count", HERE)] == 0
    inf = (("le", "+Inf"), *HERE)
    assert samples[("registry_replication_push_to_replica_seconds_bucket", inf)] == 0
    assert not any(n == "registry_replication_last_success_timestamp_seconds" for n, _ in samples)


def test_a_scrape_reads_the_queue_the_history_and_the_latencies(store, ev):
    store.queue.add([ev(i) for i in range(4)], ["registry_secondary"])
    store.queue.add(
        [Event("bad", "push", "Odd/app", None, None, None, T0, status="rejected", error="grammar")],
        ["registry_secondary"],
    )
    owner, claimed = store.queue.claim("registry_secondary", limit=3)
    done, failed = [e.id for e in claimed[:2]], [claimed[2].id]
    store.queue.complete("registry_secondary", owner, done)
    store.queue.fail("registry_secondary", owner, failed, "malformed")
    store.history.record_acknowledged("registry_secondary", claimed[:2])
    store.history.record_copied_bytes(
        TaskTry("registry_events", "r1", "replicate_events", None), "registry_secondary", 1000
    )
    store.history.record_copied_bytes(
        TaskTry("registry_reconcile", "r2", "copy_blobs", 0), "registry_secondary", 234
    )
    store.history.record_dag_outcome("registry_sync", "r3", "success")
    store.history.record_dag_outcome("registry_reconcile", "r2", "failed")

    samples = scraped(store)
    assert samples[("registry_replication_events_pending", HERE)] == 1
    assert samples[("registry_replication_oldest_pending_event_age_seconds", HERE)] >= 0
    assert outcomes(samples) == {
        ("registry_secondary", "done"): 2,
        ("registry_secondary", "failed"): 1,
        ("", "rejected"): 1,
    }
    assert samples[("registry_replication_bytes_copied_total", HERE)] == 1234
    # Only a successful run counts, per DAG.
    success = {
        labels[0][1]: v
        for (n, labels), v in samples.items()
        if n == "registry_replication_last_success_timestamp_seconds"
    }
    assert list(success) == ["registry_sync"]
    assert abs(success["registry_sync"] - dt.datetime.now(dt.UTC).timestamp()) < 300
    # The two acknowledged events' push-to-replica times.
    assert samples[("registry_replication_push_to_replica_seconds_count", HERE)] == 2
    inf = (("le", "+Inf"), *HERE)
    assert samples[("registry_replication_push_to_replica_seconds_bucket", inf)] == 2
    buckets = [
        v
        for (n, _), v in samples.items()
        if n == "registry_replication_push_to_replica_seconds_bucket"
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert metrics.figures(store)["events_total"] == {
        "registry_secondary": {"done": 2, "failed": 1},
        "": {"rejected": 1},
    }


@pytest.mark.parametrize(
    "header,matches",
    [
        ("Bearer " + TOKEN, True),
        ("bearer " + TOKEN, True),
        ("Bearer  " + TOKEN + " ", True),
        ("Bearer " + TOKEN[:-1], False),
        ("Bearer " + TOKEN + "x", False),
        ("Basic " + TOKEN, False),
        (TOKEN, False),
        ("Bearer", False),
        ("", False),
        (None, False),
    ],
)
def test_only_the_bearer_token_itself_matches(header, matches):
    assert metrics.token_matches(header, TOKEN) is matches


def test_each_secondary_has_its_own_series(store, ev, monkeypatch, set_app_state):
    """Two secondaries: the backlog, the oldest waiting event, the outcomes, the bytes copied,
    the push-to-replica times, the repository states, the tags and the last verification of
    each are its own series, labelled with its connection id."""
    monkeypatch.setenv(
        "AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS", "registry_secondary,registry_eu"
    )
    store.queue.add([ev(i) for i in range(3)], ["registry_secondary", "registry_eu"])
    owner, claimed = store.queue.claim("registry_secondary", limit=3)
    store.queue.complete("registry_secondary", owner, [e.id for e in claimed])
    store.history.record_acknowledged("registry_secondary", claimed)
    owner, [failing] = store.queue.claim("registry_eu", limit=1)
    store.queue.fail("registry_eu", owner, [failing.id], "HTTP 400 MANIFEST_INVALID")
    store.history.record_copied_bytes(
        TaskTry("registry_events", "r1", "replicate_events", None), "registry_secondary", 1000
    )
    store.history.record_copied_bytes(
        TaskTry("registry_events", "r1", "replicate_events_registry_eu", None), "registry_eu", 24
    )
    verified = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    set_app_state(
        store, "registry_secondary", "synced", 3, verified_level="blobs", verified_at=verified
    )
    set_app_state(store, "registry_eu", "pending", 1, last_sync_at=T0)

    with store.engine.begin() as conn:  # eu's deliveries have waited a minute
        conn.execute(
            deliveries.update()
            .where(deliveries.c.secondary == "registry_eu")
            .values(received_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        )

    samples = scraped(store)
    eu = (("secondary", "registry_eu"),)
    assert samples[("registry_replication_events_pending", HERE)] == 0
    assert samples[("registry_replication_events_pending", eu)] == 2
    assert samples[("registry_replication_oldest_pending_event_age_seconds", HERE)] == 0
    assert samples[("registry_replication_oldest_pending_event_age_seconds", eu)] >= 60
    assert of(samples, "registry_replication_repositories", "state", "registry_eu") == {
        "synced": 0,
        "pending": 1,
        "failed": 0,
        "damaged": 0,
        "never": 0,
    }
    assert of(samples, "registry_replication_repositories", "state")["synced"] == 1
    assert of(samples, "registry_replication_tags", "side", "registry_eu") == {
        "primary": 3,
        "secondary": 1,
    }
    assert of(samples, "registry_replication_last_verified_timestamp_seconds", "level") == {
        "blobs": verified.timestamp()
    }
    assert not of(
        samples, "registry_replication_last_verified_timestamp_seconds", "level", "registry_eu"
    )
    assert outcomes(samples) == {
        ("registry_secondary", "done"): 3,
        ("registry_secondary", "failed"): 0,
        ("registry_eu", "done"): 0,
        ("registry_eu", "failed"): 1,
        ("", "rejected"): 0,
    }
    assert samples[("registry_replication_bytes_copied_total", HERE)] == 1000
    assert samples[("registry_replication_bytes_copied_total", eu)] == 24
    assert samples[("registry_replication_push_to_replica_seconds_count", HERE)] == 3
    assert samples[("registry_replication_push_to_replica_seconds_count", eu)] == 0

    # Retention prunes eu's old copy record: its counter stays whole, carried as its own.
    with store.engine.begin() as conn:
        conn.execute(
            copied_bytes.update()
            .where(copied_bytes.c.secondary == "registry_eu")
            .values(recorded_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=40))
        )
    assert retention.prune(store.engine, dt.timedelta(days=30)).copied_bytes_records == 1
    again = scraped(store)
    assert again[("registry_replication_bytes_copied_total", eu)] == 24
    assert again[("registry_replication_bytes_copied_total", HERE)] == 1000
