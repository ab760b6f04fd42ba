"""One reconcile serves every configured secondary: a task group each, the primary listed once.

The secondaries are read when the DAGs are parsed (``PARSED``), so each run goes in its own
process, configured as a deployment would be: two connections and
``[registry_replication] secondary_conn_ids``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry_replication.store import Store
from registry_replication.store.record import TagRecord
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.registry import LocalRegistry
from replication_harness.servers import Fault, FaultProxy
from replication_harness.skopeo import skopeo_raw

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("registry_secondary", "registry_eu")
REPOSITORIES = ("group/app", "group/db")

# Runs one DAG in this process and prints its state, each task's, and each task's queue and
# pool, as JSON.
RUN = (
    "import json, sys; from airflow.dag_processing.dagbag import DagBag;"
    f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r});"
    "dag_id, conf = sys.argv[1], json.loads(sys.argv[2]);"
    "dag = bag.get_dag(dag_id); run = dag.test(run_conf=conf);"
    "print(json.dumps({'state': run.state, 'tasks': "
    "{f'{ti.task_id}[{ti.map_index}]': ti.state for ti in run.get_task_instances()},"
    "'where': {t.task_id: [t.queue, t.pool] for t in dag.tasks}}))"
)


@pytest.fixture
def run_dag(
    airflow_db: None, store: Store, connections: None, eu: LocalRegistry
) -> Callable[..., dict[str, Any]]:
    """Run a DAG with both secondaries configured; returns its state and its tasks' states."""
    env = {
        **os.environ,
        "AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS": ",".join(NAMES),
        "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES": "0",
    }

    def run(
        dag_id: str = "registry_reconcile", conf: dict | None = None, *, eu_at: str | None = None
    ) -> dict[str, Any]:
        """``eu_at``: the URL the run reaches ``eu`` at (a proxy in front of it)."""
        started = time.perf_counter()
        connection = eu.connection(max_retries=1, backoff_seconds=0.05)
        done = subprocess.run(
            [sys.executable, "-c", RUN, dag_id, json.dumps(conf or {})],
            capture_output=True,
            text=True,
            timeout=600,
            env={
                **env,
                "AIRFLOW_CONN_REGISTRY_EU": json.dumps({**connection, "host": eu_at or eu.url}),
            },
        )
        assert done.returncode == 0, done.stderr[-3000:]
        print(f"{dag_id} ran in {time.perf_counter() - started:.1f}s")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["log"] = done.stdout + done.stderr
        return result

    return run


def exact(primary: LocalRegistry, secondary: LocalRegistry, pushed: dict) -> bool:
    """Every pushed tag's manifest on ``secondary`` byte for byte as on the primary."""
    return all(
        skopeo_raw(secondary, repository, tag) == skopeo_raw(primary, repository, tag)
        for repository, tag in pushed
    )


def push_two(primary_writer: Any) -> dict[tuple[str, str], str]:
    return {ref: digest for ref, (digest, _) in push_images(primary_writer).items()}


def push_images(primary_writer: Any) -> dict[tuple[str, str], tuple[str, images.Image]]:
    """Two images sharing their base layers, each with a layer of its own; by tag, their
    digests and images."""
    factory = images.ImageFactory()
    made = {repository: factory.make() for repository in REPOSITORIES}
    return {
        (repository, "v1"): (images.push(primary_writer, repository, img, ["v1"]), img)
        for repository, img in made.items()
    }


def unique_blob_bytes(pushed: dict[tuple[str, str], tuple[str, images.Image]]) -> int:
    blobs = {blob.digest: blob for _, img in pushed.values() for blob in img.all_blobs()}
    return sum(len(blob.data) for blob in blobs.values())


def states(result: dict[str, Any], prefix: str) -> set[str]:
    """The states of the tasks whose id (with its map index) starts with ``prefix``."""
    return {state for task, state in result["tasks"].items() if task.startswith(prefix)}


def failed(result: dict[str, Any]) -> set[str]:
    """The groups (or top-level tasks) with a failed task."""
    return {
        task.split("[")[0].rsplit(".", 1)[0]
        for task, state in result["tasks"].items()
        if state in ("failed", "upstream_failed")
    }


def test_one_run_backfills_every_secondary_then_does_nothing(
    run_dag, primary, secondary, eu, primary_writer
):
    """Each blob both secondaries lack is read from the primary once (``fanout_blobs``): the
    groups' ``copy_blobs`` have nothing left to copy."""
    made = push_images(primary_writer)
    pushed = {ref: digest for ref, (digest, _) in made.items()}
    served = primary.served_bytes(handler="blob")
    first = run_dag()
    assert first["state"] == "success", first["log"][-3000:]
    read = primary.served_bytes(handler="blob") - served
    ratio = read / unique_blob_bytes(made)
    print(f"the primary served {read} blob bytes, {ratio:.2f}x the corpus's unique blob bytes")
    assert ratio <= 1.2, first["log"][-3000:]
    assert {t.split("[")[0].split(".")[0] for t in first["tasks"]} >= {*NAMES, "snapshot_primary"}
    assert states(first, "fanout_") == {"success"}
    assert first["where"]["fanout_blobs"] == first["where"]["registry_eu.copy_blobs"]
    for name in NAMES:
        assert states(first, f"{name}.copy_blobs") == {"skipped"}, first["tasks"]
    assert exact(primary, secondary, pushed) and exact(primary, eu, pushed)
    # The report counts what the fan-out copied, to each secondary.
    summary = Store().history.last_run("registry_reconcile")["summary"]
    assert summary["bytes copied"] == 2 * unique_blob_bytes(made), summary
    assert Store().history.copied_bytes_total() == 2 * unique_blob_bytes(made)
    for name in NAMES:
        record = TagRecord(Store(), name)
        for (repository, tag), digest in pushed.items():
            assert record.rows(repository)[tag] == ("present", digest), (name, repository)

    second = run_dag()
    assert second["state"] == "success", second["log"][-3000:]
    summary = Store().history.last_run("registry_reconcile")["summary"]
    assert summary["bytes copied"] == 0 and summary["manifests pushed"] == 0, summary
    assert "registry_eu: cheap run" in summary["run kind"], summary


