"""Replication status: Geo's "verify replication" view, assembled from the store alone.

``status(store)`` reads only the event store (what the DAGs and the webhook recorded), never a
registry, so a page load costs a few queries (a few more per secondary) however large the
registries are. Everything in the result is JSON-ready (ISO 8601 times, plain numbers and
strings): the JSON endpoint returns it as is and the HTML page renders the very same dict.

Each secondary is named by its connection id: ``secondaries`` has one summary row per secondary,
and every repository row, failed layer and dead letter names its ``secondary``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from registry_replication.outcomes import EventStatus, RepositoryState, VerifyLevel
from registry_replication.run_outcome import recorded_problems
from registry_replication.settings import RECONCILE_DAG_ID, current
from registry_replication.store import Store

# The lag chart: the last day, pending depth as its maximum per 5-minute bucket.
HISTORY = dt.timedelta(hours=24)
DEPTH_BUCKET = dt.timedelta(minutes=5)
MAX_LATENCY_POINTS = 2000


def status(
    store: Store,
    *,
    ui_url: str = "",
    now: dt.datetime | None = None,
    with_history: bool = True,
    secondary: str | None = None,
) -> dict[str, Any]:
    """Everything the status page shows.

    ``ui_url`` is the Airflow UI's base URL (``[api] base_url``; empty: links are absolute
    paths on the same host as the page). ``with_history``: include the lag chart's series
    (the metrics leave them out: they read the last day's events). ``secondary``: the detail
    (repositories, their totals, failed layers, dead letters) of that secondary alone; the
    summary rows and the queue's totals stay every secondary's.
    """
    now = now or dt.datetime.now(dt.UTC)
    base = ui_url.rstrip("/")
    layers = [_failed_layer(row, base) for row in store.history.failed_layers()]
    repositories = _repositories(store, layers, now)
    names = _secondaries(current().secondaries, [r["secondary"] for r in repositories + layers])
    rows = [_secondary_row(store, s, repositories, layers) for s in names]
    if secondary is not None:
        repositories = [r for r in repositories if r["secondary"] == secondary]
        layers = [layer for layer in layers if layer["secondary"] == secondary]

    states = Counter(r["state"] for r in repositories)
    tags_total = sum(r["tags_primary"] or 0 for r in repositories)
    tags_in_sync = sum(_tags_in_sync(r) for r in repositories)
    reconcile = store.history.last_run(RECONCILE_DAG_ID)
    summary = (reconcile or {}).get("summary") or {}

    queue = store.queue.stats()
    counts = store.queue.status_counts()
    return {
        "generated_at": _iso(now),
        "secondary": secondary,
        "secondaries": rows,
        # Over (secondary, repository) pairs: one secondary's repositories when filtered.
        "backfill": {
            "repositories": _progress(states[RepositoryState.SYNCED], len(repositories)),
            "tags": _progress(tags_in_sync, tags_total),
            "bytes_copied": summary.get("bytes copied"),
            "blobs_copied": summary.get("blobs copied"),
        },
        "states": {state: states[state] for state in RepositoryState},
        "repositories": repositories,
        "failed_layers": layers,
        "queue": {
            "depth": counts[EventStatus.PENDING] + counts[EventStatus.PROCESSING],
            "counts": {s: counts[s] for s in EventStatus},
            "oldest_waiting_seconds": _round(queue["oldest_waiting_seconds"]),
        },
        "dead_letters": [
            _failed_event(row) for row in store.queue.dead_letters(limit=100, secondary=secondary)
        ],
        # Events the webhook stored but will not process (names out of grammar, malformed).
        "rejected_events": [
            _failed_event(row) for row in store.queue.events(status=EventStatus.REJECTED, limit=50)
        ],
        **({"history": history(store, now)} if with_history else {}),
        "last_reconcile": _run(reconcile, base, now) if reconcile else None,
    }


def _repositories(
    store: Store, layers: list[dict[str, Any]], now: dt.datetime
) -> list[dict[str, Any]]:
    """Each repository's row on each secondary, by secondary then repository."""
    layers_by_repo: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for layer in layers:
        layers_by_repo[layer["secondary"], layer["repository"]].append(layer)
    repositories = [
        _repository(row, layers_by_repo.get((row["secondary"], row["repository"]), []), now)
        for row in store.state.repository_states()
    ]
    # A layer can fail in a repository the verification has not reached yet.
    known = {(r["secondary"], r["repository"]) for r in repositories}
    for secondary, name in sorted(set(layers_by_repo) - known):
        repositories.append(
            _repository(
                {"secondary": secondary, "repository": name, "state": RepositoryState.FAILED},
                layers_by_repo[secondary, name],
                now,
            )
        )
    return sorted(repositories, key=lambda r: (r["secondary"], r["repository"]))


def _secondaries(configured: Sequence[str], recorded: Sequence[str]) -> list[str]:
    """The configured secondaries in their order, then any other the store has rows of (one
    no longer configured, or rows not adopted yet): none is hidden."""
    return list(configured) + sorted(set(recorded) - set(configured))


def _secondary_row(
    store: Store,
    secondary: str,
    repositories: list[dict[str, Any]],
    layers: list[dict[str, Any]],
) -> dict[str, Any]:
    """One secondary's summary: its repositories' states, its backlog and its verifications."""
    mine = [r for r in repositories if r["secondary"] == secondary]
    states = Counter(r["state"] for r in mine)
    queue = store.queue.stats(secondary)
    counts = queue["counts"]
    # Per level, the oldest of the repositories' last verifications at that level: how far
    # behind that site's verification is.
    verified = {
        level: min(stamps, key=dt.datetime.fromisoformat)
        for level in VerifyLevel
        if (
            stamps := [
                r["verified_at"]
                for r in mine
                if r["verified_level"] == level and r["verified_at"] is not None
            ]
        )
    }
    return {
        "secondary": secondary,
        "states": {state: states[state] for state in RepositoryState},
        "repositories": _progress(states[RepositoryState.SYNCED], len(mine)),
        "tags": _progress(
            sum(_tags_in_sync(r) for r in mine), sum(r["tags_primary"] or 0 for r in mine)
        ),
        "tags_primary": sum(r["tags_primary"] or 0 for r in mine),
        "tags_secondary": sum(r["tags_secondary"] or 0 for r in mine),
        "backlog": counts[EventStatus.PENDING] + counts[EventStatus.PROCESSING],
        "counts": counts,
        "oldest_waiting_seconds": _round(queue["oldest_waiting_seconds"]),
        "last_verified": verified,
        "failed_layers": sum(layer["secondary"] == secondary for layer in layers),
    }


def history(store: Store, now: dt.datetime) -> dict[str, Any]:
    """The lag chart's series over the last day: queue depth (every secondary's deliveries),
    push-to-replica (each point naming its secondary), bytes per run."""
    since = now - HISTORY
    buckets = int(HISTORY / DEPTH_BUCKET)
    changes = []
    for received, left in store.queue.queue_intervals(since):
        changes.append((received, 1))
        if left is not None:
            changes.append((max(left, received), -1))
    changes.sort()
    peak = [0] * buckets
    depth, i = 0, 0
    for b in range(buckets):
        end = since + DEPTH_BUCKET * (b + 1)
        peak[b] = depth  # what was waiting as the bucket opened
        while i < len(changes) and changes[i][0] < end:
            depth += changes[i][1]
            peak[b] = max(peak[b], depth)
            i += 1
    latencies = store.history.push_latencies(since)[-MAX_LATENCY_POINTS:]
    runs = [
        {
            "dag_id": r["dag_id"],
            "run_id": r["run_id"],
            "state": r["state"],
            "finished_at": _iso(_aware(r["finished_at"])),
            "bytes": int((r.get("summary") or {}).get("bytes copied") or 0),
        }
        for r in store.history.runs_since(since)
    ]
    return {
        "since": _iso(since),
        "until": _iso(now),
        "pending_depth": [
            {"at": _iso(since + DEPTH_BUCKET * b), "depth": n} for b, n in enumerate(peak)
        ],
        "push_to_replica": [
            {"at": _iso(at), "seconds": round(s, 3), "secondary": secondary}
            for at, s, secondary in latencies
        ],
        "bytes_per_run": runs,
    }


def task_log_url(
    base: str, dag_id: str, run_id: str, task_id: str, map_index: int | None = None
) -> str:
    """The Airflow 3 UI page of a task instance, whose first tab is its log.

    The UI's routes (``airflow/ui``): ``/dags/:dagId/runs/:runId/tasks/:taskId`` and, for a
    mapped task instance, ``.../tasks/:taskId/mapped/:mapIndex``; the log is the index tab.
    """
    url = f"{run_url(base, dag_id, run_id)}/tasks/{quote(task_id, safe='')}"
    if map_index is not None and map_index >= 0:
        url += f"/mapped/{map_index}"
    return url


def run_url(base: str, dag_id: str, run_id: str) -> str:
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def _repository(
    row: dict[str, Any], layers: list[dict[str, Any]], now: dt.datetime
) -> dict[str, Any]:
    stored = row.get("state")
    last_sync = _aware(row.get("last_sync_at"))
    verified = _aware(row.get("verified_at"))
    if stored == RepositoryState.DAMAGED:  # only a passing verification at its level clears it
        state = RepositoryState.DAMAGED
    elif stored == RepositoryState.SYNCED:
        state = RepositoryState.SYNCED
    elif stored == RepositoryState.FAILED or layers:
        state = RepositoryState.FAILED
    elif last_sync is None:
        state = RepositoryState.NEVER_SYNCED
    else:
        state = RepositoryState.PENDING
    return {
        "secondary": row["secondary"],
        "repository": row["repository"],
        "state": state,
        "tags_primary": row.get("tags_primary"),
        "tags_secondary": row.get("tags_secondary"),
        "checksum_primary": row.get("checksum_primary"),
        "checksum_secondary": row.get("checksum_secondary"),
        "checksums_match": (
            row.get("checksum_primary") is not None
            and row.get("checksum_primary") == row.get("checksum_secondary")
        ),
        "last_sync_at": _iso(last_sync),
        "last_sync_age_seconds": _age(last_sync, now),
        "last_error": row.get("last_error"),
        # The last blobs or content verification: synced says how deep it was looked at.
        "verified_level": row.get("verified_level"),
        "verified_at": _iso(verified),
        "verified_age_seconds": _age(verified, now),
        "damaged": sorted(row.get("damaged") or {}),
        "failed_layers": len(layers),
        "updated_at": _iso(_aware(row.get("updated_at"))),
    }


def _tags_in_sync(repo: dict[str, Any]) -> int:
    primary = repo["tags_primary"] or 0
    if repo["state"] == RepositoryState.SYNCED:
        return primary
    # Out of sync: at most the tags the secondary has (a count, not a per-tag check).
    return min(primary, repo["tags_secondary"] or 0)


def _failed_layer(row: dict[str, Any], base: str) -> dict[str, Any]:
    task_id = row.get("task_id")
    return {
        "secondary": row["secondary"],
        "repository": row["repository"],
        "digest": row["digest"],
        "size": row.get("size"),
        "status": row.get("status"),
        "code": row.get("code"),
        "error": row.get("error"),
        "dag_id": row["dag_id"],
        "run_id": row["run_id"],
        "task_id": task_id,
        "map_index": row.get("map_index"),
        "recorded_at": _iso(_aware(row.get("recorded_at"))),
        "log_url": (
            task_log_url(base, row["dag_id"], row["run_id"], task_id, row.get("map_index"))
            if task_id
            else run_url(base, row["dag_id"], row["run_id"])
        ),
    }


def _failed_event(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "secondary": row.get("secondary"),  # None: a rejected event, which is no secondary's
        "status": row["status"],
        "action": row["action"],
        "repository": row["repository"],
        "tag": row.get("tag"),
        "digest": row.get("digest"),
        "attempts": row.get("attempts"),
        "last_error": row.get("last_error"),
        "received_at": _iso(_aware(row.get("received_at"))),
        "updated_at": _iso(_aware(row.get("updated_at"))),
    }


def _run(row: dict[str, Any], base: str, now: dt.datetime) -> dict[str, Any]:
    finished = _aware(row.get("finished_at"))
    problems, summary = recorded_problems(row.get("summary"))
    return {
        "dag_id": row["dag_id"],
        "run_id": row["run_id"],
        "state": row["state"],
        "finished_at": _iso(finished),
        "age_seconds": _age(finished, now),
        "problems": problems,
        "summary": summary,
        "url": run_url(base, row["dag_id"], row["run_id"]),
    }


def _progress(done: int, total: int) -> dict[str, Any]:
    return {
        "in_sync": done,
        "total": total,
        "percent": round(100.0 * done / total, 1) if total else None,
    }


def _aware(value: Any) -> dt.datetime | None:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)  # SQLite returns naive UTC
    return value


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value else None


def _age(value: dt.datetime | None, now: dt.datetime) -> float | None:
    return _round((now - value).total_seconds()) if value else None


def _round(seconds: float | None) -> float | None:
    return round(seconds, 1) if seconds is not None else None
