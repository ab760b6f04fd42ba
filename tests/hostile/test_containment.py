"""No pushed object stops replication: manifests distribution 2.8 accepts from anyone with push
rights (JSON 5,000 deep, a chain of 1,100 indexes, an index "diamond" 14 deep) are each named
with their bound, and every healthy image beside them replicates byte for byte, with each
distinct manifest fetched once."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import pytest

from registry_replication.cli import main
from registry_replication.engine.leases import Leases
from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from replication_harness import hostile, images
from replication_harness.dag_runs import run
from replication_harness.servers import FaultProxy
from replication_harness.skopeo import skopeo_raw
from replication_harness.sync_cli import connection_args

HEALTHY = [("good/app", "v1"), ("zz/last", "v1"), ("diamond/ok", "v1")]
HOSTILE = {  # repository -> the bound that names it
    "deep/json": "max_json_depth",
    "chain/idx": "max_index_depth",
    "diamond/big": "max_index_depth",
}


@pytest.fixture
def hostile_primary(primary_writer):
    """The three hostile manifests and healthy images around them (one a legitimate diamond
    7 deep: 128 paths, 8 manifests). Returns the distinct manifests per repository."""
    factory = images.ImageFactory()
    images.push(primary_writer, "good/app", factory.multi_arch(), ["v1"])
    images.push(primary_writer, "zz/last", factory.make(), ["v1"])
    deep = hostile.deep_json(5000, factory)
    images.push(primary_writer, "deep/json", deep, ["v1"])
    leaf = factory.make()
    hostile.push_stack(primary_writer, "chain/idx", leaf, hostile.chain(1100, leaf), "v1")
    hostile.push_stack(primary_writer, "diamond/big", leaf, hostile.diamond(14, leaf), "v1")
    hostile.push_stack(primary_writer, "diamond/ok", leaf, hostile.diamond(7, leaf), "v1")
    return {
        "good/app": 3,
        "zz/last": 1,
        "deep/json": 1,
        "chain/idx": 1101,
        "diamond/big": 15,
        "diamond/ok": 8,
    }


def _manifest_gets(proxy: FaultProxy) -> Counter[str]:
    return Counter(
        path.split("/manifests/")[0].removeprefix("/v2/")
        for method, path, _ in proxy.log
        if method == "GET" and "/manifests/" in path
    )


def test_the_cli_replicates_every_healthy_image_and_names_each_hostile_one(
    primary, secondary, hostile_primary, store, secondary_reader, monkeypatch, capsys
):
    with FaultProxy(primary.url) as proxy:
        connection = {**primary.connection(), "host": proxy.url}
        with (
            RegistryClient(RegistryConfig.from_connection(connection)) as source,
            RegistryClient(secondary.client_config(), writable=True) as target,
        ):
            started = time.monotonic()
            report = run_sync(
                source,
                target,
                SyncOptions(full_verify=True),
                leases=Leases(store, "registry_secondary"),
            )
            seconds = time.monotonic() - started
        gets = _manifest_gets(proxy)
    print(f"sync with the hostile manifests took {seconds:.1f}s; manifest GETs {dict(gets)}")
    assert report.failed  # the hostile ones need an operator
    for repository, tag in HEALTHY:
        assert skopeo_raw(secondary, repository, tag) == skopeo_raw(primary, repository, tag)
    # Named by the listing (which reads a tag's manifest whole in a full run) or by the plan.
    named = {s.repository: s.reason for s in report.plan.skipped}
    named.update(
        {
            p["repository"]: f"{p['reason']}. What to do: {p['advice']}"
            for p in report.primary.problems
        }
    )
    assert set(named) == set(HOSTILE)
    for repository, setting in HOSTILE.items():
        assert setting in named[repository] and "What to do" in named[repository], named
        assert secondary_reader.head_manifest(repository, "v1") is None
    # Each distinct manifest at most once; the diamond that replicated exactly once each.
    for repository, count in gets.items():
        assert count <= hostile_primary[repository], (repository, count)
    assert gets["diamond/ok"] == hostile_primary["diamond/ok"]
    assert gets["chain/idx"] <= 10  # refused past max_index_depth (8), not read to the end

    # The CLI says the same in its output and exit code.
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_PRIMARY", json.dumps(primary.connection()))
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_SECONDARY", json.dumps(secondary.connection()))
    capsys.readouterr()
    assert main(["sync", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert {s["repository"] for s in result["skipped"] + result["problems"]} == set(HOSTILE)


def test_the_reconcile_replicates_every_healthy_image_and_fails_naming_each_hostile_one(
    airflow_db, connections, primary, secondary, hostile_primary, secondary_reader, caplog
):
    with caplog.at_level(logging.INFO):
        result = run("registry_reconcile", {"full_verify": True, "prune": False})
    assert result.state == "failed"
    for repository, tag in HEALTHY:
        assert skopeo_raw(secondary, repository, tag) == skopeo_raw(primary, repository, tag)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    # Named by the listing (snapshot_primary reads a new tag's manifest whole) or the plan.
    for repository, setting in HOSTILE.items():
        assert any(
            (f"cannot replicate {repository}:v1" in m or f": {repository}:v1: " in m)
            and setting in m
            for m in errors
        ), (repository, errors)
        assert secondary_reader.head_manifest(repository, "v1") is None


def test_an_event_that_kills_its_worker_never_holds_the_others_back(
    primary, secondary, primary_writer, secondary_reader, store
):
    """Its worker SIGKILLed mid-batch each time it is claimed: the event is claimed
    event_max_attempts times, then dead-lettered with the reason; the events it was claimed
    with are isolated from it by bisection and replicated."""
    import datetime as dt
    import subprocess
    import sys

    from registry_replication.store.queue import Event

    factory = images.ImageFactory()
    pushed = {
        f"team/app{i}": images.push(primary_writer, f"team/app{i}", factory.make(), ["v1"])
        for i in range(5)
    }
    pushed["poison/app"] = images.push(primary_writer, "poison/app", factory.make(), ["v1"])
    at = dt.datetime.now(dt.UTC)
    store.queue.add(
        [
            Event(f"{repository}:v1", "push", repository, "v1", digest, None, at)
            for repository, digest in pushed.items()
        ],
        ["registry_secondary"],
    )
    max_attempts, kills, runs = 10, 0, 0
    command = [
        sys.executable,
        "-m",
        "replication_harness.event_worker",
        "--store",
        str(store.engine.url),
        "--poison",
        "poison/app:v1",
        *connection_args(primary.connection(), secondary.connection()),
        "--max-attempts",
        str(max_attempts),
        "--lease-seconds",
        "1",
    ]
    while runs < 3 * max_attempts:
        runs += 1
        worker = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if worker.returncode == 0:
            break
        assert worker.returncode == -9, worker.stderr[-2000:]
        kills += 1
    assert worker.returncode == 0, "the queue never drained"
    assert kills == max_attempts  # one kill per claim of the poison, and no more
    events = {e["id"]: e for e in store.queue.events()}
    poison = events.pop("poison/app:v1")
    assert poison["status"] == "failed" and poison["attempts"] == max_attempts
    assert "worker lost while processing; claimed 10 times" in poison["last_error"]
    for event in events.values():  # isolated from the poison after a few halvings
        assert event["status"] == "done" and event["attempts"] <= 4, event
    for repository, digest in pushed.items():
        if repository != "poison/app":
            assert secondary_reader.head_manifest(repository, "v1").digest == digest
