"""The status page's data, from a store filled the way the DAGs and the webhook fill it."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from registry_replication.store import Store
from registry_replication.store.history import LATENCY_BUCKETS
from registry_replication.web.status import status, task_log_url

T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)
RUN_ID = "manual__2026-11-28T06:00:00+00:00"
ROTTEN = "sha256:" + "d" * 64
UI = "https://airflow.example.com"


@pytest.fixture
def store(ev, store: Store) -> Store:
    """The test's store (``tests/conftest.py``) as the tasks and the webhook leave it."""
    # What registry_reconcile's verify task writes...
    store.state.set_repository_state(
        "registry_secondary",
        [
            {
                "repository": "group/app",
                "state": "pending",
                "tags_primary": 4,
                "tags_secondary": 3,
                "checksum_primary": "a" * 64,
                "checksum_secondary": "b" * 64,
            },
            {
                "repository": "group/db",
                "state": "synced",
                "tags_primary": 5,
                "tags_secondary": 5,
                "checksum_primary": "c" * 64,
                "checksum_secondary": "c" * 64,
                "last_sync_at": T0,
                "last_error": None,
            },
            {
                "repository": "group/lib",
                "state": "pending",
                "tags_primary": 2,
                "tags_secondary": 1,
                "checksum_primary": "e" * 64,
                "checksum_secondary": "f" * 64,
                "last_sync_at": T0 - dt.timedelta(hours=2),
            },
            {
                "repository": "group/web",
                "state": "pending",
                "tags_primary": 1,
                "tags_secondary": 0,
                "checksum_primary": "9" * 64,
                "checksum_secondary": None,
            },
        ],
    )
    # ...and registry_events' replicate task for a repository whose event failed.
    store.state.set_repository_state(
        "registry_secondary",
        [
            {
                "repository": "group/api",
                "state": "failed",
                "last_sync_at": T0,
                "last_error": "HTTP 503 from the secondary",
            },
        ],
    )
    # registry_reconcile's report task: one failed layer in registry_secondary.copy_blobs map index 2.
    store.history.record_run(
        "registry_reconcile",
        RUN_ID,
        "failed",
        {
            "blobs copied": 7,
            "bytes copied": 3 * 1024 * 1024,
            "blobs failed": 1,
            "problems": ["1 blobs failed", "1 images not pushed"],
            "dry_run": False,
        },
        [
            {
                "repository": "group/app",
                "digest": ROTTEN,
                "size": 1024,
                "status": 400,
                "code": "DIGEST_INVALID",
                "error": "the blob's bytes hash to sha256:0",
                "task_id": "registry_secondary.copy_blobs",
                "map_index": 2,
                "secondary": "registry_secondary",
            }
        ],
    )
    # The webhook: three events waiting, one that ran out of attempts.
    store.queue.add(
        [
            ev(1, repository="group/new", tag="v1"),
            ev(2, repository="group/new", tag="v2"),
            ev(3, repository="group/new", tag="v3"),
        ],
        ["registry_secondary"],
    )
    owner, _ = store.queue.claim("registry_secondary", limit=1)
    assert store.queue.retry_later(
        "registry_secondary", owner, ["e1"], "HTTP 404 MANIFEST_UNKNOWN", max_attempts=1
    ) == ["e1"]
    return store


