"""The reconcile's tasks and their wiring: ``replicate()`` lays out, in the current DAG,

    snapshot_primary -> for each configured secondary s, a task group s:
        s.snapshot_secondary -> s.diff -> s.plan -> s.copy_blobs[*] -> s.push_manifests[*]
        -> s.prune_tags -> s.verify_closure -> s.verify
    -> report -> retention (a teardown)

and, with several secondaries configured, a first task per group and the fan-out between the
groups' plans and their copies:

    s.reach -> s.snapshot_secondary
    every s.plan -> fanout_plan -> fanout_blobs[*] -> s.leftover_batches -> s.copy_blobs[*]

The primary is listed once for every secondary, and with several each blob they lack is read
from it once (``fanout_blobs``: a failed leg is that secondary's leftover, never the task's
failure; ``s.copy_blobs`` copies only the leftovers). Each group is one secondary's unit of
failure (its failed layer fails only its group's tasks), and a group whose secondary the run
does not serve (param ``secondaries``) is skipped. The DAG files (``registry_reconcile``,
``registry_sync``) only declare schedules, params and docs, then call ``replicate()``.
Snapshots, differences and plan batches go to the run's folder (``airflow.run_folder``), a
secondary's under its own subfolder, as Parquet; XComs carry only file names and counts. The
snapshots are in ``airflow.reconcile_listing``; the copy tasks (and the fan-out) in
``airflow.reconcile_copy``; the last tasks, which check and report what
the run did, and ``retention`` in ``airflow.reconcile_report``. Every task refuses, before any
work, state that the executor's machines cannot share (``deployment.checked``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from airflow.sdk import TaskGroup, TriggerRule, XComArg, get_current_context, task

from registry_replication.airflow.deployment import checked
from registry_replication.airflow.reconcile_copy import (
    copy_blobs,
    fanout_blobs,
    fanout_plan,
    leftover_batches,
    push_manifests,
)
from registry_replication.airflow.reconcile_listing import (
    reach,
    snapshot_primary,
    snapshot_secondary,
)
from registry_replication.airflow.reconcile_report import report, retention, verify, verify_closure
from registry_replication.airflow.run_folder import (
    SKIPPED_FILE,
    in_group,
    log_table,
    read_changes,
    read_snapshot,
    run_folder,
)
from registry_replication.airflow.settings import (
    PARSED,
    current_params,
    registry_client,
    skip_unless_selected,
    task_leases,
)
from registry_replication.engine import artifacts
from registry_replication.engine import diff as diffs
from registry_replication.engine.diff import IN_SYNC
from registry_replication.engine.plan import Plan, batch_label, build_plan
from registry_replication.engine.prune import PruneRefused, prunable, prune
from registry_replication.outcomes import human_size, summarize

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
    group per configured secondary (its id the connection's), then the run's report. With
    several secondaries configured, the blobs they lack are copied by the top-level fan-out
    (``fanout_plan``, ``fanout_blobs[*]``), each read from the primary once, and each group's
    ``copy_blobs`` copies only what the fan-out left for it."""
    primary = snapshot_primary()
    fanout: tuple[XComArg, XComArg] | None = None
    read: list[XComArg] = []
    if len(PARSED.secondaries) > 1:
        merged = fanout_plan()
        fanout = (merged, fanout_blobs.expand(batch=merged))
        read.append(fanout[1])
    for s in PARSED.secondaries:
        with TaskGroup(group_id=s):
            read += _secondary_tasks(primary, s, fanout)
    reported = report(primary)
    # The report reads these tasks' XComs: each is drawn as its input.
    read >> reported
    # A teardown: the run's state is the report's, whatever retention does.
    reported >> retention().as_teardown()


def _secondary_tasks(
    primary: XComArg, s: str, fanout: tuple[XComArg, XComArg] | None
) -> list[XComArg]:
    """One secondary's tasks, in its group (``fanout``: the fan-out's plan and copy tasks,
    when there is one); returns those whose XComs the report reads."""
    secondary = snapshot_secondary(s)
    if fanout is not None:  # the fan-out waits for every group: a down site fails it fast
        reach(s) >> secondary
    differences = diff(primary, secondary, s)
    blob_batches = plan(differences, primary, s)
    image_batches = manifest_batches(s)
    blob_batches >> image_batches
    if fanout is None:
        copied = copy_blobs.partial(secondary=s).expand(batch=blob_batches)
    else:
        merged, fanned = fanout
        blob_batches >> merged
        left = leftover_batches(s)
        [blob_batches, fanned] >> left
        copied = copy_blobs.partial(secondary=s, recheck=True).expand(batch=left)
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
