"""The tasks of the replication DAGs: each runs one step of the core and logs for operators.

The DAG files only declare schedules, params and docs, then call ``replicate()`` to lay out
snapshot primary | snapshot secondary -> diff -> plan -> copy_blobs[*] -> push_manifests[*]
-> prune -> verify -> report. Snapshots, differences and plan batches go to the run's folder
(in the replication store, or under ``[registry_replication] artifacts_path``) as Parquet; XComs
carry only file names and counts. Every task refuses, before any work, state that the executor's
machines cannot share (``deployment.checked``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

import pandas as pd
import pendulum
import sqlalchemy as sa
from airflow.configuration import conf
from airflow.sdk import Param, TriggerRule, get_current_context, task
from airflow.utils.net import get_hostname

from registry_replication.airflow import alerts, deployment
from registry_replication.airflow.deployment import checked
from registry_replication.airflow.hooks import OciRegistryHook
from registry_replication.engine import artifacts, realtime
from registry_replication.engine import diff as diffs
from registry_replication.engine import verify as verifying
from registry_replication.engine.copy import BlobResult, Copier, ImageResult
from registry_replication.engine.diff import IN_SYNC
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import (
    DEFAULT_BATCH_BYTES,
    BlobTask,
    ImageTask,
    Plan,
    Skipped,
    batch_label,
    build_plan,
)
from registry_replication.engine.prune import PruneRefused, PruneResult, prunable, prune
from registry_replication.engine.secondary_listing import secondary_listing
from registry_replication.engine.snapshot import problem_line, stream_snapshot, take_snapshot
from registry_replication.engine.sync import secondary_after
from registry_replication.outcomes import (
    NOT_PUSHED,
    BlobOutcome,
    PermanentFailure,
    RepositoryState,
    Scope,
    Snapshot,
    VerifyLevel,
    human_size,
    summarize,
)
from registry_replication.store import Store, retention
from registry_replication.store.artifacts import ArtifactRecords
from registry_replication.store.queue import Event
from registry_replication.store.record import (
    RunKind,
    TagRecord,
    full_verify_hours,
)

log = logging.getLogger("registry_replication.airflow")

# The two registries' Airflow connections ([registry_replication] primary_conn_id /
# secondary_conn_id), read when the DAG files are parsed and again in each task's process.
PRIMARY_CONN_ID = conf.get("registry_replication", "primary_conn_id", fallback="registry_primary")
SECONDARY_CONN_ID = conf.get("registry_replication", "secondary_conn_id",
                             fallback="registry_secondary")

# Production controls (README, "Production controls"): the Celery queue the copy tasks of all
# three DAGs go to, and the pool that bounds how many run at once across every DAG run.
COPY_QUEUE = conf.get("registry_replication", "copy_queue",
                      fallback=conf.get("operators", "default_queue"))
COPY_POOL = conf.get("registry_replication", "copy_pool", fallback="default_pool")
# Bytes per copy_blobs task: smaller batches spread a copy over more workers.
BLOB_BATCH_BYTES = conf.getint("registry_replication", "blob_batch_bytes",
                               fallback=DEFAULT_BATCH_BYTES)
# Hours between full verifications (listing the secondary); between them it is read as recorded.
FULL_VERIFY_HOURS = conf.getfloat("registry_replication", "full_verify_hours",
                                  fallback=full_verify_hours())
# Days between blobs verifications (every tag's closure on the secondary) under verify=auto.
DEEP_VERIFY_DAYS = conf.getfloat("registry_replication", "deep_verify_days",
                                 fallback=verifying.deep_verify_days())


# Names an XCom or a run's problem list shows at most (the rest are in the task's log).
SHOWN = 20
# The images the plan skipped, in the run's folder.
SKIPPED_FILE = "skipped.jsonl"


class ReplicationFailed(RuntimeError):
    """Raised by a task whose blobs, images or checks failed; its log says which and why."""


def params(*, repositories_required: bool = False) -> dict[str, Param]:
    """The trigger form, shared by both DAGs."""
    return {
        "repositories": Param(
            [] if not repositories_required else ["group/app"],
            type="array",
            items={"type": "string"},
            minItems=1 if repositories_required else 0,
            description="Repositories to sync, listed directly instead of reading the catalog"
            + ("." if repositories_required else " (empty: the whole catalog)."),
        ),
        "include": Param(["*"], type="array", items={"type": "string"},
                         description="Repository glob patterns to include, e.g. group/*."),
        "exclude": Param([], type="array", items={"type": "string"},
                         description="Repository glob patterns to leave out."),
        "tags": Param(".*", type="string",
                      description="Regular expression a tag must match in full, e.g. v\\d+\\..*"),
        "dry_run": Param(False, type="boolean",
                         description="Plan and report only: copy, push and delete nothing."),
        "prune": Param(not repositories_required, type="boolean",
                       description="Delete secondary tags that are gone from the primary."),
        "force_prune": Param(False, type="boolean",
                             description="Prune even above max_prune_fraction (mass deletion)."),
        "max_prune_fraction": Param(0.5, type="number", minimum=0, maximum=1,
                                    description="Refuse to prune more than this share of tags."),
        "parallelism": Param(8, type="integer", minimum=1, maximum=64,
                             description="Blob transfers in flight per copy task."),
        "concurrency": Param(16, type="integer", minimum=1, maximum=128,
                             description="Listing requests in flight per registry."),
        "full_verify": Param(False, type="boolean",
                             description="List the secondary rather than read its record, "
                             "whatever the age of the last full verification."),
        "verify": Param(verifying.AUTO, type="string", enum=[verifying.AUTO, *VerifyLevel],
                        description="tags: compare tag lists; blobs: every tag's manifests and "
                        "blobs exist on the secondary with their sizes (missing ones copied "
                        "again); content: and every blob read back and hashed. auto: blobs "
                        "every deep_verify_days, else tags."),
        "content_verify_fraction": Param(1.0, type="number", minimum=0, maximum=1,
                                         description="Share of the blobs a content "
                                         "verification reads back; it rotates over runs."),
    }


def _params() -> dict[str, Any]:
    return get_current_context()["params"]


def _scope(p: dict[str, Any]) -> Scope:
    return Scope.of(p["include"], p["exclude"], p["tags"])


def _client(conn_id: str, *, writable: bool = False):
    return OciRegistryHook(conn_id, writable=writable).get_conn()


def _run_folder() -> artifacts.RunFolder:
    """This run's folder: ``<dag_id>/<when the run was due>_<run_id>``, so cleanup can read
    each run's age from its name on any storage; under ``artifacts_path``, or in the store."""
    dag_run = get_current_context()["dag_run"]
    when = pendulum.instance(dag_run.run_after).in_timezone("UTC")
    safe_run_id = re.sub(r"[^A-Za-z0-9._-]", "_", dag_run.run_id)
    key = f"{dag_run.dag_id}/{when:%Y%m%dT%H%M%S}_{safe_run_id}"
    base = deployment.artifacts_base()
    return artifacts.RunFolder(ArtifactRecords(Store().engine), key, when, host=get_hostname(),
                               files=None if base is None else base / key)


