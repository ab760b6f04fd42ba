"""The reconcile's copy tasks: each group's ``copy_blobs`` and ``push_manifests``, and with
several secondaries the read-once fan-out between the groups' plans and their copies
(``fanout_plan``, ``fanout_blobs``, each group's ``leftover_batches``). Each batch's records
go to the run's folder; XCom key ``results`` names them (``BatchResults``), for the report,
``verify`` and ``push_manifests`` (``run_folder.failed_blob_refs``).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any, TypedDict

import pandas as pd
from airflow.sdk import TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from registry_replication.airflow import alerts
from registry_replication.airflow.deployment import checked
from registry_replication.airflow.run_folder import (
    FANOUT_TASK,
    failed_blob_refs,
    fanned_out,
    in_group,
    log_table,
    run_folder,
)
from registry_replication.airflow.settings import (
    COPY_QUEUE,
    PARSED,
    ReplicationFailed,
    current_params,
    registry_client,
    selected,
    skip_unless_selected,
    task_leases,
)
from registry_replication.engine import artifacts
from registry_replication.engine.copy import BlobResult, Copier, ImageResult
from registry_replication.engine.fanout import FanoutCopier, FanoutTask, fanout_tasks
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import BlobTask, ImageTask, Plan, batch_label
from registry_replication.engine.sites import Site
from registry_replication.outcomes import BlobOutcome, failed_digests, human_size
from registry_replication.run_outcome import Problem, RunOutcome
from registry_replication.transport.client import RegistryClient

log = logging.getLogger(__name__)

# What every task that writes blobs or images shares: the copy workers' queue and pool, a map
# index named by its batch, and backing off between retries.
COPY_TASK: dict[str, Any] = {
    "map_index_template": "{{ batch_label }}",
    "retry_exponential_backoff": 2.0,
    "queue": COPY_QUEUE,
    "pool": PARSED.copy_pool,
}


@task(trigger_rule=TriggerRule.ALL_DONE)
@checked
def fanout_plan() -> list[dict[str, Any]]:
    """The blobs of every served secondary's plan, grouped by digest (``fanout_tasks``), in
    batches for ``fanout_blobs``: each blob read from the primary once for all the secondaries
    that lack it. Batches are balanced by unique bytes (``Plan.blob_batches`` over one stand-in
    per digest); each row is one secondary's task (its ``BlobTask`` and ``secondary``). A
    secondary whose plan did not succeed is left out: its group has nothing to copy."""
    context = get_current_context()
    folder = run_folder()
    plans: dict[str, list[BlobTask]] = {}
    for secondary in selected(context["params"]):
        refs = context["ti"].xcom_pull(task_ids=in_group(secondary, "plan"))
        if refs is None:
            log.warning("%s: its plan did not succeed: it is not in the fan-out", secondary)
            continue
        plans[secondary] = [
            BlobTask(**record)
            for ref in refs
            for record in artifacts.read_records(folder / ref["file"])
        ]
    groups = fanout_tasks(plans)
    stand_ins = Plan(blobs=[_stand_in(group) for group in groups])
    group_of = {id(stand_in): group for stand_in, group in zip(stand_ins.blobs, groups)}
    batches = stand_ins.blob_batches(PARSED.blob_batch_bytes)
    refs = []
    for j, batch in enumerate(batches):
        name = f"fanout/blobs-{j:05d}.parquet"
        artifacts.write_records(
            folder / name,
            [
                {**vars(leg), "secondary": secondary}
                for stand_in in batch
                for secondary, leg in group_of[id(stand_in)].legs.items()
            ],
        )
        refs.append({"label": batch_label(batch, j, len(batches)), "file": name})
    unique = stand_ins.transfer_bytes
    per_secondary = {
        secondary: sum(t.size for t in tasks if t.mount_from is None)
        for secondary, tasks in plans.items()
    }
    log.info(
        "fan-out: %d blobs, %s to read from the primary once (instead of %s, one read per "
        "secondary) for %s, in %d batches",
        len(groups),
        human_size(unique),
        human_size(sum(per_secondary.values())),
        ", ".join(f"{s} {human_size(b)}" for s, b in per_secondary.items()) or "no secondary",
        len(batches),
    )
    return refs


def _stand_in(group: FanoutTask) -> BlobTask:
    """One digest of the fan-out as one task to balance batches by: a transfer of its size,
    unless every secondary that lacks it mounts it."""
    legs = list(group.legs.values())
    transfers = any(leg.mount_from is None for leg in legs)
    return BlobTask(
        group.digest,
        group.size,
        group.source,
        group.source,
        mount_from=None if transfers else legs[0].mount_from,
    )


@task(**COPY_TASK)
@checked
def fanout_blobs(batch: dict[str, Any]) -> dict[str, Any]:
    """Copy one fan-out batch to its secondaries, each blob read from the primary once
    (``FanoutCopier``: one read teed into every secondary's upload, digest-checked, a breaker
    per secondary). A failed leg does not fail this task: it is that secondary's leftover,
    which its group's ``copy_blobs`` copies. Each secondary's records go to
    ``fanout/<secondary>/``; XCom key ``results`` lists their summaries."""
    context = get_current_context()
    context["batch_label"] = batch["label"]
    plans: dict[str, list[BlobTask]] = {}
    for record in artifacts.read_records(run_folder() / batch["file"]):
        plans.setdefault(record.pop("secondary"), []).append(BlobTask(**record))
    primary = registry_client(PARSED.primary_conn_id)
    with ExitStack() as held:
        sites = [
            Site.writing(registry_client(s, writable=True), held.enter_context(task_leases(s)))
            for s in plans
        ]
        fanout = FanoutCopier(
            primary,
            {
                site.name: _copier(context, site.writer, primary=primary, secondary=site.client)
                for site in sites
            },
            parallelism=current_params()["parallelism"],
        )
        results = fanout.copy_blobs(plans)
    summaries: list[FanoutResults] = []
    stem = batch["file"].removeprefix("fanout/").removesuffix(".parquet")
    copied = {s: sum(r.bytes for r in got) for s, got in results.items()}
    for secondary, got in results.items():
        summary, failed = _write_results(
            context, f"fanout/{secondary}/{stem}.results.jsonl", got, f"fan-out to {secondary}"
        )
        summaries.append({**summary, "secondary": secondary})
        alerts.record_copied_bytes(context, secondary, copied[secondary])
        if failed:
            log.warning(
                "fan-out: %d of %d blobs did not reach %s; its copy_blobs copies them again "
                "(%s.copy_blobs); first: %s: %s",
                len(failed),
                len(got),
                secondary,
                secondary,
                failed[0].subject,
                failed[0].error,
            )
    context["ti"].xcom_push(key="results", value=summaries)
    log.info(
        "fan-out: read %s of blobs from the primary once, copied %s",
        human_size(fanout.primary_bytes),
        ", ".join(f"{human_size(b)} to {s}" for s, b in copied.items()),
    )
    return {"primary_bytes": fanout.primary_bytes, "copied": copied}


@task(trigger_rule=TriggerRule.ALL_DONE)
@checked
def leftover_batches(secondary: str) -> list[dict[str, Any]]:
    """What the fan-out left for ``secondary``: the blobs of its plan (as it was last made)
    that no fan-out results file records as there (copied, mounted, present), in batches for
    its ``copy_blobs``. A failed leg, a fan-out task that died, or a plan made again after the
    fan-out all end up here; in a healthy run the list is empty and ``copy_blobs`` skipped."""
    skip_unless_selected(secondary)
    context = get_current_context()
    planned = context["ti"].xcom_pull(task_ids=in_group(secondary, "plan"))
    if planned is None:
        raise AirflowSkipException(f"{secondary}: its plan did not succeed; nothing to copy")
    folder = run_folder()
    done = {
        (record["repository"], record["digest"])
        for ref in fanned_out(context, secondary)
        for record in artifacts.read_json_lines(folder / ref["file"])
        if record["outcome"] != BlobOutcome.FAILED
    }
    left = [
        task
        for ref in planned
        for record in artifacts.read_records(folder / ref["file"])
        if (task := _left(BlobTask(**record), done)) is not None
    ]
    batches = Plan(blobs=left).blob_batches(PARSED.blob_batch_bytes)
    refs = []
    for i, b in enumerate(batches):
        name = f"{secondary}/leftover-{i:05d}.parquet"
        artifacts.write_records(folder / name, [vars(t) for t in b])
        refs.append({"label": batch_label(b, i, len(batches)), "file": name})
    if left:
        log.warning(
            "%s: %d blobs of its plan not copied by the fan-out (%s), left to %s.copy_blobs: %s",
            secondary,
            len(left),
            FANOUT_TASK,
            secondary,
            ", ".join(f"{t.target}@{t.digest}" for t in left[:5])
            + (" ..." if len(left) > 5 else ""),
        )
    else:
        log.info("%s: the fan-out copied every blob of its plan", secondary)
    return refs


def _left(task: BlobTask, done: set[tuple[str, str]]) -> BlobTask | None:
    """The part of ``task`` not yet done: its repositories still lacking the blob, mounted
    from one that has it now (or the task's own ``mount_from``); None when none lacks it."""
    lacking = [r for r in task.repositories if (r, task.digest) not in done]
    if not lacking:
        return None
    holder = next((r for r in task.repositories if (r, task.digest) in done), task.mount_from)
    return BlobTask(task.digest, task.size, task.source, lacking[0], lacking[1:], holder)


@task(**COPY_TASK)
@checked
def copy_blobs(batch: dict[str, Any], secondary: str, recheck: bool = False) -> BatchResults:
    """Copy (or mount) one batch of blobs; fails, after retries, if any blob failed.

    Every blob's record goes to the run's folder, failed or not, so the run's report counts
    what a failed batch did copy; XCom key ``results`` names the file (with this map index, for
    links to this log) and carries the batch's counts. ``recheck``: ask the secondary about
    each blob even on the first try (leftovers of a fan-out, which may have copied them).
    """
    skip_unless_selected(secondary)
    context = get_current_context()
    context["batch_label"] = batch["label"]
    tasks = [BlobTask(**b) for b in artifacts.read_records(run_folder() / batch["file"])]
    with task_leases(secondary) as leases:
        copier = _copier(context, leases, recheck=recheck)
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


@task(**COPY_TASK, trigger_rule=TriggerRule.ALL_DONE)
@checked
def push_manifests(batch: dict[str, Any], secondary: str) -> BatchResults:
    """Push one batch of images whose blobs are all on the secondary; tags last."""
    skip_unless_selected(secondary)
    context = get_current_context()
    context["batch_label"] = batch["label"]
    failed_blobs = failed_digests(record for _, record in failed_blob_refs(context, secondary))
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


def _copier(
    context: Any,
    leases: Leases,
    *,
    recheck: bool = False,
    primary: RegistryClient | None = None,
    secondary: RegistryClient | None = None,
) -> Copier:
    """A copy task's copier (``primary``/``secondary``: clients already made). Its first try
    trusts the plan, which asked the secondary about every blob and tag minutes ago in this
    run (a tag written meanwhile by another writer is written again with the same bytes; the
    compare-and-set on the primary still guards every tag), unless ``recheck``; a retry checks
    again before each blob and tag, so it never transfers twice."""
    return Copier(
        primary or registry_client(PARSED.primary_conn_id),
        secondary or registry_client(leases.secondary, writable=True),
        leases=leases,
        parallelism=current_params()["parallelism"],
        concurrency=current_params()["concurrency"],
        recheck=recheck or context["ti"].try_number > 1,
    )


class BatchResults(TypedDict):
    """A copy batch's summary: its records' file, its task and map index (for links to its
    log), how many failed and its counts (``summarize``)."""

    file: str
    task_id: str
    map_index: int
    failed: int
    summary: dict[str, int]


class FanoutResults(BatchResults):
    """A fan-out batch's summary for one of its secondaries."""

    secondary: str


def _push_results(
    context: Any, batch: dict[str, Any], results: list[BlobResult] | list[ImageResult]
) -> tuple[BatchResults, list[Problem]]:
    """Write the batch's records next to the batch's file (``_write_results``) and share
    their name and counts (XCom key ``results``, which the report and verify read: a map index
    that fails returns nothing); returns the same summary and the batch's problems."""
    name = batch["file"].removesuffix(".parquet") + ".results.jsonl"
    summary, problems = _write_results(context, name, results, context["ti"].task_id)
    context["ti"].xcom_push(key="results", value=summary)
    return summary, problems


def _write_results(
    context: Any, name: str, results: list[BlobResult] | list[ImageResult], what: str
) -> tuple[BatchResults, list[Problem]]:
    """Write a batch's records to file ``name`` of the run's folder and log its summary table
    (under ``what``); returns its summary and its problems."""
    blobs = [r for r in results if isinstance(r, BlobResult)]
    images = [r for r in results if isinstance(r, ImageResult)]
    records = [vars(r) for r in results]  # read only: see reconcile.plan()
    artifacts.write_json_lines(run_folder() / name, records)
    outcome = RunOutcome(blobs=blobs, images=images)
    problems = outcome.problems()
    summary: BatchResults = {
        "file": name,
        "task_id": context["ti"].task_id,
        "map_index": context["ti"].map_index,
        "failed": len(problems),
        "summary": outcome.counts(zeros=True),
    }
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
    log.info("this batch (%s):\n%s", what, log_table(table))
    return summary, problems
