"""What every replication task reads from its deployment: the ``[registry_replication]``
settings, the trigger form (``params``), and the run's params, scope, clients and leases.

Read in one place. The names in capitals are read once per process, when a DAG file is parsed
and again in each task's process (Airflow's ``conf``, no network); the functions below them read
at run time, so a changed setting applies from the next task on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow.configuration import conf
from airflow.sdk import Param, get_current_context

from registry_replication.airflow.hooks import OciRegistryHook
from registry_replication.engine import verification
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import DEFAULT_BATCH_BYTES
from registry_replication.outcomes import Scope, VerifyLevel
from registry_replication.store import Store, retention
from registry_replication.store.record import full_verify_hours
from registry_replication.transport.client import RegistryClient

SECTION = "registry_replication"

# The two registries' Airflow connections ([registry_replication] primary_conn_id /
# secondary_conn_id), read when the DAG files are parsed and again in each task's process.
PRIMARY_CONN_ID = conf.get(SECTION, "primary_conn_id", fallback="registry_primary")
SECONDARY_CONN_ID = conf.get(SECTION, "secondary_conn_id", fallback="registry_secondary")

# Production controls (README, "Production controls"): the Celery queue the copy tasks of all
# three DAGs go to, and the pool that bounds how many run at once across every DAG run.
COPY_QUEUE = conf.get(SECTION, "copy_queue", fallback=conf.get("operators", "default_queue"))
COPY_POOL = conf.get(SECTION, "copy_pool", fallback="default_pool")
# Bytes per copy_blobs task: smaller batches spread a copy over more workers.
BLOB_BATCH_BYTES = conf.getint(SECTION, "blob_batch_bytes", fallback=DEFAULT_BATCH_BYTES)
# Hours between full verifications (listing the secondary); between them it is read as recorded.
FULL_VERIFY_HOURS = conf.getfloat(SECTION, "full_verify_hours", fallback=full_verify_hours())
# Days between blobs verifications (every tag's closure on the secondary) under verify=auto.
DEEP_VERIFY_DAYS = conf.getfloat(SECTION, "deep_verify_days",
                                 fallback=verification.deep_verify_days())

# Names an XCom or a run's problem list shows at most (the rest are in the task's log).
SHOWN = 20


class ReplicationFailed(RuntimeError):
    """Raised by a task (or the operator) whose blobs, images or checks failed; its log says
    which and why."""


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
        "verify": Param(verification.AUTO, type="string", enum=[verification.AUTO, *VerifyLevel],
                        description="tags: compare tag lists; blobs: every tag's manifests and "
                        "blobs exist on the secondary with their sizes (missing ones copied "
                        "again); content: and every blob read back and hashed. auto: blobs "
                        "every deep_verify_days, else tags."),
        "content_verify_fraction": Param(1.0, type="number", minimum=0, maximum=1,
                                         description="Share of the blobs a content "
                                         "verification reads back; it rotates over runs."),
    }


def current_params() -> dict[str, Any]:
    """The running DAG run's params: the trigger form, as submitted."""
    return get_current_context()["params"]


def run_scope(p: dict[str, Any]) -> Scope:
    """The repositories and tags a run with params ``p`` covers."""
    return Scope.of(p["include"], p["exclude"], p["tags"])


def registry_client(conn_id: str, *, writable: bool = False) -> RegistryClient:
    """The client of the registry behind connection ``conn_id``."""
    return OciRegistryHook(conn_id, writable=writable).get_conn()


def task_leases() -> Leases:
    """This task's leases: the write protocol shared with every other writer."""
    return Leases(Store())


# -- read at run time ------------------------------------------------------------------------

def artifacts_retention_days() -> float:
    """Days a run's folder is kept (``artifacts_retention_days``, default 7)."""
    return conf.getfloat(SECTION, "artifacts_retention_days", fallback=7)


def history_retention_days() -> float:
    """Days of the store's history kept (``history_retention_days``, default 30)."""
    return conf.getfloat(SECTION, "history_retention_days",
                         fallback=retention.history_retention_days())


@dataclass(frozen=True)
class Drain:
    """How ``replicate_events`` drains the queue (README, "Production controls")."""

    # How long to keep draining after the last batch (``event_drain_idle_seconds``).
    idle_seconds: float
    # A cap on one task's life, so logs and runs stay readable under a never-ending stream.
    max_seconds: float
    # Each repository's work is a few round trips one after another (HEADs, manifests,
    # blobs, tags): a burst over many repositories goes as fast as it overlaps them.
    repositories_at_once: int
    # The event path's mass-deletion guard (the reconcile's is its max_prune_fraction param).
    max_prune_fraction: float


def drain() -> Drain:
    """The event drain's settings, read when ``replicate_events`` starts."""
    return Drain(
        idle_seconds=conf.getfloat(SECTION, "event_drain_idle_seconds", fallback=60),
        max_seconds=conf.getfloat(SECTION, "event_drain_max_seconds", fallback=3600),
        repositories_at_once=conf.getint(SECTION, "event_repositories_at_once", fallback=16),
        max_prune_fraction=conf.getfloat(SECTION, "max_prune_fraction", fallback=0.5))
