"""The reconcile's tasks and their wiring: ``replicate()`` lays out, in the current DAG,

    snapshot_primary -> for each configured secondary s, a task group s:
        (s.reach, with several secondaries ->) s.snapshot_secondary -> s.diff -> s.plan -> s.copy_blobs[*] -> s.push_manifests[*]
        -> s.prune_tags -> s.verify_closure -> s.verify
    -> report -> retention (a teardown)

The primary is listed once for every secondary; each group is one secondary's unit of failure
(its failed layer fails only its group's tasks), and a group whose secondary the run does not
serve (param ``secondaries``) is skipped. The DAG files (``registry_reconcile``,
``registry_sync``) only declare schedules, params and docs, then call ``replicate()``.
Snapshots, differences and plan batches go to the run's folder (``airflow.run_folder``), a
secondary's under its own subfolder, as Parquet; XComs carry only file names and counts. The
snapshots are in ``airflow.reconcile_listing``; the last tasks, which check and report what
the run did, and ``retention`` in ``airflow.reconcile_report``. Every task refuses, before any
work, state that the executor's machines cannot share (``deployment.checked``).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any, TypedDict

import pandas as pd
from airflow.sdk import TaskGroup, TriggerRule, XComArg, get_current_context, task

from registry_replication.airflow import alerts
from registry_replication.airflow.deployment import checked
from registry_replication.airflow.reconcile_listing import (
    reach,
    snapshot_primary,
    snapshot_secondary,
)
from registry_replication.airflow.reconcile_report import report, retention, verify, verify_closure
from registry_replication.airflow.run_folder import (
    SKIPPED_FILE,
    failed_refs,
    in_group,
    log_table,
    read_changes,
    read_snapshot,
    run_folder,
)
from registry_replication.airflow.settings import (
    COPY_QUEUE,
    PARSED,
    ReplicationFailed,
    current_params,
    registry_client,
    skip_unless_selected,
    task_leases,
)
from registry_replication.engine import artifacts
from registry_replication.engine import diff as diffs
from registry_replication.engine.copy import BlobResult, Copier, ImageResult
from registry_replication.engine.diff import IN_SYNC
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import BlobTask, ImageTask, Plan, batch_label, build_plan
from registry_replication.engine.prune import PruneRefused, prunable, prune
from registry_replication.outcomes import failed_digests, human_size, summarize
from registry_replication.run_outcome import Problem, RunOutcome

log = logging.getLogger(__name__)


@task
@checked
def diff(primary: dict[str, Any], taken: dict[str, Any], secondary: str) -> dict[str, Any]:
    """Classify every tag; pass on only what is not in sync."""
    skip_unless_selected(secondary)
    differences = diffs.diff(read_snapshot(primary), read_snapshot(taken))
    log.info("%s: tags per repository:\n%s", secondary, log_table(diffs.summary(differences)))
    counts = differences["status"].value_counts().to_dict()
    log.info(
        "%s overall: %s",
        secondary,
        ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no tags",
    )
    changed = differences[differences["status"] != IN_SYNC]
    name = f"{secondary}/changes.parquet"
    size = artifacts.write_frame(run_folder() / name, changed)
    return {"file": name, "changes": len(changed), "bytes": size}


@task
@checked
def plan(
    differences: dict[str, Any], primary: dict[str, Any], secondary: str
) -> list[dict[str, Any]]:
    """Fetch the manifests to copy (but those the primary's listing read), find the blobs the
    secondary lacks, and batch the work.

    Each batch goes to its own file in the secondary's subfolder of the run's folder. Returns the blob batches' labels and
    files; the image batches' go to XCom key ``image_batches``.
    """
    skip_unless_selected(secondary)
    p = current_params()
    folder = run_folder()
    changes = read_changes(differences)
    read = artifacts.read_manifests(folder / primary["manifests"])
    result = build_plan(
        registry_client(PARSED.primary_conn_id),
        registry_client(secondary),
        diffs.wanted(changes),
        concurrency=p["concurrency"],
        known_manifests=read,
    )
    del read  # the plan keeps those it needs
    for skipped in result.skipped:
        log.error(
            "cannot replicate %s:%s (%s) to %s: %s",
            skipped.repository,
            ",".join(skipped.tags),
            skipped.digest,
            secondary,
            skipped.reason,
        )
    # For the report, which fails the run and names them, and for verify_closure, which
    # leaves them out.
    artifacts.write_json_lines(
        folder / f"{secondary}/{SKIPPED_FILE}", [asdict(s) for s in result.skipped]
    )
    if p["dry_run"]:
        log.info(
            "dry run: would push %d images and copy %d blobs (%s) to %s; nothing changes",
            len(result.images),
            len(result.blobs),
            human_size(result.transfer_bytes),
            secondary,
        )
        result = Plan(skipped=result.skipped)
    image_batches = []
    for i, b in enumerate(result.image_batches()):
        name = f"{secondary}/images-{i:05d}.parquet"
        # vars(), not asdict(): a flat record, without asdict's deep copy of every list (which
        # at 100,000 images costs seconds); the writers only read it.
        artifacts.write_records(folder / name, [vars(t) for t in b])
        # The manifests read while planning, so that push_manifests need not read them again.
        artifacts.write_manifests(
            folder / artifacts.manifests_file(name),
            [
                (t.repository, found)
                for t in b
                for digest in (*t.children, t.digest)
                if (found := result.manifests.get((t.repository, digest))) is not None
            ],
        )
        image_batches.append(
            {"label": b[0].label + (f" +{len(b) - 1} images" if len(b) > 1 else ""), "file": name}
        )
    get_current_context()["ti"].xcom_push(key="image_batches", value=image_batches)
    blob_batches = result.blob_batches(PARSED.blob_batch_bytes)
    refs = []
    for i, b in enumerate(blob_batches):
        name = f"{secondary}/blobs-{i:05d}.parquet"
        artifacts.write_records(folder / name, [vars(t) for t in b])
        refs.append({"label": batch_label(b, i, len(blob_batches)), "file": name})
    return refs


@task
def manifest_batches(secondary: str) -> list[dict[str, Any]]:
    """The secondary's plan's image batches, as a list to map ``push_manifests`` over."""
    ti = get_current_context()["ti"]
    return ti.xcom_pull(task_ids=in_group(secondary, "plan"), key="image_batches") or []


@task(
    map_index_template="{{ batch_label }}",
    retry_exponential_backoff=2.0,
    queue=COPY_QUEUE,
    pool=PARSED.copy_pool,
)
@checked
def copy_blobs(batch: dict[str, Any], secondary: str) -> BatchResults:
    """Copy (or mount) one batch of blobs; fails, after retries, if any blob failed.

    Every blob's record goes to the run's folder, failed or not, so the run's report counts
    what a failed batch did copy; XCom key ``results`` names the file (with this map index, for
    links to this log) and carries the batch's counts.
    """
    skip_unless_selected(secondary)
    context = get_current_context()
    context["batch_label"] = batch["label"]
    tasks = [BlobTask(**b) for b in artifacts.read_records(run_folder() / batch["file"])]
    with task_leases(secondary) as leases:
        copier = _copier(context, leases)
        results = copier.copy_blobs(tasks)
    summary, failed = _push_results(context, batch, results)
    alerts.record_copied_bytes(context, leases.secondary, sum(r.bytes for r in results))
    if failed:
        raise ReplicationFailed(
            f"{len(failed)} of {len(results)} blobs failed in {batch['label']} for "
            f"{secondary}; first: "
            f"{failed[0].subject}: {failed[0].error}"
        )
    return summary


@task(
    map_index_template="{{ batch_label }}",
    trigger_rule=TriggerRule.ALL_DONE,
    retry_exponential_backoff=2.0,
    queue=COPY_QUEUE,
    pool=PARSED.copy_pool,
)
@checked
def push_manifests(batch: dict[str, Any], secondary: str) -> BatchResults:
    """Push one batch of images whose blobs are all on the secondary; tags last."""
    skip_unless_selected(secondary)
    context = get_current_context()
    context["batch_label"] = batch["label"]
    copied = failed_refs(context, in_group(secondary, "copy_blobs"))
    failed_blobs = failed_digests(record for _, record in copied)
    with task_leases(secondary) as leases:
        copier = _copier(context, leases)
        folder = run_folder()
        planned = [ImageTask(**i) for i in artifacts.read_records(folder / batch["file"])]
        copier.manifests.update(
            artifacts.read_manifests(folder / artifacts.manifests_file(batch["file"]))
        )
        with ExitStack() as held:
            # The batch's repositories' leases, held for the batch: one store write per
            # repository rather than one per image (each image still takes it, re-entrantly).
            for repository in sorted({t.repository for t in planned}):
                held.enter_context(leases.repository(repository))
            results = copier.push_images(planned, failed_blobs)
    summary, bad = _push_results(context, batch, results)
    if bad:
        raise ReplicationFailed(
            f"{len(bad)} of {len(results)} images not pushed to {secondary}; first: "
            f"{bad[0].repository}:{','.join(bad[0].tags)}: {bad[0].error}"
        )
    return summary


def _copier(context: Any, leases: Leases) -> Copier:
    """A copy task's copier. Its first try trusts the plan, which asked the secondary about
    every blob and tag minutes ago in this run (a tag written meanwhile by another writer is
    written again with the same bytes; the compare-and-set on the primary still guards every
    tag); a retry checks again before each blob and tag, so it never transfers twice."""
    return Copier(
        registry_client(PARSED.primary_conn_id),
        registry_client(leases.secondary, writable=True),
        leases=leases,
        parallelism=current_params()["parallelism"],
        concurrency=current_params()["concurrency"],
        recheck=context["ti"].try_number > 1,
    )


class BatchResults(TypedDict):
    """A copy batch's summary: its records' file, its map index (for links to its log), how
    many failed and its counts (``summarize``)."""

    file: str
    map_index: int
    failed: int
    summary: dict[str, int]


def _push_results(
    context: Any, batch: dict[str, Any], results: list[BlobResult] | list[ImageResult]
) -> tuple[BatchResults, list[Problem]]:
    """Log the batch's summary table, write its records next to the batch's file and share
    their name and counts (XCom key ``results``, which the report and verify read: a map index
    that fails returns nothing); returns the same summary and the batch's problems."""
    blobs = [r for r in results if isinstance(r, BlobResult)]
    images = [r for r in results if isinstance(r, ImageResult)]
    name = batch["file"].removesuffix(".parquet") + ".results.jsonl"
    records = [vars(r) for r in results]  # read only: see plan()
    artifacts.write_json_lines(run_folder() / name, records)
    outcome = RunOutcome(blobs=blobs, images=images)
    problems = outcome.problems()
    summary: BatchResults = {
        "file": name,
        "map_index": context["ti"].map_index,
        "failed": len(problems),
        "summary": outcome.counts(zeros=True),
    }
    context["ti"].xcom_push(key="results", value=summary)
    if not results:
        return summary, problems
    frame = pd.DataFrame(records)
    sizes = (
        {"bytes": ("bytes", "sum")}
        if "bytes" in frame
        else {"manifests_pushed": ("manifests_pushed", "sum")}
    )
    table = frame.groupby("outcome").agg(
        count=("digest", "count"), **sizes, seconds=("seconds", "sum")
    )
    log.info("this batch (%s):\n%s", context["ti"].task_id, log_table(table))
    return summary, problems


@task(trigger_rule=TriggerRule.ALL_DONE)
@checked
def prune_tags(
    primary: dict[str, Any], taken: dict[str, Any], differences: dict[str, Any], secondary: str
) -> dict[str, Any]:
    """Mirror deletions, behind the incomplete-snapshot and mass-deletion guards."""
    skip_unless_selected(secondary)
    p = current_params()
    if not p["prune"]:
        log.info("prune is off for this run (%s)", secondary)
        return _pruned([])
    changes = read_changes(differences)
    if changes.empty:
        return _pruned([])
    try:
        doomed = prunable(
            changes,
            read_snapshot(primary),
            read_snapshot(taken),
            max_fraction=p["max_prune_fraction"],
            force=p["force_prune"],
        )
        with task_leases(secondary) as leases:
            results = prune(
                registry_client(PARSED.primary_conn_id),
                registry_client(secondary, writable=True),
                doomed,
                leases=leases,
                dry_run=p["dry_run"],
                concurrency=p["concurrency"],
            )
    except PruneRefused as exc:
        log.error("%s: %s", secondary, exc)
        return _pruned([], refused=str(exc))
    name = f"{secondary}/pruned.jsonl"
    artifacts.write_json_lines(run_folder() / name, [asdict(r) for r in results])
    return _pruned(results, file=name)


def _pruned(
    results: list[Any], *, refused: str | None = None, file: str | None = None
) -> dict[str, Any]:
    """``prune_tags``' XCom: counts, the refusal if any, and the file of its records."""
    return {"summary": summarize([], [], results, zeros=True), "refused": refused, "file": file}


def replicate() -> None:
    """Lay out the replication tasks in the current DAG: the primary listed once, then a task
    group per configured secondary (its id the connection's), then the run's report."""
    primary = snapshot_primary()
    read: list[XComArg] = []
    for s in PARSED.secondaries:
        with TaskGroup(group_id=s):
            read += _secondary_tasks(primary, s)
    reported = report(primary)
    # The report reads these tasks' XComs: each is drawn as its input.
    read >> reported
    # A teardown: the run's state is the report's, whatever retention does.
    reported >> retention().as_teardown()


def _secondary_tasks(primary: XComArg, s: str) -> list[XComArg]:
    """One secondary's tasks, in its group; returns those whose XComs the report reads."""
    secondary = snapshot_secondary(s)
    if len(PARSED.secondaries) > 1:  # a down site fails fast: the others need not wait on it
        reach(s) >> secondary
    differences = diff(primary, secondary, s)
    blob_batches = plan(differences, primary, s)
    image_batches = manifest_batches(s)
    blob_batches >> image_batches
    copied = copy_blobs.partial(secondary=s).expand(batch=blob_batches)
    pushed = push_manifests.partial(secondary=s).expand(batch=image_batches)
    copied >> pushed
    pruned = prune_tags(primary, secondary, differences, s)
    pushed >> pruned
    verified = verify(primary, s)
    closure = verify_closure(primary, s)
    pruned >> closure >> verified
    # verify and the report read these tasks' XComs (the copy tasks' under key ``results``: a
    # failed map index returns nothing): each is drawn as their input.
    [differences, secondary, blob_batches, pushed, pruned] >> verified
    return [secondary, blob_batches, copied, pushed, pruned, closure, verified]