def test_a_stopped_secondary_fails_only_its_group(run_dag, primary, secondary, eu, primary_writer):
    pushed = push_two(primary_writer)
    eu.stop()
    result = run_dag()
    assert result["state"] == "failed", result["tasks"]
    assert failed(result) == {"registry_eu", "report"}, result["tasks"]
    # It fails fast, at its first task, and names the site and what happens next.
    assert result["tasks"]["registry_eu.reach[-1]"] == "failed", result["tasks"]
    assert result["tasks"]["registry_eu.snapshot_secondary[-1]"] == "upstream_failed"
    assert "secondary registry_eu does not answer" in result["log"]
    assert "the other secondaries go on" in result["log"]
    # Nothing is listed at a site that is down: its verification is skipped, not a listing.
    assert result["tasks"]["registry_eu.verify[-1]"] == "skipped"
    assert exact(primary, secondary, pushed)
    problems = Store().history.last_run("registry_reconcile")["summary"]["problems"]
    assert problems and all(line.startswith("registry_eu: ") for line in problems), problems
    assert "failed for registry_eu" in result["log"]


def test_the_secondaries_param_narrows_the_run(run_dag, primary, secondary, eu, primary_writer):
    pushed = push_two(primary_writer)
    conf = {"repositories": ["group/app", "group/db"], "secondaries": ["registry_eu"]}
    result = run_dag("registry_sync", conf)
    assert result["state"] == "success", result["log"][-3000:]
    assert exact(primary, eu, pushed)
    with RegistryClient(secondary.client_config()) as reader:
        assert list(reader.catalog()) == []
    untouched = {t: s for t, s in result["tasks"].items() if t.startswith("registry_secondary.")}
    assert untouched and set(untouched.values()) == {"skipped"}, untouched
    # The fan-out serves the one secondary the run names, and leaves it nothing to copy.
    assert states(result, "fanout_") == {"success"}, result["tasks"]
    assert states(result, "registry_eu.copy_blobs") == {"skipped"}, result["tasks"]
    assert TagRecord(Store(), "registry_secondary").rows("group/app") == {}


def test_a_secondary_outside_the_configured_ones_is_refused(run_dag):
    with pytest.raises(AssertionError, match="registry_ap"):
        run_dag("registry_reconcile", {"secondaries": ["registry_ap"]})


def test_a_failed_leg_is_left_to_its_own_group(run_dag, primary, secondary, eu, primary_writer):
    """eu refuses the fan-out's upload of two layers: the fan-out task still succeeds, and
    eu's copy_blobs copies them again; one layer eu accepts then, the other it refuses again,
    which fails eu's group alone, naming the layer and the secondary."""
    made = push_images(primary_writer)
    pushed = {ref: digest for ref, (digest, _) in made.items()}
    # Each image's own top layer.
    healed, refused = (made[(repository, "v1")][1].blobs[-1] for repository in REPOSITORIES)
    with FaultProxy(eu.url) as proxy:
        proxy.any_order = True  # the fan-out's uploads go in parallel
        refuse = [
            Fault(status=400, code="DIGEST_INVALID", method="PUT", path_contains=blob.digest[7:])
            for blob in (healed, refused, refused)
        ]
        proxy.inject(*refuse)
        result = run_dag(eu_at=proxy.url)
    assert result["state"] == "failed"
    assert failed(result) == {"registry_eu", "report"}, result["tasks"]
    assert states(result, "fanout_") == {"success"}, result["tasks"]
    assert states(result, "registry_eu.copy_blobs") == {"failed"}, result["tasks"]
    assert exact(primary, secondary, pushed)
    assert exact(primary, eu, {("group/app", "v1"): pushed[("group/app", "v1")]})
    print("\n".join(line for line in result["log"].splitlines() if "fan-out" in line))
    assert "blobs did not reach registry_eu; its copy_blobs copies them again" in result["log"]
    assert "1 of 2 blobs failed in blobs 1/1" in result["log"]
    assert f"for registry_eu; first: group/db@{refused.digest}" in result["log"]
    layers = [
        (layer["repository"], layer["digest"], layer["task_id"], layer["code"], layer["secondary"])
        for layer in Store().history.failed_layers()
    ]
    assert layers == [
        ("group/db", refused.digest, "registry_eu.copy_blobs", "DIGEST_INVALID", "registry_eu")
    ]
    summary = Store().history.last_run("registry_reconcile")["summary"]
    assert summary["blobs failed"] == 1, summary
    assert all(line.startswith("registry_eu: ") for line in summary["problems"]), summary


def test_a_leftover_is_what_no_fan_out_result_records_mounted_from_where_it_is_now():
    from registry_replication.airflow.reconcile_copy import _left
    from registry_replication.engine.plan import BlobTask

    digest = "sha256:" + "a" * 64
    task = BlobTask(digest, 10, "group/app", "group/app", ["group/db", "group/web"])
    assert _left(task, set()) == task
    done = {(repository, digest) for repository in task.repositories}
    assert _left(task, done) is None
    # The target is there, a mount is not: mounted from the target, not read again.
    assert _left(task, {("group/app", digest), ("group/db", digest)}) == BlobTask(
        digest, 10, "group/app", "group/web", [], "group/app"
    )
