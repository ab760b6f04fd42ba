"""Prometheus metrics, read from the replication store on every scrape.

Every API server reads the same store, so every one reports the same numbers. A custom
collector over a fresh ``CollectorRegistry`` (never the process-global one) reads the store per
scrape; ``figures()`` is the same data as plain numbers, which the tasks also send to Airflow's
``Stats`` (StatsD or OpenTelemetry).

Every figure of one secondary carries the label ``secondary`` (its connection id); the counters
stay whole per secondary when retention prunes their rows (``rr_carried_totals`` is kept per
secondary). Rejected events are no secondary's: their count has ``secondary=""``.
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

from registry_replication.outcomes import EventStatus, RepositoryState
from registry_replication.settings import current, variable
from registry_replication.store import Store
from registry_replication.store.history import LATENCY_BUCKETS
from registry_replication.store.schema import NO_SECONDARY
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
    """Every metric's current value, from the store alone; the per-secondary ones keyed by
    the secondary's connection id."""
    now = now or dt.datetime.now(dt.UTC)
    rows = statuses.status(store, now=now, with_history=False)["secondaries"]
    names = [r["secondary"] for r in rows]
    finished = {s: store.queue.status_counts(s) for s in names}
    return {
        "events_pending": {r["secondary"]: r["backlog"] for r in rows},
        "oldest_pending_event_age_seconds": {
            r["secondary"]: r["oldest_waiting_seconds"] or 0.0 for r in rows
        },
        "events_total": {
            **{
                s: {o: counts[o] for o in (EventStatus.DONE, EventStatus.FAILED)}
                for s, counts in finished.items()
            },
            NO_SECONDARY: {EventStatus.REJECTED: store.queue.status_counts()[EventStatus.REJECTED]},
        },
        "repositories": {
            r["secondary"]: {label: r["states"][state] for state, label in STATE_LABELS.items()}
            for r in rows
        },
        "tags": {
            r["secondary"]: {side: r[f"tags_{side}"] for side in ("primary", "secondary")}
            for r in rows
        },
        "bytes_copied_total": {s: store.history.copied_bytes_total(s) for s in names},
        "last_success_timestamp_seconds": {
            dag_id: at.timestamp()
            for dag_id, at in sorted(store.history.last_success_times().items())
        },
        "push_to_replica_seconds": {s: _histogram(store, s) for s in names},
        # Per secondary and level, the oldest of the repositories' last verifications at that
        # level: what an alert on "no blobs verification for 8 days" reads.
        "last_verified_timestamp_seconds": {
            r["secondary"]: {
                level: dt.datetime.fromisoformat(at).timestamp()
                for level, at in r["last_verified"].items()
            }
            for r in rows
        },
    }


def _histogram(store: Store, secondary: str) -> dict[str, Any]:
    buckets, count, total = store.history.push_latency_histogram(secondary)
    return {"buckets": list(zip(LATENCY_BUCKETS, buckets)), "count": count, "sum": total}


# Each family of plain samples: its type, name, help and labels; its samples are the figure of
# the same name (``FIGURE_OF`` where it differs), nested one dict level per label.
FAMILIES: tuple[tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, list[str]], ...] = (
    (
        GaugeMetricFamily,
        "events_pending",
        "Events waiting to be replicated to a secondary (pending or being processed).",
        ["secondary"],
    ),
    (
        GaugeMetricFamily,
        "oldest_pending_event_age_seconds",
        "Age of the oldest event waiting for a secondary (0 when none).",
        ["secondary"],
    ),
    (
        CounterMetricFamily,
        "events",
        "Deliveries to each secondary by final outcome (rejected events: no secondary's).",
        ["secondary", "outcome"],
    ),
    (
        GaugeMetricFamily,
        "repositories",
        "Repositories by replication state on each secondary.",
        ["secondary", "state"],
    ),
    (
        GaugeMetricFamily,
        "tags",
        "Tags per side, as of each secondary's last verification.",
        ["secondary", "side"],
    ),
    (
        CounterMetricFamily,
        "bytes_copied",
        "Blob bytes copied to each secondary.",
        ["secondary"],
    ),
    (
        GaugeMetricFamily,
        "last_success_timestamp_seconds",
        "When each DAG's latest successful run finished.",
        ["dag_id"],
    ),
    (
        GaugeMetricFamily,
        "last_verified_timestamp_seconds",
        "Per secondary and verification level (blobs, content), the oldest of the "
        "repositories' last verifications at that level.",
        ["secondary", "level"],
    ),
)
FIGURE_OF = {"events": "events_total", "bytes_copied": "bytes_copied_total"}


def _flattened(values: Any, depth: int) -> Iterator[tuple[list[str], Any]]:
    """The samples of ``values`` nested ``depth`` dicts deep: (label values, value)."""
    if depth == 0:
        yield [], values
        return
    for key, inner in values.items():
        for keys, value in _flattened(inner, depth - 1):
            yield [key, *keys], value


class StoreCollector(Collector):
    """Reads the store on each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        f = figures(self.store)
        for kind, name, doc, labels in FAMILIES:
            family = kind(f"{PREFIX}_{name}", doc, labels=labels)
            for values, n in _flattened(f[FIGURE_OF.get(name, name)], len(labels)):
                family.add_metric(values, n)
            yield family
        latencies = HistogramMetricFamily(
            f"{PREFIX}_push_to_replica_seconds",
            "From the registry's event timestamp to the event's acknowledgement by a secondary.",
            labels=["secondary"],
        )
        for secondary, latency in f["push_to_replica_seconds"].items():
            latencies.add_metric(
                [secondary],
                buckets=[(_bound(b), n) for b, n in latency["buckets"]]
                + [("+Inf", latency["count"])],
                sum_value=latency["sum"],
            )
        yield latencies


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