def _remove_old_runs(now: pendulum.DateTime) -> list[str]:
    """Delete run folders older than ``[registry_replication] artifacts_retention_days``
    (default 7), in the store and at ``artifacts_path``; returns their names. Best effort: a
    folder that cannot go is logged."""
    days = conf.getfloat("registry_replication", "artifacts_retention_days", fallback=7)
    cutoff = now.subtract(seconds=int(days * 86400))
    removed = set(retention.prune_run_artifacts(Store().engine, cutoff))
    base = deployment.artifacts_base()
    if base is None or not base.exists():
        return sorted(removed)
    for dag_folder in base.iterdir():
        if not dag_folder.is_dir():
            continue
        for run_folder in dag_folder.iterdir():
            try:
                when = pendulum.from_format(run_folder.name.split("_", 1)[0], "YYYYMMDDTHHmmss",
                                            tz="UTC")
            except ValueError:
                continue  # not a run folder of ours
            if when < cutoff:
                try:
                    run_folder.rmdir(recursive=True)
                    removed.add(f"{dag_folder.name}/{run_folder.name}")
                except OSError as exc:
                    log.warning("could not remove the old run folder %s: %s. What to do: check "
                                "the storage's permissions, or remove it by hand", run_folder, exc)
    return sorted(removed)


def _prune_history() -> str:
    """Delete the store's history older than ``[registry_replication] history_retention_days``
    (default 30); returns what went. Best effort: a refusal or a database error is logged."""
    days = conf.getfloat("registry_replication", "history_retention_days",
                         fallback=retention.history_retention_days())
    try:
        pruned = retention.prune(Store().engine, dt.timedelta(days=days))
    except ValueError as exc:
        log.error("the store's history was not pruned: %s. What to do: set [registry_replication]"
                  " history_retention_days to 1 or more", exc)
        return "nothing (history_retention_days refused)"
    except sa.exc.SQLAlchemyError as exc:
        log.warning("the store's history was not pruned: %s. The next run's report tries again;"
                    " if this repeats, check the replication store's database", exc)
        return "nothing (database error)"
    return f"{pruned.line()} older than {days:g} days"


def _apply_retention(now: pendulum.DateTime) -> None:
    """The maintenance step of every report: old run folders and old store history go."""
    folders = _remove_old_runs(now)
    history = _prune_history()
    log.info("retention: removed %d run folders%s; from the replication store, %s",
             len(folders), (": " + ", ".join(folders[:10]) + (" ..." if len(folders) > 10 else ""))
             if folders else "", history)


def _snapshot(ref: dict[str, Any]) -> Snapshot:
    return artifacts.read_snapshot(_run_folder(), ref["name"])


def _changes(differences: dict[str, Any]) -> pd.DataFrame:
    return artifacts.read_frame(_run_folder() / differences["file"])


def _leases() -> Leases:
    """This task's leases: the write protocol shared with every other writer."""
    return Leases(Store())


