"""Prometheus metrics, read from the replication store on every scrape.

Every API server reads the same store, so every one reports the same numbers. A custom
collector over a fresh ``CollectorRegistry`` (never the process-global one) reads the store per
scrape; ``figures()`` is the same data as plain numbers, which the tasks also send to Airflow's
``Stats`` (StatsD or OpenTelemetry).
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import logging
import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from registry_replication.outcomes import EventStatus, RepositoryState, VerifyLevel
from registry_replication.settings import current, variable
from registry_replication.store import Store
from registry_replication.store.history import LATENCY_BUCKETS
from registry_replication.web import status as statuses

log = logging.getLogger(__name__)

# Shorter tokens get a warning: /metrics faces whoever reaches the API server.
MIN_TOKEN_LENGTH = 32
PREFIX = "registry_replication"
# The status page's repository states, as label values.
STATE_LABELS = {
    RepositoryState.SYNCED: "synced",
    RepositoryState.PENDING: "pending",
    RepositoryState.FAILED: "failed",
    RepositoryState.DAMAGED: "damaged",
    RepositoryState.NEVER_SYNCED: "never",
}


def figures(store: Store, now: dt.datetime | None = None) -> dict[str, Any]:
    """Every metric's current value, from the store alone."""
    now = now or dt.datetime.now(dt.UTC)
    page = statuses.status(store, now=now, with_history=False)
    counts = store.queue.status_counts()
    queue = store.queue.stats()
    states = {label: page["states"].get(state, 0) for state, label in STATE_LABELS.items()}
    buckets, count, total = store.history.push_latency_histogram()
    return {
        "events_pending": counts[EventStatus.PENDING] + counts[EventStatus.PROCESSING],
        "oldest_pending_event_age_seconds": queue["oldest_waiting_seconds"] or 0.0,
        "events_total": {
            status: counts[status]
            for status in (EventStatus.DONE, EventStatus.FAILED, EventStatus.REJECTED)
        },
        "repositories": states,
        "tags": {
            side: sum(r[f"tags_{side}"] or 0 for r in page["repositories"])
            for side in ("primary", "secondary")
        },
        "bytes_copied_total": store.history.copied_bytes_total(),
        "last_success_timestamp_seconds": {
            dag_id: at.timestamp()
            for dag_id, at in sorted(store.history.last_success_times().items())
        },
        "push_to_replica_seconds": {
            "buckets": list(zip(LATENCY_BUCKETS, buckets)),
            "count": count,
            "sum": total,
        },
        # Per level, the oldest of the repositories' last verifications at that level: what an
        # alert on "no blobs verification for 8 days" reads.
        "last_verified_timestamp_seconds": {
            level: min(at.timestamp() for at in stamps)
            for level in VerifyLevel
            if (
                stamps := [
                    dt.datetime.fromisoformat(r["verified_at"])
                    for r in page["repositories"]
                    if r.get("verified_level") == level and r.get("verified_at")
                ]
            )
        },
    }


class StoreCollector(Collector):
    """Reads the store on each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        f = figures(self.store)
        yield GaugeMetricFamily(
            f"{PREFIX}_events_pending",
            "Events waiting to be replicated (pending or being processed).",
            value=f["events_pending"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_oldest_pending_event_age_seconds",
            "Age of the oldest waiting event (0 when none).",
            value=f["oldest_pending_event_age_seconds"],
        )
        events = CounterMetricFamily(
            f"{PREFIX}_events", "Events by final outcome.", labels=["outcome"]
        )
        for outcome, n in f["events_total"].items():
            events.add_metric([outcome], n)
        yield events
        repositories = GaugeMetricFamily(
            f"{PREFIX}_repositories", "Repositories by replication state.", labels=["state"]
        )
        for state, n in f["repositories"].items():
            repositories.add_metric([state], n)
        yield repositories
        tags = GaugeMetricFamily(
            f"{PREFIX}_tags", "Tags per side, as of the last verification.", labels=["side"]
        )
        for side, n in f["tags"].items():
            tags.add_metric([side], n)
        yield tags
        yield CounterMetricFamily(
            f"{PREFIX}_bytes_copied",
            "Blob bytes copied to the secondary.",
            value=f["bytes_copied_total"],
        )
        success = GaugeMetricFamily(
            f"{PREFIX}_last_success_timestamp_seconds",
            "When each DAG's latest successful run finished.",
            labels=["dag_id"],
        )
        for dag_id, at in f["last_success_timestamp_seconds"].items():
            success.add_metric([dag_id], at)
        yield success
        verified = GaugeMetricFamily(
            f"{PREFIX}_last_verified_timestamp_seconds",
            "Per verification level (blobs, content), the oldest of the repositories' last "
            "verifications at that level.",
            labels=["level"],
        )
        for level, at in f["last_verified_timestamp_seconds"].items():
            verified.add_metric([level], at)
        yield verified
        latency = f["push_to_replica_seconds"]
        yield HistogramMetricFamily(
            f"{PREFIX}_push_to_replica_seconds",
            "From the registry's event timestamp to the event's acknowledgement.",
            buckets=[(_bound(b), n) for b, n in latency["buckets"]] + [("+Inf", latency["count"])],
            sum_value=latency["sum"],
        )


def exposition(store: Store) -> bytes:
    """The text exposition format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(registry)


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def configured_token() -> str | None:
    """The ``metrics_token`` setting (None: no endpoint); a short one is warned about."""
    token = current().metrics_token or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        _warn_short_token(len(token))
    return token


@functools.cache
def _warn_short_token(length: int) -> None:
    """Once per process and length: the token is read on every scrape."""
    log.warning(
        "%s is %d characters long: use at least %d random ones (openssl rand -hex 32); "
        "a short token can be guessed by whoever reaches /metrics",
        variable("metrics_token"),
        length,
        MIN_TOKEN_LENGTH,
    )


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))
