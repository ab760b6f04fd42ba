"""What every replication task reads from its deployment: the ``[registry_replication]``
settings, the trigger form (``params``), and the run's params, scope, clients and leases.

``PARSED`` is the settings as read when this module is imported, by the first DAG file parsed
(and again in each task's process): what the tasks' declarations need (their queue and pool),
from Airflow's ``conf``, no network. DAG files read theirs at each parse and tasks the rest at
run time (``current()``), so a changed setting applies from the next task on.
"""

from __future__ import annotations

from typing import Any

from airflow.configuration import conf
from airflow.sdk import Param, get_current_context
from airflow.sdk.exceptions import AirflowSkipException

from registry_replication.airflow.hooks import OciRegistryHook
from registry_replication.engine import verification
from registry_replication.engine.leases import Leases
from registry_replication.outcomes import Scope, VerifyLevel
from registry_replication.settings import Settings, current
from registry_replication.store import Store
from registry_replication.transport.client import RegistryClient

PARSED: Settings = current()
# Production controls (README, "Production controls"): the Celery queue the copy tasks of all three DAGs
# go to; unset, Airflow's own default queue.
COPY_QUEUE = PARSED.copy_queue or conf.get("operators", "default_queue")

# Names an XCom or a run's problem list shows at most (the rest are in the task's log).
SHOWN = 20


class ReplicationFailed(RuntimeError):
    """Raised by a task (or the operator) whose blobs, images or checks failed; its log says
    which and why."""


def params(*, repositories_required: bool = False) -> dict[str, Param]:
    """The trigger form, shared by both DAGs."""
    return {
        "secondaries": Param(
            list(PARSED.secondaries),
            type="array",
            items={"type": "string", "enum": list(PARSED.secondaries)},
            minItems=1,
            uniqueItems=True,
            description="The secondaries this run serves (default: every configured one); "
            "the others' task groups are skipped.",
        ),
        "repositories": Param(
            [] if not repositories_required else ["group/app"],
            type="array",
            items={"type": "string"},
            minItems=1 if repositories_required else 0,
            description="Repositories to sync, listed directly instead of reading the catalog"
            + ("." if repositories_required else " (empty: the whole catalog)."),
        ),
        "include": Param(
            ["*"],
            type="array",
            items={"type": "string"},
            description="Repository glob patterns to include, e.g. group/*.",
        ),
        "exclude": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Repository glob patterns to leave out.",
        ),
        "tags": Param(
            ".*",
            type="string",
            description="Regular expression a tag must match in full, e.g. v\\d+\\..*",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="Plan and report only: copy, push and delete nothing.",
        ),
        "prune": Param(
            not repositories_required,
            type="boolean",
            description="Delete secondary tags that are gone from the primary.",
        ),
        "force_prune": Param(
            False,
            type="boolean",
            description="Prune even above max_prune_fraction (mass deletion).",
        ),
        "max_prune_fraction": Param(
            0.5,
            type="number",
            minimum=0,
            maximum=1,
            description="Refuse to prune more than this share of tags.",
        ),
        "parallelism": Param(
            8,
            type="integer",
            minimum=1,
            maximum=64,
            description="Blob transfers in flight per copy task.",
        ),
        "concurrency": Param(
            16,
            type="integer",
            minimum=1,
            maximum=128,
            description="Listing requests in flight per registry.",
        ),
        "full_verify": Param(
            False,
            type="boolean",
            description="List the secondary rather than read its record, "
            "whatever the age of the last full verification.",
        ),
        "verify": Param(
            verification.AUTO,
            type="string",
            enum=[verification.AUTO, *VerifyLevel],
            description="tags: compare tag lists; blobs: every tag's manifests and "
            "blobs exist on the secondary with their sizes (missing ones copied "
            "again); content: and every blob read back and hashed. auto: blobs "
            "every deep_verify_days, else tags.",
        ),
        "content_verify_fraction": Param(
            1.0,
            type="number",
            minimum=0,
            maximum=1,
            description="Share of the blobs a content "
            "verification reads back; it rotates over runs.",
        ),
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


def task_leases(secondary: str) -> Leases:
    """This task's leases on ``secondary``'s rows: the write protocol shared with every other
    writer."""
    return Leases(Store(), secondary)


def selected(p: dict[str, Any]) -> list[str]:
    """The configured secondaries a run with params ``p`` serves (param ``secondaries``), in
    the configured order."""
    chosen = p.get("secondaries") or PARSED.secondaries
    return [s for s in PARSED.secondaries if s in chosen]


def skip_unless_selected(secondary: str) -> None:
    """Skip this task (its group's work) when the run does not serve ``secondary``."""
    if secondary not in selected(current_params()):
        raise AirflowSkipException(f"this run does not serve {secondary} (param secondaries)")