def test_totals_states_and_links(store):
    now = dt.datetime.now(dt.UTC)
    s = status(store, ui_url=UI + "/", now=now)

    states = {r["repository"]: r["state"] for r in s["repositories"]}
    assert states == {
        "group/api": "failed",
        "group/app": "failed",
        "group/db": "synced",
        "group/lib": "pending",
        "group/web": "never synced",
    }
    assert s["states"] == {"synced": 1, "pending": 1, "failed": 2, "damaged": 0, "never synced": 1}
    # Backfill progress: repositories synced of all known; tags on both sides.
    assert s["backfill"]["repositories"] == {"in_sync": 1, "total": 5, "percent": 20.0}
    assert s["backfill"]["tags"] == {
        "in_sync": 5 + 3 + 1 + 0,
        "total": 4 + 5 + 2 + 1,
        "percent": 75.0,
    }
    assert s["backfill"]["bytes_copied"] == 3 * 1024 * 1024
    assert s["backfill"]["blobs_copied"] == 7

    app = next(r for r in s["repositories"] if r["repository"] == "group/app")
    assert (app["tags_primary"], app["tags_secondary"]) == (4, 3)
    assert (app["checksum_primary"], app["checksum_secondary"]) == ("a" * 64, "b" * 64)
    assert app["checksums_match"] is False and app["failed_layers"] == 1
    db = next(r for r in s["repositories"] if r["repository"] == "group/db")
    assert db["checksums_match"] is True and db["last_sync_at"] == T0.isoformat()
    assert db["last_sync_age_seconds"] == pytest.approx((now - T0).total_seconds(), abs=0.1)
    api = next(r for r in s["repositories"] if r["repository"] == "group/api")
    assert api["last_error"] == "HTTP 503 from the secondary"

    [layer] = s["failed_layers"]
    assert (layer["repository"], layer["digest"], layer["code"], layer["status"]) == (
        "group/app",
        ROTTEN,
        "DIGEST_INVALID",
        400,
    )
    # The Airflow 3 UI's mapped task instance page, whose first tab is the log.
    run_path = "/dags/registry_reconcile/runs/manual__2026-11-28T06%3A00%3A00%2B00%3A00"
    assert layer["log_url"] == f"{UI}{run_path}/tasks/registry_secondary.copy_blobs/mapped/2"

    queue = s["queue"]
    assert queue["counts"] == {"pending": 2, "processing": 0, "done": 0, "failed": 1, "rejected": 0}
    assert queue["depth"] == 2 and queue["oldest_waiting_seconds"] >= 0
    [failed_event] = s["dead_letters"]
    assert (failed_event["id"], failed_event["last_error"]) == ("e1", "HTTP 404 MANIFEST_UNKNOWN")
    assert (failed_event["status"], failed_event["secondary"]) == ("failed", "registry_secondary")

    run = s["last_reconcile"]
    assert (run["run_id"], run["state"]) == (RUN_ID, "failed")
    assert run["problems"] == ["1 blobs failed", "1 images not pushed"]
    assert run["summary"]["bytes copied"] == 3 * 1024 * 1024 and "problems" not in run["summary"]
    assert run["url"] == f"{UI}{run_path}"
    json.dumps(s)  # served as is by the JSON endpoint


def test_a_rerun_replaces_the_failed_layers(store):
    store.history.record_run("registry_reconcile", "manual__2", "success", {"bytes copied": 0})
    s = status(store)
    assert s["failed_layers"] == []
    assert s["last_reconcile"]["run_id"] == "manual__2"
    assert {r["repository"]: r["state"] for r in s["repositories"]}["group/app"] == "never synced"


def test_a_failed_layer_in_a_repository_not_verified_yet(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'status.db'}")
    store.history.record_run(
        "registry_reconcile",
        "r1",
        "failed",
        {},
        [
            {
                "repository": "team/new",
                "digest": ROTTEN,
                "task_id": "registry_secondary.copy_blobs",
                "map_index": 0,
                "secondary": "registry_secondary",
            }
        ],
    )
    s = status(store)
    assert [(r["repository"], r["state"]) for r in s["repositories"]] == [("team/new", "failed")]
    assert s["failed_layers"][0]["log_url"] == (
        "/dags/registry_reconcile/runs/r1/tasks/registry_secondary.copy_blobs/mapped/0"
    )


def test_empty_store(tmp_path):
    s = status(Store(f"sqlite:///{tmp_path / 'status.db'}"))
    assert s["repositories"] == [] and s["failed_layers"] == [] and s["last_reconcile"] is None
    assert s["backfill"]["repositories"] == {"in_sync": 0, "total": 0, "percent": None}
    assert s["queue"] == {
        "depth": 0,
        "counts": {"pending": 0, "processing": 0, "done": 0, "failed": 0, "rejected": 0},
        "oldest_waiting_seconds": None,
    }
    assert s["dead_letters"] == [] and s["history"]["push_to_replica"] == []
    assert {point["depth"] for point in s["history"]["pending_depth"]} == {0}


def test_unmapped_task_log_url():
    assert task_log_url("", "d", "r", "t") == "/dags/d/runs/r/tasks/t"
    assert task_log_url("", "d", "r", "t", -1) == "/dags/d/runs/r/tasks/t"