@task
@checked
def snapshot(conn_id: str) -> dict[str, Any]:
    """List one registry's tags and digests within the run's scope, into the run's folder."""
    p = _params()
    folder, name = _run_folder(), get_current_context()["ti"].task_id
    kind = None
    if conn_id == SECONDARY_CONN_ID:  # listed in a full run, read from the record in a cheap one
        dag_run = get_current_context()["dag_run"]
        level, why = verifying.choose_level(Store(), p.get("verify", verifying.AUTO),
                                            p["repositories"] or None, _scope(p),
                                            DEEP_VERIFY_DAYS)
        log.info("verification level %s: %s", level, why)
        # A deep verification starts from a listing of the secondary.
        forced = level != VerifyLevel.TAGS and not p.get("full_verify", False)
        result, kind = secondary_listing(
            _client(conn_id), _client(PRIMARY_CONN_ID), Store(), _scope(p),
            repositories=p["repositories"] or None, concurrency=p["concurrency"],
            full_verify=p.get("full_verify", False) or forced, cadence_hours=FULL_VERIFY_HOURS,
            written_by=f"{dag_run.dag_id}/{dag_run.run_id}")
        if forced:
            kind = RunKind("full", f"a {level} verification lists the secondary ({why})",
                           verification_due=True)
        ref = artifacts.write_snapshot(folder, name, result)
        ref.update(run_kind=kind.line(), kind=kind.kind, sampled=kind.sampled,
                   verify_level=level.value, verification_due=kind.verification_due)
        matched_nothing = result.complete and result.tags.empty
    else:
        # Streamed: each batch of repositories' rows goes to storage as soon as it is listed.
        # Tags the record has are HEADed conditionally; the others are read whole, their
        # manifests kept beside the rows for the plan, which then reads none of them again.
        with artifacts.SnapshotWriter(folder, name, keep_manifests=True) as writer:
            listing = stream_snapshot(_client(conn_id), writer.write, _scope(p),
                                      concurrency=p["concurrency"],
                                      repositories=p["repositories"] or None,
                                      known=TagRecord(Store()).descriptors,
                                      manifests=writer.manifests)
            ref = writer.finish(listing)
        matched_nothing = not listing.errors and not listing.problems and not listing.tags
    if matched_nothing:
        log.warning("the scope matched no tags on %s (repositories %s, include %s, exclude %s, "
                    "tags %r): nothing to replicate there; check the patterns for a typo",
                    conn_id, p["repositories"] or "from the catalog", p["include"], p["exclude"],
                    p["tags"])
    log.info("snapshot of %d tags written to %s (%d bytes)", ref["tags"], folder, ref["bytes"])
    return ref


