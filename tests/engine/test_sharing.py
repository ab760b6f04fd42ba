"""Shared state: a distributed executor with a local store or artifacts path is refused at once,
by tasks, the webhook and the status page, naming the setting to change; run artifacts follow
the store, and one another host cannot read says where it was written."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from registry_replication.engine import artifacts, sharing
from registry_replication.engine.snapshot import COLUMNS
from registry_replication.outcomes import Snapshot
from registry_replication.store import Store, retention
from registry_replication.store.artifacts import ArtifactRecords
from registry_replication.transport.client import Manifest
from registry_replication.web.notifications import ENVELOPE_MEDIA_TYPE
from registry_replication.web.webhook import create_app

PG = "postgresql+psycopg2://replication:s3cret@db.example.com/replication"
RUN_AT = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)
KEY = "registry_reconcile/20261128T060000_manual__2026-11-28"


@pytest.mark.parametrize(
    "executor, distributed",
    [
        ("LocalExecutor", False),
        ("SequentialExecutor", False),
        ("airflow.executors.local_executor.LocalExecutor", False),
        ("CeleryExecutor", True),
        ("KubernetesExecutor", True),
        ("LocalExecutor,CeleryExecutor", True),
        ("fast:airflow.providers.celery.executors.celery_executor.CeleryExecutor", True),
        ("my_company.executors.BatchExecutor", True),
    ],
)
def test_which_executors_run_tasks_on_other_machines(executor, distributed):
    assert sharing.distributed(executor) is distributed


def test_a_local_store_or_artifacts_path_is_refused_only_on_a_distributed_executor():
    sqlite = "sqlite:////home/airflow/registry_replication.db"
    assert (
        sharing.problems(
            "LocalExecutor",
            store_url=sqlite,
            artifacts_path="file:///tmp/a",
            artifacts_path_shared=False,
        )
        == []
    )
    [store] = sharing.problems(
        "CeleryExecutor", store_url=sqlite, artifacts_path="", artifacts_path_shared=False
    )
    assert "/home/airflow/registry_replication.db" in store
    assert f"REGISTRY_REPLICATION_DB_URL={sharing.STORE_EXAMPLE}" in store
    for local in ("file:///srv/artifacts", "/srv/artifacts"):
        [path] = sharing.problems(
            "CeleryExecutor", store_url=PG, artifacts_path=local, artifacts_path_shared=False
        )
        assert f"artifacts_path = {local}" in path and sharing.ARTIFACTS_EXAMPLE in path
        assert "AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH_SHARED=True" in path
        assert (
            sharing.problems(
                "CeleryExecutor", store_url=PG, artifacts_path=local, artifacts_path_shared=True
            )
            == []
        )
    assert (
        sharing.problems(
            "KubernetesExecutor",
            store_url=PG,
            artifacts_path="s3://b/rr",
            artifacts_path_shared=False,
        )
        == []
    )
    assert (
        sharing.problems(
            "CeleryExecutor", store_url=PG, artifacts_path="", artifacts_path_shared=False
        )
        == []
    )


def test_tasks_refuse_at_once_without_retries(monkeypatch, postgres):
    from airflow.sdk.exceptions import AirflowFailException

    from registry_replication.airflow import deployment

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.delenv("AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH", raising=False)
    ran = []
    task = deployment.checked(lambda: ran.append(1))
    with pytest.raises(AirflowFailException, match="set REGISTRY_REPLICATION_DB_URL"):
        task()
    assert ran == []
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", PG)
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH", "file:///srv/a")
    with pytest.raises(AirflowFailException, match="artifacts_path = file:///srv/a"):
        task()
    monkeypatch.delenv("AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH")
    # A shared store: the task runs (opening it first, to adopt any rows from before several
    # secondaries).
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", postgres.create_database("shared"))
    task()
    assert ran == [1] and deployment.artifacts_base() is None  # the artifacts follow the store


def test_the_webhook_refuses_to_store_events_no_worker_would_see(tmp_path, monkeypatch):
    from registry_replication.airflow import deployment

    store = Store(f"sqlite:///{tmp_path / 'api-server.db'}")
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", store.url)
    client = TestClient(create_app(store, secret="s" * 32, refusal=deployment.refusal))
    envelope = json.dumps(
        {
            "events": [
                {
                    "id": "e1",
                    "timestamp": "2026-11-28T06:00:00Z",
                    "action": "push",
                    "target": {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "repository": "group/app",
                        "tag": "1.0",
                        "digest": "sha256:" + "a" * 64,
                    },
                }
            ]
        }
    )
    headers = {"Authorization": "s" * 32, "Content-Type": ENVELOPE_MEDIA_TYPE}
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    refused = client.post("/events", content=envelope, headers=headers)
    assert refused.status_code == 503  # the registry keeps the envelope and retries it
    assert "REGISTRY_REPLICATION_DB_URL=postgresql" in refused.json()["detail"]
    assert store.queue.stats()["counts"]["pending"] == 0
    # The runs' artifacts are no concern of the webhook's: with a shared store, it stores.
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH", "file:///srv/a")
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", PG)
    assert "artifacts_path" in deployment.problems()[0] and deployment.refusal() is None
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", store.url)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")  # airflow standalone
    assert client.post("/events", content=envelope, headers=headers).json()["stored"] == 1


def test_the_status_page_shows_the_misconfiguration_first(tmp_path):
    from registry_replication.airflow.status_render import render
    from registry_replication.web.status import status

    store = Store(f"sqlite:///{tmp_path / 'page.db'}")
    problem = (
        "the replication store is the SQLite file x. What to do: set REGISTRY_REPLICATION_DB_URL"
    )
    page = render({"misconfiguration": [problem], **status(store)})
    assert page.index('id="misconfiguration"') < page.index('id="repositories-in-sync"')
    assert problem in page
    assert 'id="misconfiguration"' not in render({"misconfiguration": [], **status(store)})


def folder(store: Store, host: str, files=None) -> artifacts.RunFolder:
    return artifacts.RunFolder(ArtifactRecords(store.engine), KEY, RUN_AT, host=host, files=files)


def round_trip(run: artifacts.RunFolder) -> None:
    """Every kind of run file written to ``run`` reads back the same."""
    tags = pd.DataFrame([["group/app", "v1", "sha256:" + "a" * 64, "m"]], columns=COLUMNS)
    artifacts.write_snapshot(run, "snapshot_primary", Snapshot("https://p", tags, ["cut"], []))
    back = artifacts.read_snapshot(run, "snapshot_primary")
    assert back.tags.equals(tags) and back.errors == ["cut"]
    artifacts.write_json_lines(run / "r.jsonl", [{"a": 1}])
    assert artifacts.read_json_lines(run / "r.jsonl") == [{"a": 1}]
    raw = b'{"x": 1}'
    manifest = Manifest(raw, "m", "sha256:" + hashlib.sha256(raw).hexdigest())
    artifacts.write_manifests(run / "m.parquet", [("group/app", manifest)])
    assert artifacts.read_manifests(run / "m.parquet") == {("group/app", manifest.digest): manifest}


def test_run_files_in_the_store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    round_trip(folder(store, "worker1"))
    # Written on worker1, read on worker2: the store is what they share.
    assert artifacts.read_json_lines(folder(store, "worker2") / "r.jsonl") == [{"a": 1}]
    row = ArtifactRecords(store.engine).find(KEY, "snapshot_primary.parquet")
    assert row["host"] == "worker1" and row["size"] == len(row["data"]) > 0
    with pytest.raises(
        artifacts.ArtifactUnreadable,
        match=r"rr_run_artifacts: registry_reconcile/.*/changes.parquet: no task "
        r"of this run recorded writing it \(this host: worker2\).*"
        r"artifacts_retention_days",
    ):
        artifacts.read_frame(folder(store, "worker2") / "changes.parquet")
    # A write cut short by an error stores nothing.
    with pytest.raises(RuntimeError), (folder(store, "worker1") / "half.jsonl").open("wb") as out:
        out.write(b"{")
        raise RuntimeError("listing failed")
    assert ArtifactRecords(store.engine).find(KEY, "half.jsonl") is None


def test_run_files_in_a_postgresql_store(postgres):
    round_trip(folder(Store(postgres.create_database("artifacts")), "worker1"))


def test_a_file_another_host_wrote_says_where_and_what_to_change(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    # Each "machine" has a directory of its own at the same path: two directories here.
    writer = folder(store, "127.0.0.2", files=tmp_path / "worker1" / KEY)
    round_trip(writer)
    reader = folder(store, "127.0.0.3", files=tmp_path / "worker2" / KEY)
    with pytest.raises(artifacts.ArtifactUnreadable) as caught:
        artifacts.read_snapshot(reader, "snapshot_primary")
    message = str(caught.value)
    assert f"{tmp_path}/worker2/{KEY}/snapshot_primary.json" in message
    assert "written by 127.0.0.2 at" in message and "this host (127.0.0.3)" in message
    assert "artifacts_path" in message and "s3://" in message


def test_run_files_go_with_artifacts_retention(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    records = ArtifactRecords(store.engine)
    old, new = RUN_AT - dt.timedelta(days=8), RUN_AT
    for key, run_at in (("d/old", old), ("d/new", new)):
        for name in ("a", "b"):
            records.record(key, name, run_at=run_at, host="h", data=b"x")
    assert retention.prune_run_artifacts(store.engine, RUN_AT - dt.timedelta(days=7)) == ["d/old"]
    assert records.find("d/old", "a") is None and records.find("d/new", "b")["data"] == b"x"
