"""Snapshots, differences and plans go to the run's folder; XCom carries names and counts."""

from __future__ import annotations

import json
import os

import sqlalchemy as sa

from replication_harness import images
from replication_harness.dag_runs import run

GROUP = "registry_secondary"  # the task group of the one configured secondary


def test_reconcile_writes_its_artifacts_to_storage_and_removes_old_runs(
    airflow_db, connections, primary_writer, secondary_reader, tmp_path, monkeypatch, caplog
):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    base = tmp_path / "artifacts"
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH", f"file://{base}")
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_RETENTION_DAYS", "7")
    old = base / "registry_reconcile" / "20200101T000000_scheduled__2020-01-01T00_00_00_00_00"
    old.mkdir(parents=True)
    (old / "snapshot_primary.parquet").write_bytes(b"old")
    recent = base / "registry_sync" / "not-a-run-folder"
    recent.mkdir(parents=True)
    factory = images.ImageFactory(layer_size=64 * 1024)
    pushed = {f"v{i}": factory.make() for i in range(30)}
    for tag, img in pushed.items():
        images.push(primary_writer, "group/app", img, [tag])

    caplog.set_level("INFO", logger="registry_replication.airflow")
    result = run("registry_reconcile")
    assert result.state == "success"
    # It wrote to the secondary: its listing plus the acknowledged writes are in sync.
    assert "changed nothing on registry_secondary" not in caplog.text
    assert "verification: 1 of 1 repositories in sync" in caplog.text
    for tag, img in pushed.items():
        assert secondary_reader.head_manifest("group/app", tag).digest == img.digest

    [folder] = [f for f in (base / "registry_reconcile").iterdir()]
    assert folder.name.endswith(result.run_id.replace(":", "_").replace("+", "_"))
    # The primary's snapshot at the top, each secondary's files in its own subfolder.
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {
        "snapshot_primary.parquet",
        "snapshot_primary.json",
        "registry_secondary/snapshot_secondary.parquet",
        "registry_secondary/snapshot_secondary.json",
        "registry_secondary/changes.parquet",
        "registry_secondary/blobs-00000.parquet",
        "registry_secondary/images-00000.parquet",
    } <= names
    assert not old.exists() and recent.exists()  # only our run folders past the retention go

    with create_session() as session:
        rows = session.scalars(sa.select(XComModel).where(XComModel.run_id == result.run_id)).all()
        values = {(row.task_id, row.key): XComModel.deserialize_value(row) for row in rows}
    assert values[("snapshot_primary", "return_value")]["tags"] == 30
    assert values[(f"{GROUP}.snapshot_secondary", "return_value")]["tags"] == 0
    assert values[(f"{GROUP}.diff", "return_value")]["changes"] == 30
    # Nothing that grows with the tags but the batch list: each entry a label and a file name.
    assert all(
        set(batch) == {"label", "file"} for batch in values[(f"{GROUP}.plan", "return_value")]
    )
    # The copy tasks' records are in the run's folder; XCom names the file and counts.
    copied = values[(f"{GROUP}.copy_blobs", "results")]
    assert copied["failed"] == 0 and copied["summary"]["blobs copied"] > 0
    records = [json.loads(line) for line in (folder / copied["file"]).read_text().splitlines()]
    assert len(records) == copied["summary"]["blobs copied"] + copied["summary"]["blobs mounted"]
    pushed_ref = values[(f"{GROUP}.push_manifests", "results")]
    assert pushed_ref["summary"]["images pushed"] == 30
    assert {
        tag
        for line in (folder / pushed_ref["file"]).read_text().splitlines()
        for tag in json.loads(line)["tags"]
    } == set(pushed)
    assert values[("report", "return_value")]["images pushed"] == 30
    for (task_id, key), value in values.items():
        assert len(json.dumps(value)) < 2048, (task_id, key)


def test_a_no_op_reconcile_verifies_the_secondary_it_listed_once(
    airflow_db, connections, primary_writer, secondary_reader, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH", f"file://{tmp_path}")
    img = images.ImageFactory(layer_size=16 * 1024).make()
    images.push(primary_writer, "group/app", img, ["v1"])
    assert run("registry_reconcile").state == "success"
    caplog.clear()
    caplog.set_level("INFO", logger="registry_replication.airflow")
    assert run("registry_reconcile").state == "success"
    assert "changed nothing on registry_secondary" in caplog.text
    assert "verification: 1 of 1 repositories in sync" in caplog.text


def test_without_artifacts_path_the_runs_files_follow_a_shared_store(
    airflow_db, connections, primary_writer, secondary_reader, postgres, monkeypatch
):
    from airflow.configuration import AIRFLOW_HOME
    from airflow.utils.net import get_hostname

    from registry_replication.store import Store
    from registry_replication.store.schema import run_artifacts

    store = Store(postgres.create_database("dag_artifacts"))
    monkeypatch.setenv("REGISTRY_REPLICATION_DB_URL", store.url)
    monkeypatch.delenv("AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH", raising=False)
    factory = images.ImageFactory(layer_size=16 * 1024)
    pushed = {f"v{i}": factory.make() for i in range(3)}
    for tag, img in pushed.items():
        images.push(primary_writer, "group/app", img, [tag])

    result = run("registry_reconcile")
    assert result.state == "success"
    for tag, img in pushed.items():
        assert secondary_reader.head_manifest("group/app", tag).digest == img.digest
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(run_artifacts)).mappings().all()
    [folder] = {row["folder"] for row in rows}
    assert folder.startswith("registry_reconcile/") and folder.endswith(
        result.run_id.replace(":", "_").replace("+", "_")
    )
    assert {
        "snapshot_primary.parquet",
        "registry_secondary/snapshot_secondary.json",
        "registry_secondary/changes.parquet",
        "registry_secondary/blobs-00000.parquet",
        "registry_secondary/blobs-00000.results.jsonl",
        "registry_secondary/images-00000.results.jsonl",
    } <= {row["name"] for row in rows}
    assert all(row["data"] is not None and row["host"] == get_hostname() for row in rows)
    local = f"{AIRFLOW_HOME}/registry_replication/artifacts/{folder}"
    assert not os.path.exists(local)  # nothing went to this machine's disk
