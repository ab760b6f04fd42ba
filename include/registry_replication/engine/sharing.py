"""What must be shared between Airflow's machines, and the refusal when it is not.

On an executor that runs tasks on other machines (Celery, Kubernetes, anything but the local
ones), the webhook, the triggerer and every worker must use one replication store, and every
task of a run must read the artifacts the run's other tasks wrote. A local SQLite file or a
local directory is one per machine there: work would silently split (events stored where no
worker looks) or fail late (a snapshot not found on another worker). So it is refused before
any work, naming the setting to change. The Airflow glue reads the settings
(``airflow.deployment``); this module only judges them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa

from registry_replication.settings import variable

# Executors whose tasks run on the machine of the scheduler that queued them.
LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor"})
STORE_EXAMPLE = "postgresql+psycopg2://replication:<password>@db.example.com:5432/replication"
ARTIFACTS_EXAMPLE = "s3://my-bucket/registry-replication"


def distributed(executor: str) -> bool:
    """Whether ``[core] executor`` may run a task on another machine: any configured executor
    (a comma-separated list; each a name, a class path, or ``alias:class path``) that is not a
    local one."""
    names = [
        item.split("=", 1)[-1].rsplit(":", 1)[-1].rsplit(".", 1)[-1].strip()
        for item in executor.replace(";", ",").split(",")
    ]
    return any(name and name not in LOCAL_EXECUTORS for name in names)


def local_store(store_url: str) -> bool:
    """A SQLite store: a file only its own machine sees."""
    return sa.engine.make_url(store_url).get_backend_name() == "sqlite"


def local_path(url: str) -> bool:
    """``file://``, ``local://`` or a plain path: a directory of this machine."""
    return urlsplit(url).scheme in ("", "file", "local")


def problems(
    executor: str, *, store_url: str, artifacts_path: str, artifacts_path_shared: bool
) -> list[str]:
    """What is not shared that must be, each with the setting to change (empty: all is well).

    ``artifacts_path``: the configured one, empty when unset (artifacts then follow the store);
    ``artifacts_path_shared``: a local ``artifacts_path`` declared a volume every worker mounts.
    """
    if not distributed(executor):
        return []
    found = []
    if local_store(store_url):
        database = sa.engine.make_url(store_url).database or "(in memory)"
        name = variable("db_url")
        found.append(
            f"the replication store is the SQLite file {database}, which only this machine "
            f"sees, and [core] executor = {executor} runs tasks on other machines (the webhook, "
            f"the triggerer and each worker would use a store of their own). What to do: set "
            f"{name} in the environment of every Airflow process to one PostgreSQL database "
            f"they all reach, e.g. {name}={STORE_EXAMPLE}"
        )
    if artifacts_path and local_path(artifacts_path) and not artifacts_path_shared:
        found.append(
            f"[registry_replication] artifacts_path = {artifacts_path} is a directory of this "
            f"machine, and [core] executor = {executor} runs a run's tasks on other machines, "
            f"which would not find each other's snapshots and plans. What to do: unset "
            f"artifacts_path (AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH) to keep the runs' "
            f"artifacts in the replication store, or set it to object storage every worker "
            f"reaches, e.g. AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH={ARTIFACTS_EXAMPLE} "
            f"with artifacts_conn_id naming its connection; for a volume every worker mounts at "
            f"that same path, set AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH_SHARED=True"
        )
    return found
