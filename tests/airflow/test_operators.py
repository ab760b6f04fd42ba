"""``ReplicateImagesOperator`` in a build pipeline's DAG, run with ``dag.test()`` against real
registries; skopeo checks what each side serves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from airflow.sdk import DAG

from replication_harness import images
from replication_harness.skopeo import skopeo_raw

LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"


PIPELINE = Path(__file__).parent / "pipeline"


@pytest.fixture
def pipeline(monkeypatch) -> DAG:
    """``pipeline/build_pipeline.py`` as a DAG bundle of its own next to the project's DAGs
    (dag.test() runs only DAGs a bundle holds)."""
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag

    bundles = [
        {
            "name": "dags-folder",
            "classpath": LOCAL_BUNDLE,
            "kwargs": {"path": conf.get("core", "dags_folder")},
        },
        {"name": "pipeline", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(PIPELINE)}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(PIPELINE))
    assert bag.import_errors == {}
    return bag.get_dag("build_pipeline")


def sha256(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_replicates_the_pushed_tag_and_returns_counts(
    airflow_db, connections, pipeline, primary, secondary, primary_writer, secondary_reader
):
    factory = images.ImageFactory()
    multi = images.push(primary_writer, "team/app", factory.multi_arch(), ["1.4"])
    images.push(primary_writer, "team/app", factory.make(), ["1.3"])  # not asked for
    run = pipeline.test(run_conf={"repository": "team/app", "tags": "1.4"})
    assert run.state == "success"
    assert sha256(skopeo_raw(primary, "team/app", "1.4")) == multi
    assert sha256(skopeo_raw(secondary, "team/app", "1.4")) == multi
    assert secondary_reader.tags("team/app") == ["1.4"]
    counts = run.get_task_instance("replicate").xcom_pull(task_ids="replicate")
    assert (
        counts["images pushed"] == 1 and counts["manifests pushed"] == 3
    )  # the index and its 2 children
    assert counts["blobs copied"] > 0 and counts["bytes copied"] > 0


def test_failure_names_the_tag_and_the_registry_error(
    airflow_db, connections, pipeline, primary, primary_writer, secondary_reader, capsys
):
    image = images.ImageFactory().make()
    images.push(primary_writer, "team/app", image, ["broken"])
    rotten = image.blobs[-1]
    primary.blob_path(rotten.digest).write_bytes(b"\0" * rotten.size)  # bit rot on the primary
    run = pipeline.test(run_conf={"repository": "team/app", "tags": "broken, 9.9"})
    assert run.state == "failed"
    # The task's log (Airflow writes it to stdout under dag.test()): its error and exception.
    log = capsys.readouterr().out
    errors = log[log.index("not replicated") :]
    assert f"team/app:broken ({image.digest}): get blob team/app@{rotten.digest}" in errors
    assert "DIGEST_INVALID" in errors and "re-pushed" in errors
    assert "team/app:9.9 is not on the primary" in errors
    assert secondary_reader.head_manifest("team/app", "broken") is None


def test_secondaries_must_be_configured_ones(monkeypatch):
    from registry_replication.airflow.operators import ReplicateImagesOperator

    monkeypatch.setenv(
        "AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS", "registry_secondary,registry_eu"
    )
    chosen = ReplicateImagesOperator(task_id="r", repositories="a", secondaries="registry_eu")
    assert chosen._secondaries() == ["registry_eu"]
    every = ReplicateImagesOperator(task_id="r", repositories="a")
    assert every._secondaries() == ["registry_secondary", "registry_eu"]
    alias = ReplicateImagesOperator(task_id="r", repositories="a", secondary_conn_id="geo")
    assert alias._secondaries() == ["geo"]
    wrong = ReplicateImagesOperator(task_id="r", repositories="a", secondaries=["registry_ap"])
    with pytest.raises(ValueError, match="registry_ap is not a configured secondary"):
        wrong._secondaries()


def test_replicates_to_every_configured_secondary(
    airflow_db,
    connections,
    pipeline,
    primary,
    secondary,
    primary_writer,
    eu_configured,
):
    """Settings are read at each task's run (``current()``): the operator serves both."""
    pushed = images.push(primary_writer, "team/app", images.ImageFactory().make(), ["2.0"])
    run = pipeline.test(run_conf={"repository": "team/app", "tags": "2.0"})
    assert run.state == "success"
    for site in (secondary, eu_configured):
        assert sha256(skopeo_raw(site, "team/app", "2.0")) == pushed
    counts = run.get_task_instance("replicate").xcom_pull(task_ids="replicate")
    assert counts["images pushed"] == 2  # one per secondary
