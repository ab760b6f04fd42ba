"""This deployment's shared state, read from Airflow's configuration: where run artifacts go,
and the refusal of a store or artifacts path that the executor's machines cannot share
(``registry_replication.engine.sharing`` judges; this reads ``[core] executor`` and the settings)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from airflow.configuration import AIRFLOW_HOME, conf
from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from registry_replication.airflow.hooks import OciRegistryHook
from registry_replication.engine import sharing
from registry_replication.engine.artifacts import ArtifactUnreadable
from registry_replication.settings import current
from registry_replication.store import Store, default_url
from registry_replication.transport.config import ConfigError

Function = TypeVar("Function", bound=Callable[..., Any])


def problems(*, artifacts: bool = True) -> list[str]:
    """What this process's settings leave unshared that its executor needs shared (the store,
    and unless ``artifacts`` is False, the run artifacts' path)."""
    settings = current()
    return sharing.problems(
        conf.get("core", "executor", fallback="LocalExecutor"),
        store_url=default_url(),
        artifacts_path=settings.artifacts_path if artifacts else "",
        artifacts_path_shared=settings.artifacts_path_shared,
    )


def refusal() -> str | None:
    """The webhook's reason to refuse an envelope, or None: only the store matters to it."""
    return "; ".join(problems(artifacts=False)) or None


def refuse_unshared_state() -> None:
    """Fail the task at once, without retries, if the state it needs is not shared."""
    if found := problems():
        raise AirflowFailException(f"refusing to start: {'; '.join(found)}")


def adopt_legacy() -> None:
    """The store's rows from before several secondaries go to one of the configured ones
    (``store.secondaries``), judged by their connections' URLs; once per process."""
    settings = current()

    def url_of(conn_id: str) -> str | None:
        try:
            return OciRegistryHook(conn_id).get_config().url
        except (AirflowNotFoundException, ConfigError):
            return None  # that connection's URL cannot vouch for the record

    Store().secondaries.adopt_legacy(settings.secondaries, url_of, settings.secondary_conn_id)


def checked(function: Function) -> Function:
    """A task that refuses unshared state before its work, gives the store's legacy rows to
    their secondary, and fails without retries on a run file it cannot read (another try on
    this machine would not read it either)."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        refuse_unshared_state()
        adopt_legacy()
        try:
            return function(*args, **kwargs)
        except ArtifactUnreadable as exc:
            raise AirflowFailException(str(exc)) from exc

    return run  # type: ignore[return-value]


def artifacts_base() -> ObjectStoragePath | None:
    """Where run folders go: ``artifacts_path`` when set; else the replication store (None),
    unless the store is a local SQLite file (``airflow standalone``): then
    ``$AIRFLOW_HOME/registry_replication/artifacts``."""
    settings = current()
    url = settings.artifacts_path
    if not url:
        if not sharing.local_store(default_url()):
            return None
        url = f"file://{AIRFLOW_HOME}/registry_replication/artifacts"
    return ObjectStoragePath(url, conn_id=settings.artifacts_conn_id or None)
