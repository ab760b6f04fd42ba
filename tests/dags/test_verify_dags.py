"""Verification levels in the DAGs: registry_reconcile with verify=content repairs what the
API allows and names the damage it cannot; a secondary that lost its storage is restored by the
next cheap run."""

from __future__ import annotations

import logging
import shutil

from registry_replication.outcomes import RepositoryState
from registry_replication.store import Store
from replication_harness import images
from replication_harness.dag_runs import run
from replication_harness.damage import damage, pulls_exactly


def states() -> dict[str, str]:
    return {r["repository"]: r["state"] for r in Store().state.repository_states()}


def test_reconcile_verify_content_repairs_names_damage_and_blobs_clears_it(
    airflow_db, connections, primary_writer, secondary, secondary_writer, secondary_reader, caplog
):
    factory = images.ImageFactory()
    imgs = {name: factory.make() for name in "abcde"}
    for name, img in imgs.items():
        images.push(primary_writer, "app", img, [name])
    images.push(primary_writer, "other", factory.make(), ["1.0"])
    assert run("registry_reconcile").state == "success"

    hit = damage(secondary, secondary_writer, imgs)
    with caplog.at_level(logging.INFO):
        deep = run("registry_reconcile", {"verify": "content"})
    assert deep.state == "failed"
    for name in "de":  # the deleted and the moved tag are back on the primary's digests
        assert secondary_reader.head_manifest("app", name).digest == imgs[name].digest
    pulls_exactly(secondary_reader, "app", imgs["a"])  # the deleted layer, copied again
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for blob in (hit["b"], hit["c"]):
        hex_ = blob.digest.split(":")[1]
        assert any(
            f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data" in m and "verify=blobs" in m
            for m in errors
        ), (blob.digest, errors)
    assert any(
        f"expected {hit['b'].size} bytes, found {hit['b'].size - 100} bytes" in m for m in errors
    )
    assert states() == {"app": RepositoryState.DAMAGED, "other": RepositoryState.SYNCED}
    summary = Store().history.last_run("registry_reconcile")["summary"]
    assert summary["verification"].startswith("verification: 1 of 2 repositories in sync (")
    assert any("damaged" in p for p in summary["problems"])

    # A tags run cannot see the damage: it does not report app as synced.
    assert run("registry_reconcile", {"verify": "tags"}).state == "failed"
    assert states()["app"] == RepositoryState.DAMAGED

    for blob in (hit["b"], hit["c"]):  # the operator's fix, as named
        secondary.blob_path(blob.digest).unlink()
    assert run("registry_reconcile", {"verify": "blobs"}).state == "success"
    for img in imgs.values():
        pulls_exactly(secondary_reader, "app", img)
    assert states() == {"app": RepositoryState.SYNCED, "other": RepositoryState.SYNCED}
    row = {r["repository"]: r for r in Store().state.repository_states()}["app"]
    assert row["verified_level"] == "blobs" and row["damaged"] is None


def test_a_cheap_reconcile_restores_a_secondary_whose_storage_was_emptied(
    airflow_db, connections, primary_writer, secondary, secondary_reader, caplog
):
    factory = images.ImageFactory()
    pushed = {repository: factory.make() for repository in ("a", "b/c", "d")}
    for repository, img in pushed.items():
        images.push(primary_writer, repository, img, ["v1"])
    assert run("registry_reconcile").state == "success"
    secondary.stop()
    shutil.rmtree(secondary.storage)
    secondary.start()
    with caplog.at_level(logging.INFO):
        assert run("registry_reconcile").state == "success"
    assert "the secondary's catalog is empty while the record holds 3 tags" in caplog.text
    for repository, img in pushed.items():
        assert secondary_reader.head_manifest(repository, "v1").digest == img.digest
        pulls_exactly(secondary_reader, repository, img)
    assert set(states().values()) == {RepositoryState.SYNCED}
