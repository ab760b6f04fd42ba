"""The DAGs: they load cleanly, and dag.test() replicates against real registries."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from registry_replication.store import Store
from registry_replication.store.record import TagRecord
from replication_harness import corpus, images
from replication_harness.dag_runs import load_dags, run
from replication_harness.read_once import assert_read_once, push_tags

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


def test_dagbag_loads_every_dag_without_errors(airflow_db):
    bag = load_dags()
    assert bag.import_errors == {}
    assert {"registry_reconcile", "registry_sync"} <= set(bag.dag_ids)
    reconcile = bag.get_dag("registry_reconcile")
    assert reconcile.max_active_runs == 1 and reconcile.catchup is False
    assert reconcile.doc_md and reconcile.tags and reconcile.owner == "platform"
    assert set(reconcile.params) >= {
        "include",
        "exclude",
        "tags",
        "dry_run",
        "prune",
        "force_prune",
        "parallelism",
    }
    for param in reconcile.params.values():
        assert param.description


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_fast_without_network(path):
    code = (
        "import time, socket; t = time.perf_counter();"
        "socket.socket.connect = lambda *a: (_ for _ in ()).throw(AssertionError('network at parse'));"
        f"import runpy; runpy.run_path({str(path)!r}); print(time.perf_counter() - t)"
    )
    # Warm once (first import compiles bytecode), then measure.
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    print(f"{path.name} parsed in {float(done.stdout.split()[-1]):.2f}s (with Airflow imports)")


def test_no_metadata_db_access_from_task_code():
    """Airflow 3 forbids it in real runs and dag.test() does not catch it: scan for it."""
    forbidden = {"create_session", "provide_session", "settings.Session", "NEW_SESSION"}
    sources = [*DAG_FILES, *(ROOT / "include").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    offenders = []
    for path in sources:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = f"{getattr(node.value, 'id', '')}.{node.attr}"
            elif isinstance(node, ast.Name):
                name = node.id
            elif (
                isinstance(node, ast.ImportFrom) and node.module and "airflow.models" in node.module
            ):
                offenders.append(f"{path.name}: from {node.module} import ...")
            if name and (name in forbidden or name.split(".")[-1] in forbidden):
                offenders.append(f"{path.name}:{node.lineno}: {name}")
    assert offenders == []


def test_reconcile_replicates_then_does_nothing(
    airflow_db, connections, primary_writer, secondary_reader, caplog
):
    pushed = corpus.push_every_kind(primary_writer)
    with caplog.at_level(logging.INFO):
        first = run("registry_reconcile", {"prune": True})
    assert first.state == "success"
    for (repository, tag), digest in pushed.items():
        assert secondary_reader.head_manifest(repository, tag).digest == digest
    assert "blob copied" in caplog.text and "run summary" in caplog.text
    caplog.clear()

    with caplog.at_level(logging.INFO):
        second = run("registry_reconcile")
    assert second.state == "success"
    assert "blob copied" not in caplog.text and "blob mounted" not in caplog.text
    summary = caplog.text[caplog.text.index("run summary") :]
    assert re.search(r"bytes copied\s+0\n", summary), summary
    assert re.search(r"manifests pushed\s+0\n", summary), summary
    # The first run listed the secondary and recorded it; the no-op read that record instead.
    assert re.search(r"run kind\s+cheap run: the secondary as recorded", summary), summary
    record = TagRecord(Store(), "registry_secondary")
    for (repository, tag), digest in pushed.items():
        assert record.rows(repository)[tag] == ("present", digest), (repository, tag)

    assert run("registry_reconcile", {"full_verify": True}).state == "success"
    assert Store().history.last_run("registry_reconcile")["summary"]["run kind"] == (
        "full run: a full verification was asked for"
    )


def test_dry_run_changes_nothing(airflow_db, connections, primary_writer, secondary_reader, caplog):
    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    with caplog.at_level(logging.INFO):
        result = run("registry_reconcile", {"dry_run": True})
    assert result.state == "success"
    assert "dry run: would push 1 images" in caplog.text
    assert list(secondary_reader.catalog()) == []


def test_sync_one_repository_only(airflow_db, connections, primary_writer, secondary_reader):
    factory = images.ImageFactory()
    wanted = images.push(primary_writer, "team/wanted", factory.make(), ["1.0"])
    images.push(primary_writer, "team/other", factory.make(), ["1.0"])
    result = run("registry_sync", {"repositories": ["team/wanted"]})
    assert result.state == "success"
    assert list(secondary_reader.catalog()) == ["team/wanted"]
    assert secondary_reader.head_manifest("team/wanted", "1.0").digest == wanted


def test_failed_layer_is_named_in_the_task_log(
    airflow_db, connections, primary, primary_writer, secondary_reader, caplog
):
    img = images.ImageFactory().make()
    images.push(primary_writer, "group/app", img, ["broken"])
    rotten = img.blobs[-1]
    primary.blob_path(rotten.digest).write_bytes(b"\0" * rotten.size)
    with caplog.at_level(logging.INFO):
        result = run("registry_reconcile", {"prune": False})
    assert result.state == "failed"
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        f"blob failed  group/app@{rotten.digest}" in m and "DIGEST_INVALID" in m for m in failures
    ), failures
    assert any("failed layers" in m and rotten.digest in m for m in failures)
    assert secondary_reader.head_manifest("group/app", "broken") is None
    # Recorded for the status page, with the map index whose log holds the details.
    layers = [
        layer for layer in Store().history.failed_layers() if layer["digest"] == rotten.digest
    ]
    assert [
        (layer["repository"], layer["task_id"], layer["map_index"], layer["code"])
        for layer in layers
    ] == [("group/app", "registry_secondary.copy_blobs", 0, "DIGEST_INVALID")]
    summary = Store().history.last_run("registry_reconcile")["summary"]
    # The failed batch's other blobs were copied, and the report counts them.
    assert summary["blobs failed"] == 1 and summary["blobs copied"] == len(img.blobs) - 1


@pytest.fixture
def slow_connections(monkeypatch, primary, secondary):
    """The primary behind a proxy that holds chosen requests: a reconcile over a slow link."""
    from replication_harness.servers import FaultProxy

    with FaultProxy(primary.url) as proxy:
        monkeypatch.setenv(
            "AIRFLOW_CONN_REGISTRY_PRIMARY", json.dumps({**primary.connection(), "host": proxy.url})
        )
        monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_SECONDARY", json.dumps(secondary.connection()))
        yield proxy


def test_a_full_reconcile_reads_each_manifest_once(
    airflow_db, slow_connections, primary_writer, secondary_reader
):
    """snapshot_primary reads whole the tags the record lacks and keeps their manifests in the
    run's folder; plan reads none of them again: one GET per tag and per index child, and the
    compare-and-set before each write a conditional HEAD answered 304."""
    pushed = push_tags(primary_writer)
    assert run("registry_reconcile").state == "success"
    assert_read_once(pushed, slow_connections.log, secondary_reader)


class RacingReconcile:
    """A reconcile whose request for one blob is held while the event path writes: what the
    event path did in the meantime must stand."""

    def __init__(self, proxy, primary_reader, secondary_writer):
        self.proxy = proxy
        self.primary_reader = primary_reader
        self.secondary_writer = secondary_writer

    def replicate_push(self, repository, tag, digest):
        """The event path replicating one push, with its own leases in the DAGs' store."""
        import datetime as dt

        from registry_replication.engine.leases import Leases
        from registry_replication.engine.realtime import replicate_events
        from registry_replication.store.queue import Event

        event = Event(
            f"{repository}:{tag}@{digest}",
            "push",
            repository,
            tag,
            digest,
            None,
            dt.datetime.now(dt.UTC),
        )
        with Leases(Store(), "registry_secondary") as leases:
            assert replicate_events(
                self.primary_reader, self.secondary_writer, [event], leases=leases
            ) == {event.id: None}

    def run(self, held_blob, action, conf=None):
        """Run the reconcile; once its GET of ``held_blob`` arrives, hold it, run ``action``,
        then let the request go on. Returns the DagRun, ``action`` having raised nothing."""
        import threading

        hold = self.proxy.hold("GET", f"/blobs/{held_blob}")
        errors: list[BaseException] = []

        def go() -> None:
            try:
                assert hold.arrived.wait(120), "the reconcile never sent the held request"
                action()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
            finally:
                hold.release()

        thread = threading.Thread(target=go)
        thread.start()
        result = run("registry_reconcile", conf)
        thread.join()
        assert errors == []
        return result


