"""The reconcile's first tasks: ``snapshot_primary``, the primary listed once for every
secondary the run serves, each group's ``reach`` (with several secondaries) and its
``snapshot_secondary``; the snapshots into the run's folder. ``airflow.reconcile.replicate``
wires them in."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from airflow.sdk import get_current_context, task

from registry_replication.airflow.deployment import checked
from registry_replication.airflow.run_folder import run_folder
from registry_replication.airflow.settings import (
    PARSED,
    ReplicationFailed,
    current_params,
    registry_client,
    run_scope,
    selected,
    skip_unless_selected,
)
from registry_replication.engine import artifacts, verification
from registry_replication.engine.secondary_listing import secondary_listing
from registry_replication.engine.snapshot import stream_snapshot
from registry_replication.engine.sync import known_to_all
from registry_replication.outcomes import VerifyLevel, describe
from registry_replication.store import Store
from registry_replication.store.record import RunKind, TagRecord

log = logging.getLogger(__name__)


@task
@checked
def snapshot_primary() -> dict[str, Any]:
    """List the primary's tags and digests within the run's scope, once for every secondary:
    the tags every selected secondary's record holds at the same digest are HEADed
    conditionally, the others read whole, their manifests kept beside the rows for the plans,
    which then read none of them again."""
    p = current_params()
    store = Store()
    records = [TagRecord(store, s) for s in selected(p)]
    with artifacts.SnapshotWriter(run_folder(), "snapshot_primary", keep_manifests=True) as writer:
        listing = stream_snapshot(
            registry_client(PARSED.primary_conn_id),
            writer.write,
            run_scope(p),
            concurrency=p["concurrency"],
            repositories=p["repositories"] or None,
            known=partial(known_to_all, records),
            manifests=writer.manifests,
        )
        ref = writer.finish(listing)
    _matched(
        PARSED.primary_conn_id, not listing.errors and not listing.problems and not listing.tags
    )
    log.info("snapshot of %d tags of the primary (%d bytes)", ref["tags"], ref["bytes"])
    return ref


@task(retries=0)
@checked
def reach(secondary: str) -> None:
    """Fail the secondary's group at once when it does not answer (after its connection's own
    retries): the run's steps that serve every secondary together must not wait out a down
    site's task retries."""
    skip_unless_selected(secondary)
    try:
        registry_client(secondary).ping()
    except Exception as exc:
        raise ReplicationFailed(
            f"secondary {secondary} does not answer: {describe(exc)}. Its group stops here; the "
            "other secondaries go on. Its events wait in its own queue and drain once it "
            "answers; the next reconcile run backfills it (or clear this task to run it now)."
        ) from exc
    log.info("%s answers", secondary)


@task
@checked
def snapshot_secondary(secondary: str) -> dict[str, Any]:
    """The secondary's tags and digests within the run's scope: listed in a full run, read
    from its record in a cheap one; into its subfolder of the run's folder."""
    skip_unless_selected(secondary)
    p = current_params()
    dag_run = get_current_context()["dag_run"]
    level, why = verification.choose_level(
        Store(),
        secondary,
        p.get("verify", verification.AUTO),
        p["repositories"] or None,
        run_scope(p),
        PARSED.deep_verify_days,
    )
    log.info("%s: verification level %s: %s", secondary, level, why)
    # A deep verification starts from a listing of the secondary.
    forced = level != VerifyLevel.TAGS and not p.get("full_verify", False)
    result, kind = secondary_listing(
        registry_client(secondary),
        registry_client(PARSED.primary_conn_id),
        TagRecord(Store(), secondary),
        run_scope(p),
        repositories=p["repositories"] or None,
        concurrency=p["concurrency"],
        full_verify=p.get("full_verify", False) or forced,
        cadence_hours=PARSED.full_verify_hours,
        written_by=f"{dag_run.dag_id}/{dag_run.run_id}",
    )
    if forced:
        kind = RunKind(
            "full", f"a {level} verification lists the secondary ({why})", verification_due=True
        )
    ref = artifacts.write_snapshot(run_folder(), f"{secondary}/snapshot_secondary", result)
    ref.update(
        run_kind=kind.line(),
        kind=kind.kind,
        sampled=kind.sampled,
        verify_level=level.value,
        verification_due=kind.verification_due,
    )
    _matched(secondary, result.complete and result.tags.empty)
    log.info("snapshot of %d tags of %s (%d bytes)", ref["tags"], secondary, ref["bytes"])
    return ref


def _matched(conn_id: str, nothing: bool) -> None:
    """Warn when the run's scope matched no tag on a registry (a typo in the patterns)."""
    if not nothing:
        return
    p = current_params()
    log.warning(
        "the scope matched no tags on %s (repositories %s, include %s, exclude %s, "
        "tags %r): nothing to replicate there; check the patterns for a typo",
        conn_id,
        p["repositories"] or "from the catalog",
        p["include"],
        p["exclude"],
        p["tags"],
    )