def test_the_page_shows_what_the_json_has(store, tmp_path):
    from registry_replication.airflow.status_render import render

    s = status(store, ui_url=UI)
    page = render(s)
    assert f'data-digest="{ROTTEN}"' in page and "DIGEST_INVALID" in page
    for repo in s["repositories"]:
        assert f'data-repository="{repo["repository"]}" data-state="{repo["state"]}"' in page
    assert f'href="{s["failed_layers"][0]["log_url"]}"' in page
    assert "3.0 MiB" in page  # bytes copied by the last reconcile
    empty = render(status(Store(f"sqlite:///{tmp_path / 'empty.db'}")))
    # Only the summary table, its one row the configured secondary's with nothing recorded.
    assert empty.count("<table") == 1 and "No failed layers" in empty
    assert 'data-secondary="registry_secondary" data-backlog="0"' in empty


def test_history_depth_latency_and_bytes_per_run(ev, tmp_path):
    from registry_replication.airflow.status_render import render
    from registry_replication.store.schema import deliveries

    store = Store(f"sqlite:///{tmp_path / 'history.db'}")
    now = T0 + dt.timedelta(days=1)
    minutes = lambda m: now - dt.timedelta(minutes=m)  # noqa: E731
    store.queue.add(
        [
            ev(1, repository="group/new", tag="v1"),
            ev(2, repository="group/new", tag="v2"),
            ev(3, repository="group/new", tag="v3"),
            ev(4, repository="group/new", tag="v4"),
        ],
        ["registry_secondary"],
    )
    # (received, last update, status): e4 left the queue before the chart's day began.
    times = {
        "e1": (minutes(60), minutes(50), "done"),
        "e2": (minutes(55), minutes(55), "pending"),
        "e3": (minutes(10), minutes(9), "failed"),
        "e4": (minutes(3000), minutes(2990), "done"),
    }
    with store.engine.begin() as conn:
        for event_id, (received, updated, state) in times.items():
            conn.execute(
                deliveries.update()
                .where(deliveries.c.event_id == event_id)
                .values(received_at=received, updated_at=updated, status=state)
            )
    store.history.record_run("registry_reconcile", "r1", "success", {"bytes copied": 4096})

    h = status(store, now=now)["history"]
    depth = [p["depth"] for p in h["pending_depth"]]
    assert len(depth) == 288 and h["pending_depth"][-1]["at"] == minutes(5).isoformat()
    # Buckets of 5 minutes: e1 arrives 60 min ago, e2 55, e1 leaves 50, e3 from 10 to 9.
    assert depth[:276] == [0] * 276
    assert depth[276:] == [1, 2, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1]
    assert [r["bytes"] for r in h["bytes_per_run"]] == [4096]

    # Push-to-replica: from the registry's timestamp to the acknowledgement.
    [seconds] = store.history.record_acknowledged(
        "registry_secondary", [ev(1, repository="group/new", tag="v1")]
    )
    assert (
        store.history.record_acknowledged(
            "registry_secondary", [ev(1, repository="group/new", tag="v1")]
        )
        == []
    )  # once per event
    assert seconds == pytest.approx(
        (
            dt.datetime.now(dt.UTC) - ev(1, repository="group/new", tag="v1").timestamp
        ).total_seconds(),
        abs=5,
    )
    assert store.history.push_latency_histogram() == (
        [int(seconds <= bound) for bound in LATENCY_BUCKETS],
        1,
        seconds,
    )

    page = render(status(store, now=dt.datetime.now(dt.UTC)), csrf="t0ken")
    assert page.count('class="latency-point"') == 1 and 'data-bytes="4096"' in page
    assert 'data-secondary="registry_secondary" cx=' in page  # the point names its secondary
    # The dead letter (e3 failed) has a retry form carrying the CSRF token.
    assert 'name="event_id" value="e3"' in page and page.count('value="t0ken"') == 1


