"""registry_reconcile with a repository in the primary's catalog that the grammar refuses."""

from __future__ import annotations

import logging

from registry_replication.store import Store
from registry_replication.web.status import status
from replication_harness import images
from replication_harness.dag_runs import run


def test_reconcile_replicates_every_other_repository_and_names_the_odd_one(
    airflow_db, connections, odd_repository, image_factory, primary_writer, secondary_reader, caplog
):
    wanted = {
        name: images.push(primary_writer, name, image_factory.make(), ["1.0"])
        for name in ("group/app", "group/other")
    }
    with caplog.at_level(logging.INFO):
        result = run("registry_reconcile", {"prune": True})
    assert result.state == "failed"  # the report task fails the run, after everything else ran
    for name, digest in wanted.items():
        assert secondary_reader.head_manifest(name, "1.0").digest == digest
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "cannot replicate" in m and odd_repository in m and "What to do" in m for m in errors
    ), errors
    assert not any("not pruning" in m for m in errors), errors

    run_summary = Store().history.last_run("registry_reconcile")["summary"]
    assert any(
        odd_repository in p and "invalid repository name" in p for p in run_summary["problems"]
    )
    assert run_summary["images pushed"] == 2
    page = status(Store())
    odd = next(r for r in page["repositories"] if r["repository"] == odd_repository)
    assert odd["state"] == "failed" and "invalid repository name" in odd["last_error"]
    assert odd_repository in " ".join(page["last_reconcile"]["problems"])