@task
@checked
def diff(primary: dict[str, Any], secondary: dict[str, Any]) -> dict[str, Any]:
    """Classify every tag; pass on only what is not in sync."""
    differences = diffs.diff(_snapshot(primary), _snapshot(secondary))
    log.info("tags per repository:\n%s", _table(diffs.summary(differences)))
    counts = differences["status"].value_counts().to_dict()
    log.info("overall: %s", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no tags")
    changed = differences[differences["status"] != IN_SYNC]
    size = artifacts.write_frame(_run_folder() / "changes.parquet", changed)
    return {"file": "changes.parquet", "changes": len(changed), "bytes": size, "counts": counts}


@task
@checked
def plan(differences: dict[str, Any], primary: dict[str, Any]) -> list[dict[str, Any]]:
    """Fetch the manifests to copy (but those the primary's listing read), find the blobs the
    secondary lacks, and batch the work.

    Each batch goes to its own file in the run's folder. Returns the blob batches' labels and
    files; the image batches' go to XCom key ``image_batches``.
    """
    p = _params()
    folder = _run_folder()
    changes = _changes(differences)
    read = artifacts.read_manifests(folder / primary["manifests"]) if "manifests" in primary \
        else {}
    result = build_plan(_client(PRIMARY_CONN_ID), _client(SECONDARY_CONN_ID),
                        diffs.wanted(changes), concurrency=p["concurrency"], known_manifests=read)
    del read  # the plan keeps those it needs
    for skipped in result.skipped:
        log.error("cannot replicate %s:%s (%s): %s", skipped.repository, ",".join(skipped.tags),
                  skipped.digest, skipped.reason)
    # For the report, which fails the run and names them (a few: the log above has them all),
    # and for verify_closure, which leaves them out (all of them).
    get_current_context()["ti"].xcom_push(key="skipped", value={
        "count": len(result.skipped), "shown": [asdict(s) for s in result.skipped[:SHOWN]]})
    artifacts.write_json_lines(folder / SKIPPED_FILE, [asdict(s) for s in result.skipped])
    if p["dry_run"]:
        log.info("dry run: would push %d images and copy %d blobs (%s); nothing changes",
                 len(result.images), len(result.blobs), human_size(result.transfer_bytes))
        result = Plan(skipped=result.skipped)
    image_batches = []
    for i, b in enumerate(result.image_batches()):
        name = f"images-{i:05d}.parquet"
        artifacts.write_records(folder / name, [asdict(t) for t in b])
        # The manifests read while planning, so that push_manifests need not read them again.
        artifacts.write_manifests(folder / artifacts.manifests_file(name), [
            (t.repository, found) for t in b for digest in (*t.children, t.digest)
            if (found := result.manifests.get((t.repository, digest))) is not None])
        image_batches.append({"label": b[0].label + (f" +{len(b) - 1} images" if len(b) > 1
                                                     else ""), "file": name})
    get_current_context()["ti"].xcom_push(key="image_batches", value=image_batches)
    blob_batches = result.blob_batches(BLOB_BATCH_BYTES)
    refs = []
    for i, b in enumerate(blob_batches):
        name = f"blobs-{i:05d}.parquet"
        artifacts.write_records(folder / name, [asdict(t) for t in b])
        refs.append({"label": batch_label(b, i, len(blob_batches)), "file": name})
    return refs


@task
def manifest_batches() -> list[dict[str, Any]]:
    """The plan's image batches, as a list to map ``push_manifests`` over."""
    return get_current_context()["ti"].xcom_pull(task_ids="plan", key="image_batches") or []


@task(map_index_template="{{ batch_label }}", retry_exponential_backoff=2.0, queue=COPY_QUEUE,
      pool=COPY_POOL)
@checked
def copy_blobs(batch: dict[str, Any]) -> dict[str, int]:
    """Copy (or mount) one batch of blobs; fails, after retries, if any blob failed.

    Every blob's record goes to the run's folder, failed or not, so the run's report counts
    what a failed batch did copy; XCom key ``results`` names the file (with this map index, for
    links to this log) and carries the batch's counts.
    """
    context = get_current_context()
    context["batch_label"] = batch["label"]
    tasks = [BlobTask(**b) for b in artifacts.read_records(_run_folder() / batch["file"])]
    with _leases() as leases:
        copier = _copier(context, leases)
        results = copier.copy_blobs(tasks)
    counts = _push_results(context, batch, results)
    _record_copied_bytes(context, sum(r.bytes for r in results))
    failed = [r for r in results if r.outcome == BlobOutcome.FAILED]
    if failed:
        raise ReplicationFailed(
            f"{len(failed)} of {len(results)} blobs failed in {batch['label']}; first: "
            f"{failed[0].repository}@{failed[0].digest}: {failed[0].error}"
        )
    return counts


@task(map_index_template="{{ batch_label }}", trigger_rule=TriggerRule.ALL_DONE,
      retry_exponential_backoff=2.0, queue=COPY_QUEUE, pool=COPY_POOL)
@checked
def push_manifests(batch: dict[str, Any]) -> dict[str, int]:
    """Push one batch of images whose blobs are all on the secondary; tags last."""
    context = get_current_context()
    context["batch_label"] = batch["label"]
    failed_blobs = {record["digest"] for _, record in _failed_blob_refs(context)}
    with _leases() as leases:
        copier = _copier(context, leases)
        folder = _run_folder()
        planned = [ImageTask(**i) for i in artifacts.read_records(folder / batch["file"])]
        copier.manifests.update(
            artifacts.read_manifests(folder / artifacts.manifests_file(batch["file"])))
        with ExitStack() as held:
            # The batch's repositories' leases, held for the batch: one store write per
            # repository rather than one per image (each image still takes it, re-entrantly).
            for repository in sorted({t.repository for t in planned}):
                held.enter_context(leases.repository(repository))
            results = copier.push_images(planned, failed_blobs)
    counts = _push_results(context, batch, results)
    bad = [r for r in results if r.outcome in NOT_PUSHED]
    if bad:
        raise ReplicationFailed(
            f"{len(bad)} of {len(results)} images not pushed; first: "
            f"{bad[0].repository}:{','.join(bad[0].tags)}: {bad[0].error}"
        )
    return counts


def _copier(context: Any, leases: Leases) -> Copier:
    """A copy task's copier. Its first try trusts the plan, which asked the secondary about
    every blob and tag minutes ago in this run (a tag written meanwhile by another writer is
    written again with the same bytes; the compare-and-set on the primary still guards every
    tag); a retry checks again before each blob and tag, so it never transfers twice."""
    return Copier(_client(PRIMARY_CONN_ID), _client(SECONDARY_CONN_ID, writable=True),
                  leases=leases, parallelism=_params()["parallelism"],
                  concurrency=_params()["concurrency"],
                  recheck=context["ti"].try_number > 1)


def _record_copied_bytes(context: Any, copied: int) -> None:
    """For ``registry_replication_bytes_copied_total`` and Airflow's ``Stats``."""
    ti = context["ti"]
    Store().history.record_copied_bytes(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, copied)
    alerts.send_copied_bytes(copied)


def _push_results(context: Any, batch: dict[str, Any],
                  results: list[BlobResult] | list[ImageResult]) -> dict[str, int]:
    """Log the batch's summary table, write its records next to the batch's file and share
    their name and counts (XCom key ``results``); returns counts per outcome."""
    blobs = [r for r in results if isinstance(r, BlobResult)]
    images = [r for r in results if isinstance(r, ImageResult)]
    name = batch["file"].removesuffix(".parquet") + ".results.jsonl"
    artifacts.write_json_lines(_run_folder() / name, [asdict(r) for r in results])
    failed = sum(r.outcome in (BlobOutcome.FAILED, *NOT_PUSHED) for r in results)
    context["ti"].xcom_push(key="results", value={
        "file": name, "map_index": context["ti"].map_index, "failed": failed,
        "summary": summarize(blobs, images, [], zeros=True)})
    if not results:
        return {}
    frame = pd.DataFrame([asdict(r) for r in results])
    sizes = {"bytes": ("bytes", "sum")} if "bytes" in frame else {
        "manifests_pushed": ("manifests_pushed", "sum")}
    table = frame.groupby("outcome").agg(count=("digest", "count"), **sizes,
                                    seconds=("seconds", "sum"))
    log.info("this batch:\n%s", _table(table))
    return frame["outcome"].value_counts().to_dict()


@task(trigger_rule=TriggerRule.ALL_DONE)
@checked
def prune_tags(primary: dict[str, Any], secondary: dict[str, Any],
               differences: dict[str, Any]) -> dict[str, Any]:
    """Mirror deletions, behind the incomplete-snapshot and mass-deletion guards."""
    p = _params()
    if not p["prune"]:
        log.info("prune is off for this run")
        return _pruned([])
    changes = _changes(differences)
    if changes.empty:
        return _pruned([])
    try:
        doomed = prunable(changes, _snapshot(primary), _snapshot(secondary),
                          max_fraction=p["max_prune_fraction"], force=p["force_prune"])
        with _leases() as leases:
            results = prune(_client(PRIMARY_CONN_ID), _client(SECONDARY_CONN_ID, writable=True),
                            doomed, leases=leases, dry_run=p["dry_run"],
                            concurrency=p["concurrency"])
    except PruneRefused as exc:
        log.error("%s", exc)
        return _pruned([], refused=str(exc))
    artifacts.write_json_lines(_run_folder() / "pruned.jsonl", [asdict(r) for r in results])
    return _pruned(results, file="pruned.jsonl")


def _pruned(results: list[Any], *, refused: str | None = None,
            file: str | None = None) -> dict[str, Any]:
    """``prune_tags``' XCom: counts, the refusal if any, and the file of its records."""
    return {"summary": summarize([], [], results, zeros=True), "refused": refused,
            "file": file}


@task(trigger_rule=TriggerRule.ALL_DONE, queue=COPY_QUEUE, pool=COPY_POOL)
@checked
def verify_closure(primary: dict[str, Any]) -> dict[str, Any]:
    """``blobs``/``content``: every tag's closure on the secondary; what is missing is copied
    again, damage that no copy can repair is named (data file, expected and found, the fix)."""
    p = _params()
    taken = get_current_context()["ti"].xcom_pull(task_ids="snapshot_secondary") or {}
    level = VerifyLevel(taken.get("verify_level", VerifyLevel.TAGS))
    if level == VerifyLevel.TAGS or p["dry_run"]:
        log.info("this run verifies tags only (verify=%s)", p.get("verify", verifying.AUTO))
        return {"level": VerifyLevel.TAGS.value}
    try:
        skipped = [_result(Skipped, r)
                   for r in artifacts.read_json_lines(_run_folder() / SKIPPED_FILE)]
    except FileNotFoundError:  # no plan this run (it failed): nothing was skipped by it
        skipped = []
    with _leases() as leases:
        report = verifying.deep_verify(
            _client(PRIMARY_CONN_ID), _client(SECONDARY_CONN_ID, writable=True),
            verifying.images_of(_snapshot(primary), skipped), level, leases=leases,
            fraction=p.get("content_verify_fraction", 1.0), concurrency=p["concurrency"],
            parallelism=p["parallelism"])
    if report.blobs:
        _record_copied_bytes(get_current_context(), sum(r.bytes for r in report.blobs))
    artifacts.write_json_lines(_run_folder() / "verified.jsonl",
                               [asdict(f) for f in report.findings])
    return {"level": level.value, "line": report.line(), "problems": len(report.problems),
            "manifests": report.manifests_checked, "blobs": report.blobs_checked,
            "read": report.blobs_read,
            "first_problems": [f.line() for f in report.problems[:SHOWN]]}


@task(trigger_rule=TriggerRule.ALL_DONE)
@checked
def verify(primary: dict[str, Any]) -> dict[str, Any]:
    """Geo's verification: per-repository checksums of (tag, digest) on both sides.

    The secondary as this run saw it: its snapshot from the start of the run plus the writes
    the secondary acknowledged (``sync.secondary_after``: listed again only where a write did
    not go as planned, or where the run changed something when a full verification is due).
    Listed again whole when a copy task left no records (it died).
    """
    p = _params()
    context = get_current_context()
    ti = context["ti"]
    differences = ti.xcom_pull(task_ids="diff")
    taken = ti.xcom_pull(task_ids="snapshot_secondary")
    refs = _pulled(context, "push_manifests", "results")
    pruned = ti.xcom_pull(task_ids="prune_tags")
    recorded = (taken and differences and pruned is not None
                and len(refs) == len(ti.xcom_pull(task_ids="plan", key="image_batches") or []))
    before = _snapshot(taken) if recorded else None
    if before is not None and before.complete and differences["changes"] == 0:
        log.info("this run changed nothing on the secondary: its snapshot from the start of the "
                 "run is verified rather than listing it again")
        after = before
    elif before is not None:
        folder = _run_folder()
        after = secondary_after(
            _client(SECONDARY_CONN_ID), before,
            [_result(ImageResult, r) for ref in refs
             for r in artifacts.read_json_lines(folder / ref["file"])],
            [_result(PruneResult, r) for r in artifacts.read_json_lines(folder / pruned["file"])]
            if pruned.get("file") else [],
            scope=_scope(p), concurrency=p["concurrency"],
            relist_all=bool(taken.get("verification_due")))
    else:
        after = take_snapshot(_client(SECONDARY_CONN_ID), _scope(p), concurrency=p["concurrency"],
                              repositories=p["repositories"] or None)
    source = _snapshot(primary)
    report = diffs.verify(source, after)
    differ = report[~report["in_sync"]]
    store = Store()
    damaged = verifying.settle(store, report, VerifyLevel(taken.get("verify_level", "tags")
                                                          if taken else "tags"), before)
    deep = ti.xcom_pull(task_ids="verify_closure") or {}
    line = verifying.verification_line(
        report, VerifyLevel(deep.get("level", "tags")),
        RunKind(taken.get("kind", "full"), "", taken.get("sampled", 0)) if taken else None,
        damaged, None) + (f"; {deep['line']}" if deep.get("line") else "")
    log.info("%s", line)
    if len(differ):
        log.warning("repositories whose checksums differ:\n%s", _table(differ))
    counts = {side: snap.tags["repository"].value_counts().to_dict()
              for side, snap in (("primary", source), ("secondary", after))}
    now = pendulum.now("UTC")
    store.state.set_repository_state(
        {"repository": row.repository,
         "state": RepositoryState.DAMAGED if row.repository in damaged
         else RepositoryState.SYNCED if row.in_sync else RepositoryState.PENDING,
         "tags_primary": int(counts["primary"].get(row.repository, 0)),
         "tags_secondary": int(counts["secondary"].get(row.repository, 0)),
         "checksum_primary": row.primary if isinstance(row.primary, str) else None,
         "checksum_secondary": row.secondary if isinstance(row.secondary, str) else None,
         **({"last_sync_at": now, "last_error": None}
            if row.in_sync and row.repository not in damaged else {})}
        for row in report.itertuples()
    )
    # The names that differ are in the log and on the status page; XCom keeps the first few.
    return {"repositories": len(report), "differ": len(differ), "line": line,
            "damaged": sorted(damaged)[:SHOWN], "damaged_count": len(damaged),
            "first_differing": differ["repository"].head(SHOWN).tolist()}


@task(trigger_rule=TriggerRule.ALL_DONE)
@checked
def report(primary: dict[str, Any], pruned: dict[str, Any], verified: dict[str, Any]) -> dict:
    """The run's summary, and every failed layer; fails the run if anything failed."""
    context = get_current_context()
    p = context["params"]
    refs = [*_pulled(context, "copy_blobs", "results"),
            *_pulled(context, "push_manifests", "results")]
    summed: Counter[str] = Counter(summarize([], [], [], zeros=True))
    for summary in [*(ref["summary"] for ref in refs), pruned["summary"]]:
        summed.update(summary)
    started = context["dag_run"].start_date
    not_pushed = sum(summed[f"images {o}"] for o in NOT_PUSHED)
    counts: dict[str, Any] = {
        **summed,
        "repositories differing": verified.get("differ") or 0,
        "seconds": round(time.time() - started.timestamp(), 1) if started else None,
        # full (the secondary listed) or cheap (read from its record), and why
        "run kind": (context["ti"].xcom_pull(task_ids="snapshot_secondary") or {}).get("run_kind"),
        "verification": verified.get("line"),
    }
    log.info("run summary%s:\n%s", " (dry run)" if p["dry_run"] else "",
             _table(pd.Series(counts, name="value", dtype=object).to_frame()))
    problems = []
    failed, map_index = [], {}
    for ref, record in _failed_blob_refs(context):
        failed.append(_result(BlobResult, record))
        map_index[(record["repository"], record["digest"])] = ref["map_index"]
    if failed:
        log.error("failed layers:\n%s", _table(pd.DataFrame([asdict(r) for r in failed])[
            ["repository", "digest", "size", "status", "code", "error"]]))
        problems.append(f"{len(failed)} blobs failed")
    if not_pushed:
        problems.append(f"{not_pushed} images not pushed")
    listing = _snapshot(primary)
    if listing.errors:
        problems.append(f"the primary's listing was incomplete ({listing.errors[0]})")
    problems += _repository_problems(listing)
    problems += _skipped_problems(context["ti"].xcom_pull(task_ids="plan", key="skipped"))
    if pruned.get("refused"):
        problems.append(pruned["refused"])
    deep = context["ti"].xcom_pull(task_ids="verify_closure") or {}
    problems += deep.get("first_problems") or []
    if verified.get("damaged_count"):
        problems.append(f"{verified['damaged_count']} repositories damaged on the secondary "
                        f"({', '.join(verified['damaged'])}): the verify_closure log of the run "
                        "that found it names each data file to remove, then run verify=blobs")
    dag_run = context["dag_run"]
    Store().history.record_run(
        dag_run.dag_id, dag_run.run_id, "failed" if problems else "success",
        {**counts, "problems": problems, "dry_run": p["dry_run"]},
        [{"repository": r.repository, "digest": r.digest, "size": r.size, "status": r.status,
          "code": r.code, "error": r.error, "task_id": "copy_blobs",
          "map_index": map_index.get((r.repository, r.digest))} for r in failed],
    )
    alerts.send_stats(Store())
    _apply_retention(pendulum.now("UTC"))
    if problems:
        raise ReplicationFailed("; ".join(problems))
    return counts


def _skipped_problems(skipped: dict[str, Any] | None) -> list[str]:
    """Name the images the plan could not replicate (malformed, unsupported, past a bound)."""
    if not skipped or not skipped["count"]:
        return []
    shown = [_result(Skipped, record) for record in skipped["shown"]]
    Store().state.set_repository_state(
        {"repository": s.repository, "state": RepositoryState.FAILED,
         "last_error": f"{s.digest}: {s.reason}"[:4000]} for s in shown)
    lines = [f"cannot replicate {s.repository}:{','.join(s.tags)} ({s.digest}): {s.reason}"
             for s in shown]
    if skipped["count"] > len(shown):
        lines.append(f"and {skipped['count'] - len(shown)} more images: see the plan log")
    return lines


def _repository_problems(listing: Snapshot, shown: int = SHOWN) -> list[str]:
    """Log, record on the status page and name the repositories that could not be handled."""
    if not listing.problems:
        return []
    log.error("repositories and tags that cannot be replicated (every other repository was):\n%s",
              _table(pd.DataFrame(listing.problems)))
    reasons: dict[str, list[str]] = {}
    for found in listing.problems:
        reasons.setdefault(found["repository"], []).append(problem_line(found))
    Store().state.set_repository_state(
        {"repository": repository, "state": RepositoryState.FAILED, "last_error": "; ".join(lines)[:4000]}
        for repository, lines in sorted(reasons.items())
    )
    lines = [f"cannot replicate {problem_line(found)}" for found in listing.problems[:shown]]
    if len(listing.problems) > shown:
        lines.append(f"and {len(listing.problems) - shown} more problems: see the "
                     "snapshot_primary log")
    return lines


def replicate() -> None:
    """Lay out the replication tasks in the current DAG."""
    primary = snapshot.override(task_id="snapshot_primary")(PRIMARY_CONN_ID)
    secondary = snapshot.override(task_id="snapshot_secondary")(SECONDARY_CONN_ID)
    differences = diff(primary, secondary)
    blob_batches = plan(differences, primary)
    image_batches = manifest_batches()
    blob_batches >> image_batches
    copied = copy_blobs.expand(batch=blob_batches)
    pushed = push_manifests.expand(batch=image_batches)
    copied >> pushed
    pruned = prune_tags(primary, secondary, differences)
    pushed >> pruned
    verified = verify(primary)
    closure = verify_closure(primary)
    pruned >> closure >> verified
    report(primary, pruned, verified)


def _failed_blob_refs(context: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The failed blobs' records of this run's ``copy_blobs`` batches, with their batch's
    reference: only the files of batches that had failures are read."""
    folder = _run_folder()
    return [(ref, record) for ref in _pulled(context, "copy_blobs", "results") if ref["failed"]
            for record in artifacts.read_json_lines(folder / ref["file"])
            if record["outcome"] == BlobOutcome.FAILED]


def _pulled(context: Any, task_id: str, key: str) -> list[Any]:
    """Every map index's XCom under ``key`` (failed map indexes push ``failed``)."""
    return _records(context["ti"].xcom_pull(task_ids=task_id, key=key))


def _records(value: Any) -> list[dict[str, Any]]:
    # One map index comes back as its own value, several as a sequence of values.
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    return [record for item in value for record in _records(item)]


def _result(kind: type, record: dict[str, Any]):
    return kind(**{k: v for k, v in record.items() if k in kind.__dataclass_fields__})


def _table(frame: pd.DataFrame) -> str:
    return frame.to_string() if len(frame) else "(none)"


# How often a draining replicate_events looks for new events: a cheap count, no write lock.
DRAIN_POLL_SECONDS = 0.2


@task(queue=COPY_QUEUE, pool=COPY_POOL)
@checked
def replicate_events(max_attempts: int = 10) -> dict[str, int]:
    """Claim waiting events, replicate them, and acknowledge each once its tag is complete.

    Then keep draining: claim and replicate whatever arrives next, until no event has come for
    ``[registry_replication] event_drain_idle_seconds`` (default 60), so a burst of pushes skips
    the scheduler's and the task start-up's seconds. Events marked failed (their image cannot
    be replicated, they ran out of attempts, or they kept losing their worker) do not stop the
    drain: the run fails once it ends, naming them, and the failure alert fires.
    """
    idle_seconds = conf.getfloat("registry_replication", "event_drain_idle_seconds", fallback=60)
    # A cap on one task's life, so logs and runs stay readable under a never-ending stream.
    max_seconds = conf.getfloat("registry_replication", "event_drain_max_seconds", fallback=3600)
    # Each repository's work is a few round trips one after another (HEADs, manifests,
    # blobs, tags): a burst over many repositories goes as fast as it overlaps them.
    at_once = conf.getint("registry_replication", "event_repositories_at_once", fallback=16)
    # The event path's mass-deletion guard (the reconcile's is its max_prune_fraction param).
    max_prune_fraction = conf.getfloat("registry_replication", "max_prune_fraction",
                                       fallback=0.5)
    store = Store()
    primary, secondary = _client(PRIMARY_CONN_ID), _client(SECONDARY_CONN_ID, writable=True)
    totals = {"claimed": 0, "done": 0, "retrying": 0, "batches": 0}
    started = last_work = time.monotonic()
    with Leases(store) as leases:
        # Renewed from the start: events are claimed under this writer's identity, so its
        # heartbeat keeps the claims alive while the work goes on, and a killed task's events
        # come back within the lease time.
        leases.keep_alive()
        failed: list[str] = []  # events marked failed, as repository:tag
        while True:
            failed += _dead_letter_lost(store, max_attempts)
            owner, claimed = store.queue.claim(lease_seconds=leases.ttl, owner=leases.owner,
                                               max_attempts=max_attempts)
            if claimed:
                log.info("claimed %d events: %s", len(claimed), ", ".join(
                    f"{e.action} {e.repository}:{e.tag or e.digest}" for e in claimed[:20]))
                copied: list[int] = []
                try:
                    outcomes = realtime.replicate_events(
                        primary, secondary, claimed, leases=leases, repositories_at_once=at_once,
                        on_copied=copied.append, max_prune_fraction=max_prune_fraction)
                finally:
                    if sum(copied):
                        _record_copied_bytes(get_current_context(), sum(copied))
                counts, given_up = _acknowledge(store, owner, claimed, outcomes, max_attempts)
                failed += given_up
                totals = {k: totals[k] + counts.get(k, 0) for k in totals}
                totals["batches"] += 1
                last_work = time.monotonic()
            now = time.monotonic()
            if now - started >= max_seconds:
                log.info("drained for %.0fs (event_drain_max_seconds): ending; the next run "
                         "carries on", now - started)
                break
            if not _wait_for_events(store, last_work + idle_seconds):
                break
    if not totals["batches"]:
        log.info("no events to process (another run took them, or they are backing off)")
    else:
        log.info("drained %d events in %d batches; none came for %.0fs", totals["claimed"],
                 totals["batches"], idle_seconds)
    if failed:
        raise ReplicationFailed(
            f"{len(failed)} events are marked failed (their image cannot be replicated, they "
            f"failed {max_attempts} times, or their worker was lost {max_attempts} times; the "
            "log above says which): " + ", ".join(failed[:SHOWN])
            + (f" and {len(failed) - SHOWN} more" if len(failed) > SHOWN else ""))
    return totals


def _dead_letter_lost(store: Store, max_attempts: int) -> list[str]:
    lost = store.queue.dead_letter_lost(max_attempts)
    for event in lost:
        log.error("event %s (%s %s:%s) is marked failed: %s", event.id, event.action,
                  event.repository, event.tag or event.digest, event.error)
    return [f"{e.repository}:{e.tag or e.digest}" for e in lost]


def _wait_for_events(store: Store, until: float) -> bool:
    """Poll the store (a count, cheap) until events are claimable or ``until`` passes."""
    while True:
        if store.queue.ready_count():
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(min(DRAIN_POLL_SECONDS, max(until - time.monotonic(), 0)))


def _acknowledge(store: Store, owner: str, claimed: list[Event],
                 outcomes: dict[str, str | None], max_attempts: int,
                 ) -> tuple[dict[str, int], list[str]]:
    """Mark each event done, failed (no retry can help) or back off; record each
    repository's state. Returns the counts and the events marked failed."""
    done = [event_id for event_id, error in outcomes.items() if error is None]
    store.queue.complete(owner, done)
    acknowledged = set(done)
    alerts.send_latencies(store.history.record_acknowledged(e for e in claimed if e.id in acknowledged))
    failed: dict[str, list[str]] = {}
    for event_id, error in outcomes.items():
        if error is not None:
            failed.setdefault(error, []).append(event_id)
    given_up: list[str] = []
    for error, ids in failed.items():
        if isinstance(error, PermanentFailure):
            log.error("events %s are marked failed (no retry can help): %s", ", ".join(ids),
                      error)
            store.queue.fail(owner, ids, error)
            given_up += ids
            continue
        log.error("events %s will be retried: %s", ", ".join(ids), error)
        given_up += store.queue.retry_later(owner, ids, error, max_attempts=max_attempts)
    by_id = {e.id: e for e in claimed}
    repository_error = {e.repository: None for e in claimed}
    for error, ids in reversed(failed.items()):  # the first error per repository wins
        repository_error.update({by_id[i].repository: error for i in ids})
    now = pendulum.now("UTC")
    store.state.set_repository_state(
        {"repository": repo, "state": RepositoryState.FAILED if error else RepositoryState.SYNCED,
         "last_sync_at": now,
         "last_error": error}
        for repo, error in sorted(repository_error.items())
    )
    alerts.send_stats(store)
    counts = {"claimed": len(claimed), "done": len(done),
              "retrying": len(outcomes) - len(done) - len(given_up)}
    return counts, [f"{by_id[i].repository}:{by_id[i].tag or by_id[i].digest}" for i in given_up]
