"""A run's folder: where its files go, what its earlier tasks left there (files, and the XComs
that name them), and retention (the reconcile's ``retention`` teardown), which removes old run
folders and old store history.

A run folder is ``<dag_id>/<when the run was due>_<run_id>``, in the replication store or under
``[registry_replication] artifacts_path``; XComs carry only file names and counts.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, TypedDict

import pandas as pd
import pendulum
import sqlalchemy as sa
from airflow.sdk import get_current_context
from airflow.utils.net import get_hostname

from registry_replication.airflow import deployment
from registry_replication.engine import artifacts
from registry_replication.outcomes import NOT_PUSHED, BlobOutcome, Snapshot
from registry_replication.settings import current
from registry_replication.store import Store, retention
from registry_replication.store.artifacts import ArtifactRecords

log = logging.getLogger(__name__)

# The images the plan skipped, and the findings of a blobs or content verification, in the
# run's folder.
SKIPPED_FILE = "skipped.jsonl"
VERIFIED_FILE = "verified.jsonl"
# The top-level task that copies the blobs several secondaries lack, each read once.
FANOUT_TASK = "fanout_blobs"


class Retention(TypedDict):
    """What the ``retention`` task removed."""

    folders: int  # run folders removed
    history: str


def run_folder() -> artifacts.RunFolder:
    """This run's folder: ``<dag_id>/<when the run was due>_<run_id>``, so cleanup can read
    each run's age from its name on any storage; under ``artifacts_path``, or in the store."""
    dag_run = get_current_context()["dag_run"]
    when = pendulum.instance(dag_run.run_after).in_timezone("UTC")
    safe_run_id = re.sub(r"[^A-Za-z0-9._-]", "_", dag_run.run_id)
    key = f"{dag_run.dag_id}/{when:%Y%m%dT%H%M%S}_{safe_run_id}"
    base = deployment.artifacts_base()
    return artifacts.RunFolder(
        ArtifactRecords(Store().engine),
        key,
        when,
        host=get_hostname(),
        files=None if base is None else base / key,
    )


def _remove_old_runs(now: pendulum.DateTime) -> list[str]:
    """Delete run folders older than ``[registry_replication] artifacts_retention_days``
    (default 7), in the store and at ``artifacts_path``; returns their names. Best effort: a
    folder that cannot go is logged."""
    days = current().artifacts_retention_days
    cutoff = now.subtract(seconds=int(days * 86400))
    removed = set(retention.prune_run_artifacts(Store().engine, cutoff))
    base = deployment.artifacts_base()
    if base is None or not base.exists():
        return sorted(removed)
    for dag_folder in base.iterdir():
        if not dag_folder.is_dir():
            continue
        for folder in dag_folder.iterdir():
            try:
                when = pendulum.from_format(
                    folder.name.split("_", 1)[0], "YYYYMMDDTHHmmss", tz="UTC"
                )
            except ValueError:
                continue  # not a run folder of ours
            if when < cutoff:
                try:
                    folder.rmdir(recursive=True)
                    removed.add(f"{dag_folder.name}/{folder.name}")
                except OSError as exc:
                    log.warning(
                        "could not remove the old run folder %s: %s. What to do: check "
                        "the storage's permissions, or remove it by hand",
                        folder,
                        exc,
                    )
    return sorted(removed)


def _prune_history() -> str:
    """Delete the store's history older than ``[registry_replication] history_retention_days``
    (default 30); returns what went. Best effort: a refusal or a database error is logged."""
    days = current().history_retention_days
    try:
        pruned = retention.prune(
            Store().engine, dt.timedelta(days=days), configured=current().secondaries
        )
    except ValueError as exc:
        log.error(
            "the store's history was not pruned: %s. What to do: set [registry_replication]"
            " history_retention_days to 1 or more",
            exc,
        )
        return "nothing (history_retention_days refused)"
    except sa.exc.SQLAlchemyError as exc:
        log.warning(
            "the store's history was not pruned: %s. The next run's report tries again;"
            " if this repeats, check the replication store's database",
            exc,
        )
        return "nothing (database error)"
    return f"{pruned.line()} older than {days:g} days"


def apply_retention(now: pendulum.DateTime) -> Retention:
    """The maintenance step after every report: old run folders and old store history go."""
    folders = _remove_old_runs(now)
    history = _prune_history()
    log.info(
        "retention: removed %d run folders%s; from the replication store, %s",
        len(folders),
        (": " + ", ".join(folders[:10]) + (" ..." if len(folders) > 10 else "")) if folders else "",
        history,
    )
    return {"folders": len(folders), "history": history}


def read_snapshot(ref: dict[str, Any]) -> Snapshot:
    """The snapshot a ``snapshot`` task of this run wrote (``ref``: its XCom)."""
    return artifacts.read_snapshot(run_folder(), ref["name"])


def read_changes(differences: dict[str, Any]) -> pd.DataFrame:
    """The tags not in sync, as this run's ``diff`` wrote them (``differences``: its XCom)."""
    return artifacts.read_frame(run_folder() / differences["file"])


def failed_refs(context: Any, task_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The records of the blobs (``copy_blobs``) or images (``push_manifests``) that failed in
    this run's batches, with their batch's reference: only the files of batches that had
    failures are read."""
    return _failed(pulled(context, task_id, "results"))


def _failed(refs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    folder = run_folder()
    return [
        (ref, record)
        for ref in refs
        if ref["failed"]
        for record in artifacts.read_json_lines(folder / ref["file"])
        if record["outcome"] in (BlobOutcome.FAILED, *NOT_PUSHED)
    ]


def fanned_out(context: Any, secondary: str) -> list[dict[str, Any]]:
    """The ``fanout_blobs`` batches' results for ``secondary`` (none in a DAG without the
    fan-out, or a run whose fan-out left it out)."""
    return [ref for ref in pulled(context, FANOUT_TASK, "results") if ref["secondary"] == secondary]


def failed_blob_refs(context: Any, secondary: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The blobs that did not reach ``secondary`` in this run, with their batch's reference
    (its ``task_id`` and ``map_index``): those its ``copy_blobs`` failed, and those a fan-out
    leg failed that no ``copy_blobs`` batch recorded again (it failed before its records, or
    did not run). A blob the leftover copy copied after its fan-out leg failed is no failure."""
    copy_task = in_group(secondary, "copy_blobs")
    copied = pulled(context, copy_task, "results")
    fanned = _failed(fanned_out(context, secondary))
    if fanned:
        folder = run_folder()
        again = {
            (record["repository"], record["digest"])
            for ref in copied
            for record in artifacts.read_json_lines(folder / ref["file"])
        }
        fanned = [(r, b) for r, b in fanned if (b["repository"], b["digest"]) not in again]
    return fanned + _failed(copied)


def in_group(secondary: str, task_id: str) -> str:
    """The id of a task in ``secondary``'s task group."""
    return f"{secondary}.{task_id}"


def pulled(context: Any, task_id: str, key: str) -> list[Any]:
    """Every map index's XCom under ``key`` (failed map indexes push ``failed``)."""
    return _records(context["ti"].xcom_pull(task_ids=task_id, key=key))


def _records(value: Any) -> list[dict[str, Any]]:
    # One map index comes back as its own value, several as a sequence of values.
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    return [record for item in value for record in _records(item)]


def log_table(frame: pd.DataFrame) -> str:
    """A frame for a task's log."""
    return frame.to_string() if len(frame) else "(none)"
