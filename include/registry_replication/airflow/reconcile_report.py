"""The reconcile's last tasks, which check and report what the run did: ``verify_closure``
(the ``blobs``/``content`` levels), ``verify`` (per-repository checksums on both sides) and
``report`` (the run's summary and problems, ``RunOutcome``, in the run history; it fails the
run if anything failed) and ``retention``, a teardown after it (old run folders and store
history). ``airflow.reconcile.replicate`` wires them in.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd
import pendulum
from airflow.sdk import TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from registry_replication.airflow import alerts
from registry_replication.airflow.deployment import checked
from registry_replication.airflow.run_folder import (
    SKIPPED_FILE,
    VERIFIED_FILE,
    Retention,
    apply_retention,
    failed_blob_refs,
    failed_refs,
    fanned_out,
    in_group,
    log_table,
    pulled,
    read_snapshot,
    run_folder,
)
from registry_replication.airflow.settings import (
    COPY_QUEUE,
    PARSED,
    SHOWN,
    ReplicationFailed,
    current_params,
    registry_client,
    run_scope,
    selected,
    skip_unless_selected,
    task_leases,
)
from registry_replication.engine import artifacts, verification
from registry_replication.engine import diff as diffs
from registry_replication.engine import verify as verifying
from registry_replication.engine.copy import ImageResult
from registry_replication.engine.findings import Finding
from registry_replication.engine.plan import Skipped
from registry_replication.engine.prune import PruneResult
from registry_replication.engine.secondary_listing import secondary_after
from registry_replication.engine.snapshot import problem_line, take_snapshot
from registry_replication.outcomes import RepositoryState, Snapshot, VerifyLevel, summarize
from registry_replication.run_outcome import RunOutcome
from registry_replication.store import Store
from registry_replication.store.record import RunKind

log = logging.getLogger(__name__)


@task(trigger_rule=TriggerRule.ALL_DONE, queue=COPY_QUEUE, pool=PARSED.copy_pool)
@checked
def verify_closure(primary: dict[str, Any], secondary: str) -> dict[str, Any]:
    """``blobs``/``content``: every tag's closure on the secondary; what is missing is copied
    again, damage that no copy can repair is named (data file, expected and found, the fix)."""
    skip_unless_selected(secondary)
    p = current_params()
    ti = get_current_context()["ti"]
    taken = ti.xcom_pull(task_ids=in_group(secondary, "snapshot_secondary")) or {}
    level = VerifyLevel(taken.get("verify_level", VerifyLevel.TAGS))
    if level == VerifyLevel.TAGS or p["dry_run"]:
        log.info(
            "this run verifies %s's tags only (verify=%s)",
            secondary,
            p.get("verify", verification.AUTO),
        )
        return {"level": VerifyLevel.TAGS.value}
    try:
        skipped = [
            _result(Skipped, r)
            for r in artifacts.read_json_lines(run_folder() / f"{secondary}/{SKIPPED_FILE}")
        ]
    except FileNotFoundError:  # no plan this run (it failed): nothing was skipped by it
        skipped = []
    with task_leases(secondary) as leases:
        report = verifying.deep_verify(
            registry_client(PARSED.primary_conn_id),
            registry_client(secondary, writable=True),
            verifying.images_of(read_snapshot(primary), skipped),
            level,
            leases=leases,
            fraction=p.get("content_verify_fraction", 1.0),
            concurrency=p["concurrency"],
            parallelism=p["parallelism"],
        )
    if report.blobs:
        alerts.record_copied_bytes(
            get_current_context(), leases.secondary, sum(r.bytes for r in report.blobs)
        )
    # The report names the findings (RunOutcome) from this file.
    artifacts.write_json_lines(
        run_folder() / f"{secondary}/{VERIFIED_FILE}", [asdict(f) for f in report.findings]
    )
    return {
        "level": level.value,
        "line": report.line(),
        "problems": len(report.problems),
        "manifests": report.manifests_checked,
        "blobs": report.blobs_checked,
        "read": report.blobs_read,
    }


@task(trigger_rule=TriggerRule.ALL_DONE)
@checked
def verify(primary: dict[str, Any], secondary: str) -> dict[str, Any]:
    """Geo's verification: per-repository checksums of (tag, digest) on both sides.

    The secondary as this run saw it: its snapshot from the start of the run plus the writes
    the secondary acknowledged (``sync.secondary_after``: listed again only where a write did
    not go as planned, or where the run changed something when a full verification is due).
    Listed again whole when a copy task left no records (it died).
    """
    skip_unless_selected(secondary)
    p = current_params()
    context = get_current_context()
    ti = context["ti"]
    differences = ti.xcom_pull(task_ids=in_group(secondary, "diff"))
    taken = ti.xcom_pull(task_ids=in_group(secondary, "snapshot_secondary"))
    if not taken:
        # Its group stopped before listing it (a site that did not answer): this run did
        # nothing there, and listing a site that is down would only wait out its retries.
        raise AirflowSkipException(
            f"{secondary} was never listed by this run (see the log of "
            f"{in_group(secondary, 'snapshot_secondary')} or the task before it): nothing to "
            "verify; the run's report counts it as failed"
        )
    refs = pulled(context, in_group(secondary, "push_manifests"), "results")
    pruned = ti.xcom_pull(task_ids=in_group(secondary, "prune_tags"))
    batches = ti.xcom_pull(task_ids=in_group(secondary, "plan"), key="image_batches")
    recorded = differences and pruned is not None and len(refs) == len(batches or [])
    before = read_snapshot(taken) if recorded else None
    if before is not None and before.complete and differences["changes"] == 0:
        log.info(
            "this run changed nothing on %s: its snapshot from the start of the "
            "run is verified rather than listing it again",
            secondary,
        )
        after = before
    elif before is not None:
        folder = run_folder()
        after = secondary_after(
            registry_client(secondary),
            before,
            [
                _result(ImageResult, r)
                for ref in refs
                for r in artifacts.read_json_lines(folder / ref["file"])
            ],
            [_result(PruneResult, r) for r in artifacts.read_json_lines(folder / pruned["file"])]
            if pruned.get("file")
            else [],
            scope=run_scope(p),
            concurrency=p["concurrency"],
            relist_all=bool(taken.get("verification_due")),
        )
    else:
        after = take_snapshot(
            registry_client(secondary),
            run_scope(p),
            concurrency=p["concurrency"],
            repositories=p["repositories"] or None,
        )
    source = read_snapshot(primary)
    report = diffs.verify(source, after)
    differ = report[~report["in_sync"]]
    store = Store()
    damaged = verification.settle(
        store,
        secondary,
        report,
        VerifyLevel(taken.get("verify_level", "tags")),
        before,
    )
    deep = ti.xcom_pull(task_ids=in_group(secondary, "verify_closure")) or {}
    line = verification.verification_line(
        report,
        VerifyLevel(deep.get("level", "tags")),
        RunKind(taken.get("kind", "full"), "", taken.get("sampled", 0)),
        damaged,
        None,
    ) + (f"; {deep['line']}" if deep.get("line") else "")
    log.info("%s: %s", secondary, line)
    if len(differ):
        log.warning("repositories whose checksums differ on %s:\n%s", secondary, log_table(differ))
    counts = {
        side: snap.tags["repository"].value_counts().to_dict()
        for side, snap in (("primary", source), ("secondary", after))
    }
    now = pendulum.now("UTC")
    store.state.set_repository_state(
        secondary,
        [
            {
                "repository": row.repository,
                "state": RepositoryState.DAMAGED
                if row.repository in damaged
                else RepositoryState.SYNCED
                if row.in_sync
                else RepositoryState.PENDING,
                "tags_primary": int(counts["primary"].get(row.repository, 0)),
                "tags_secondary": int(counts["secondary"].get(row.repository, 0)),
                "checksum_primary": row.primary if isinstance(row.primary, str) else None,
                "checksum_secondary": row.secondary if isinstance(row.secondary, str) else None,
                **(
                    {"last_sync_at": now, "last_error": None}
                    if row.in_sync and row.repository not in damaged
                    else {}
                ),
            }
            for row in report.itertuples()
        ],
    )
    # The names that differ are in the log and on the status page; XCom keeps the first few.
    return {
        "repositories": len(report),
        "differ": len(differ),
        "line": line,
        "damaged": sorted(damaged)[:SHOWN],
        "damaged_count": len(damaged),
        "first_differing": differ["repository"].head(SHOWN).tolist(),
    }


@task(trigger_rule=TriggerRule.ALL_DONE)
@checked
def report(primary: dict[str, Any]) -> dict:
    """The run's summary per secondary, and every failed layer; fails the run naming each
    secondary where anything failed (``RunOutcome``: the same answer as the CLI's and the
    operator's)."""
    context = get_current_context()
    p = context["params"]
    listing = read_snapshot(primary)
    served = selected(p)
    _record_repository_problems(listing, served)
    started = context["dag_run"].start_date
    per: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    layers: list[dict[str, Any]] = []
    for secondary in served:
        counts, lines, failed = _secondary_outcome(context, secondary, listing)
        per[secondary] = counts
        problems += [f"{secondary}: {line}" for line in lines]
        layers += failed
    counts = {
        **_totals(per),
        "seconds": round(time.time() - started.timestamp(), 1) if started else None,
    }
    dag_run = context["dag_run"]
    Store().history.record_run(
        dag_run.dag_id,
        dag_run.run_id,
        "failed" if problems else "success",
        {**counts, "problems": problems, "dry_run": p["dry_run"]},
        layers,
    )
    alerts.send_stats(Store())
    if problems:
        failed_sites = [s for s in served if any(line.startswith(f"{s}: ") for line in problems)]
        raise ReplicationFailed(f"failed for {', '.join(failed_sites)}: " + "; ".join(problems))
    return counts


def _secondary_outcome(
    context: Any, secondary: str, listing: Snapshot
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """One secondary's part of the report: its counts (logged), its outcome and its failed
    layers' rows; a secondary whose group did not get as far as ``verify`` has failed. Its
    blobs are the fan-out's (when there is one) and its own ``copy_blobs``' (the fan-out's
    leftovers): a layer whose leg failed and that ``copy_blobs`` then copied has not failed."""
    ti = context["ti"]
    refs = [
        *fanned_out(context, secondary),
        *pulled(context, in_group(secondary, "copy_blobs"), "results"),
        *pulled(context, in_group(secondary, "push_manifests"), "results"),
    ]
    pruned = ti.xcom_pull(task_ids=in_group(secondary, "prune_tags")) or {}
    verified = ti.xcom_pull(task_ids=in_group(secondary, "verify")) or {}
    failed_blobs = failed_blob_refs(context, secondary)
    summed: Counter[str] = Counter(summarize([], [], [], zeros=True))
    for summary in [*(ref["summary"] for ref in refs), pruned.get("summary", {})]:
        summed.update(summary)
    summed["blobs failed"] = len(failed_blobs)
    taken = ti.xcom_pull(task_ids=in_group(secondary, "snapshot_secondary")) or {}
    counts: dict[str, Any] = {
        **summed,
        "repositories differing": verified.get("differ") or 0,
        # full (the secondary listed) or cheap (read from its record), and why
        "run kind": taken.get("run_kind"),
        "verification": verified.get("line"),
    }
    log.info(
        "run summary for %s%s:\n%s",
        secondary,
        " (dry run)" if context["params"]["dry_run"] else "",
        log_table(pd.Series(counts, name="value", dtype=object).to_frame()),
    )
    batch_of = {(record["repository"], record["digest"]): ref for ref, record in failed_blobs}
    damaged = verified.get("damaged") or []
    outcome = RunOutcome(
        blobs=[record for _, record in failed_blobs],
        images=[
            record for _, record in failed_refs(context, in_group(secondary, "push_manifests"))
        ],
        pruned=_records_of(pruned.get("file")),
        skipped=_records_of(f"{secondary}/{SKIPPED_FILE}"),
        listing=listing,
        prune_refused=pruned.get("refused"),
        findings=[_result(Finding, r) for r in _records_of(f"{secondary}/{VERIFIED_FILE}")],
        damaged=damaged,
        damaged_more=max((verified.get("damaged_count") or 0) - len(damaged), 0),
    )
    if outcome.failed_blobs:
        log.error(
            "failed layers on %s:\n%s",
            secondary,
            log_table(
                pd.DataFrame(outcome.failed_blobs)[
                    ["repository", "digest", "size", "status", "code", "error"]
                ]
            ),
        )
    _record_skipped(secondary, outcome.skipped)
    layers = [
        {
            "repository": r["repository"],
            "digest": r["digest"],
            "size": r["size"],
            "status": r.get("status"),
            "code": r.get("code"),
            "error": r.get("error"),
            "task_id": batch_of[(r["repository"], r["digest"])]["task_id"],
            "map_index": batch_of[(r["repository"], r["digest"])]["map_index"],
            "secondary": secondary,
        }
        for r in outcome.failed_blobs
    ]
    lines = outcome.lines(shown=SHOWN)
    if not verified:
        lines.append(f"not verified: see the failed tasks of its group ({secondary}.*)")
    return counts, lines, layers


def _totals(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's counts over its secondaries: numbers summed; the run kind and verification
    lines each secondary's, named when the run served several."""
    totals: dict[str, Any] = {}
    for secondary, counts in per.items():
        for key, value in counts.items():
            if isinstance(value, str) or value is None:
                line = value if len(per) == 1 else f"{secondary}: {value}"
                totals[key] = "; ".join(filter(None, [totals.get(key), line]))
            else:
                totals[key] = totals.get(key, 0) + value
    return totals


@task
@checked
def retention() -> Retention:
    """Old run folders and old store history go (``run_folder.apply_retention``). Wired as a
    teardown after ``report`` (``replicate``): it runs whatever the report decided, and the
    run's state stays the report's (a failed retention is logged and shows on this task, never
    fails a run that replicated; nor does it hide a failed one). Not ``@teardown``: Airflow
    3.3's decorator refuses a second call in one process (two DAGs wire this task)."""
    return apply_retention(pendulum.now("UTC"))


def _records_of(name: str | None) -> list[dict[str, Any]]:
    """The records of one of this run's files; none when it has no such file (the task that
    writes it did not get that far, or had nothing to write)."""
    if not name:
        return []
    try:
        return artifacts.read_json_lines(run_folder() / name)
    except FileNotFoundError:
        return []


def _record_skipped(secondary: str, skipped: Sequence[dict[str, Any]]) -> None:
    """Record on the status page the images the plan could not replicate (malformed,
    unsupported, past a bound)."""
    Store().state.set_repository_state(
        secondary,
        [
            {
                "repository": s["repository"],
                "state": RepositoryState.FAILED,
                "last_error": f"{s['digest']}: {s['reason']}"[:4000],
            }
            for s in skipped
        ],
    )


def _record_repository_problems(listing: Snapshot, secondaries: Sequence[str]) -> None:
    """Log and record on the status page the repositories that could not be handled."""
    if not listing.problems:
        return
    log.error(
        "repositories and tags that cannot be replicated (every other repository was):\n%s",
        log_table(pd.DataFrame(listing.problems)),
    )
    reasons: dict[str, list[str]] = {}
    for found in listing.problems:
        reasons.setdefault(found["repository"], []).append(problem_line(found))
    for secondary in secondaries:
        Store().state.set_repository_state(
            secondary,
            [
                {
                    "repository": repository,
                    "state": RepositoryState.FAILED,
                    "last_error": "; ".join(lines)[:4000],
                }
                for repository, lines in sorted(reasons.items())
            ],
        )


def _result(kind: type, record: dict[str, Any]):
    return kind(**{k: v for k, v in record.items() if k in kind.__dataclass_fields__})