@pytest.fixture
def racing(airflow_db, slow_connections, primary_reader, secondary_writer):
    """The DAGs' reconcile, through the slow primary, racing the event path."""
    return RacingReconcile(slow_connections, primary_reader, secondary_writer)


def test_reconcile_never_overwrites_a_newer_tag(
    racing, primary_writer, primary_reader, secondary_reader, caplog
):
    factory = images.ImageFactory()
    old = factory.make()
    images.push(primary_writer, "app", old, ["t"])
    newer: list[str] = []

    def move_and_replicate() -> None:
        newer.append(images.push(primary_writer, "app", factory.make(), ["t"]))
        racing.replicate_push("app", "t", newer[0])

    with caplog.at_level(logging.INFO):
        result = racing.run(old.blobs[-1].digest, move_and_replicate)
    assert result.state == "success"
    assert (
        secondary_reader.head_manifest("app", "t").digest
        == newer[0]
        == primary_reader.head_manifest("app", "t").digest
    )
    assert f"left to the newer writer: t -> {newer[0]}" in caplog.text
    assert (
        Store().history.last_run("registry_reconcile")["summary"]["tags moved since the plan"] == 1
    )


def test_reconcile_never_deletes_a_tag_pushed_again(
    racing, primary_writer, secondary_reader, caplog
):
    factory = images.ImageFactory()
    kept = factory.make()
    images.push(primary_writer, "keep", kept, ["k"])
    images.push(primary_writer, "keep", factory.make(), ["other"])
    assert run("registry_reconcile").state == "success"
    primary_writer.delete_manifest("keep", kept.digest)
    fresh = factory.make()
    images.push(primary_writer, "app", fresh, ["new"])

    def push_again_and_replicate() -> None:
        images.push(primary_writer, "keep", kept, ["k"])
        racing.replicate_push("keep", "k", kept.digest)

    with caplog.at_level(logging.INFO):
        result = racing.run(fresh.blobs[-1].digest, push_again_and_replicate, {"prune": True})
    assert result.state == "success"
    assert secondary_reader.head_manifest("keep", "k").digest == kept.digest
    assert secondary_reader.head_manifest("app", "new").digest == fresh.digest
    assert "prune kept" in caplog.text and "the primary has it again" in caplog.text
    assert Store().history.last_run("registry_reconcile")["summary"]["tags kept, pushed again"] == 1