def test_a_summary_row_per_secondary_and_its_detail(ev, tmp_path, monkeypatch, set_app_state):
    """Two secondaries: each has its own backlog, states, verifications, failed layers and dead
    letters, and ``secondary=`` shows one's detail; the retry form names its secondary."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from registry_replication.airflow.status_page import actions_router
    from registry_replication.airflow.status_render import render

    monkeypatch.setenv(
        "AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS", "registry_secondary,registry_eu"
    )
    store = Store(f"sqlite:///{tmp_path / 'two.db'}")
    store.queue.add(
        [ev(i, repository="group/app", tag=f"v{i}") for i in (1, 2, 3)],
        ["registry_secondary", "registry_eu"],
    )
    # registry_secondary replicated all three; registry_eu is processing one and gave up e1.
    owner, claimed = store.queue.claim("registry_secondary", limit=10)
    store.queue.complete("registry_secondary", owner, [e.id for e in claimed])
    owner, _ = store.queue.claim("registry_eu", limit=1)
    assert store.queue.retry_later("registry_eu", owner, ["e1"], "HTTP 503", max_attempts=1) == [
        "e1"
    ]
    owner, [processing] = store.queue.claim("registry_eu", limit=1)
    set_app_state(
        store,
        "registry_secondary",
        "synced",
        3,
        last_sync_at=T0,
        verified_level="blobs",
        verified_at=T0,
    )
    set_app_state(store, "registry_eu", "pending", 1)
    store.history.record_run(
        "registry_reconcile",
        RUN_ID,
        "failed",
        {"problems": ["registry_eu: 1 blobs failed"]},
        [
            {
                "repository": "group/app",
                "digest": ROTTEN,
                "code": "BLOB_UPLOAD_INVALID",
                "task_id": "registry_eu.copy_blobs",
                "map_index": 0,
                "secondary": "registry_eu",
            }
        ],
    )

    s = status(store)
    rows = {r["secondary"]: r for r in s["secondaries"]}
    assert list(rows) == ["registry_secondary", "registry_eu"]  # the configured order
    here, eu = rows["registry_secondary"], rows["registry_eu"]
    assert (here["backlog"], here["oldest_waiting_seconds"], here["counts"]["done"]) == (0, None, 3)
    # e2 pending, e3 being processed: the backlog; e1 a dead letter.
    assert (eu["backlog"], eu["counts"]["failed"], eu["counts"]["done"]) == (2, 1, 0)
    assert eu["oldest_waiting_seconds"] >= 0 and processing.id == "e2"
    assert here["states"]["synced"] == 1 and eu["states"]["failed"] == 1  # its failed layer
    assert here["last_verified"] == {"blobs": T0.isoformat()} and eu["last_verified"] == {}
    assert (here["failed_layers"], eu["failed_layers"]) == (0, 1)
    assert (eu["tags_primary"], eu["tags_secondary"]) == (3, 1)
    # The queue's totals stay every secondary's, for the JSON's existing readers.
    assert s["queue"]["depth"] == 2 and s["queue"]["counts"]["done"] == 3
    assert [(r["secondary"], r["repository"], r["state"]) for r in s["repositories"]] == [
        ("registry_eu", "group/app", "failed"),
        ("registry_secondary", "group/app", "synced"),
    ]
    assert [(e["id"], e["secondary"]) for e in s["dead_letters"]] == [("e1", "registry_eu")]
    assert s["failed_layers"][0]["secondary"] == "registry_eu"

    # One secondary's detail; every summary row stays.
    mine = status(store, secondary="registry_secondary")
    assert [r["secondary"] for r in mine["secondaries"]] == ["registry_secondary", "registry_eu"]
    assert [r["secondary"] for r in mine["repositories"]] == ["registry_secondary"]
    assert mine["failed_layers"] == [] and mine["dead_letters"] == []
    assert mine["backfill"]["repositories"] == {"in_sync": 1, "total": 1, "percent": 100.0}

    page = render(s, csrf="t0ken")
    assert 'data-secondary="registry_eu" data-backlog="2"' in page
    assert 'data-secondary="registry_secondary" data-backlog="0"' in page
    assert 'name="secondary" value="registry_eu"' in page  # the retry form posts it
    assert 'href="status?secondary=registry_eu"' in page

    # The retry puts back the delivery to the secondary the form names, and no other.
    app = FastAPI()
    app.include_router(
        actions_router(store, retry_access=[], sync_access=[], api_url="", ui_url="")
    )
    client = TestClient(app)

    def retry_e1(secondary: str) -> httpx.Response:
        """Ask for e1's delivery to ``secondary`` again, with a bearer token: not forgeable
        cross-site, so no CSRF token."""
        return client.post(
            "/dead-letters/retry",
            data={"event_id": "e1", "secondary": secondary},
            headers={"Authorization": "Bearer anything"},
            follow_redirects=False,
        )

    refused = retry_e1("registry_secondary")
    assert refused.status_code == 409
    assert "has no failed delivery to registry_secondary" in refused.json()["detail"]
    retried = retry_e1("registry_eu")
    assert retried.status_code == 303
    eu = {r["secondary"]: r for r in status(store)["secondaries"]}["registry_eu"]
    assert (eu["backlog"], eu["counts"]["failed"]) == (3, 0)