def test_a_scope_that_matches_nothing_is_a_quick_success(
    airflow_db, connections, primary_writer, secondary_reader, caplog
):
    images.push(primary_writer, "group/app", images.ImageFactory().make(), ["1.0"])
    with caplog.at_level(logging.INFO):
        result = run("registry_reconcile", {"include": ["gruop/*"]})  # a typo
    assert result.state == "success"
    assert "the scope matched no tags on registry_primary" in caplog.text
    assert list(secondary_reader.catalog()) == []


def test_copy_tasks_of_every_dag_share_the_configured_queue_and_pool():
    """Production controls: AIRFLOW__REGISTRY_REPLICATION__COPY_QUEUE / __COPY_POOL."""
    code = (
        "import json; from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r});"
        "print(json.dumps({f'{d.dag_id}.{t.task_id}': [t.queue, t.pool]"
        " for d in bag.dags.values() for t in d.tasks}))"
    )
    env = {
        **os.environ,
        "AIRFLOW__REGISTRY_REPLICATION__COPY_QUEUE": "near_registries",
        "AIRFLOW__REGISTRY_REPLICATION__COPY_POOL": "registry_copies",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    tasks = json.loads(done.stdout.strip().splitlines()[-1])
    copying = {
        name: where
        for name, where in tasks.items()
        if name.split(".")[-1] in ("copy_blobs", "push_manifests", "replicate_events")
    }
    assert set(copying) == {
        "registry_reconcile.registry_secondary.copy_blobs",
        "registry_reconcile.registry_secondary.push_manifests",
        "registry_sync.registry_secondary.copy_blobs",
        "registry_sync.registry_secondary.push_manifests",
        "registry_events.replicate_events",
    }
    assert set(map(tuple, copying.values())) == {("near_registries", "registry_copies")}
    # One secondary: no fan-out (each blob is read once already).
    assert not [name for name in tasks if name.split(".")[1].startswith("fanout_")]
    assert tasks["registry_reconcile.registry_secondary.diff"] == ["default", "default_pool"]


def test_connection_ids_come_from_configuration(
    airflow_db, primary, secondary, primary_writer, secondary_reader
):
    """[registry_replication] primary_conn_id / secondary_conn_id name the connections; the
    default names are not defined at all in this run, so nothing can fall back to them."""
    pushed = images.push(primary_writer, "team/configured", images.ImageFactory().make(), ["1.0"])
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r});"
        "run = bag.get_dag('registry_sync').test(run_conf={'repositories': ['team/configured']});"
        "print('state', run.state)"
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AIRFLOW_CONN_REGISTRY_PRIMARY", "AIRFLOW_CONN_REGISTRY_SECONDARY")
    }
    env |= {
        "AIRFLOW__REGISTRY_REPLICATION__PRIMARY_CONN_ID": "geo_primary",
        "AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_ID": "geo_secondary",
        "AIRFLOW_CONN_GEO_PRIMARY": json.dumps(primary.connection()),
        "AIRFLOW_CONN_GEO_SECONDARY": json.dumps(secondary.connection()),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.stdout.strip().splitlines()[-1] == "state success", done.stderr[-3000:]
    assert secondary_reader.head_manifest("team/configured", "1.0").digest == pushed
