"""Every ``[registry_replication]`` setting, its one default and its type: ``Settings``.

Read from one source: in Airflow, Airflow's configuration (``airflow.cfg`` or
``AIRFLOW__REGISTRY_REPLICATION__<NAME>``; ``registry_replication.airflow`` registers it), elsewhere
(the CLI, a standalone webhook, tests) the environment as Airflow maps it. A setting documented
before this section existed keeps its ``REGISTRY_REPLICATION_*`` variable as a second spelling,
read here and nowhere else. Values are parsed and checked once, when the settings are loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

SECTION = "registry_replication"

# The DAGs' ids: the status page, the alerts and the metrics name them too.
RECONCILE_DAG_ID = "registry_reconcile"
SYNC_DAG_ID = "registry_sync"
EVENTS_DAG_ID = "registry_events"

Read = Callable[[str], "str | None"]

# A secondary's id, its connection id: the store keys its rows by it and each DAG names its task
# group after it, whose grammar has no dots (letters, digits, ``_`` and ``-``).
SECONDARY_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


class SettingsError(ValueError):
    """A setting whose value cannot be read as its type."""


def setting(
    default: Any,
    about: str,
    *,
    example: str | None = None,
    shown: str | None = None,
    env: str | None = None,
) -> Any:
    """A field of ``Settings``: its default, a one-line description, an example value (None:
    the default, as written in the file), the default as the README shows it when it is not
    the value itself, and its older variable."""
    metadata = {"about": about, "example": example, "shown": shown, "env": env}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """This deployment's ``[registry_replication]`` settings (README, "Production controls")."""

    primary_conn_id: str = setting(
        "registry_primary",
        "the Airflow connection of the primary registry (all three DAGs)",
        example="geo_primary",
    )
    secondary_conn_id: str = setting(
        "registry_secondary",
        "the Airflow connection of the secondary registry (all three DAGs)",
        example="geo_secondary",
    )
    secondary_conn_ids: tuple[str, ...] = setting(
        (),
        "the connections of the secondaries, comma separated; unset: `secondary_conn_id` alone",
        example="registry_secondary,registry_eu,registry_ap",
        shown="`secondary_conn_id`",
    )
    db_url: str = setting(
        "",
        "the replication store's SQLAlchemy URL: PostgreSQL when several machines share the "
        "work (see [What a cluster shares](#what-a-cluster-shares))",
        example="postgresql+psycopg2://replication:<password>@db.example.com:5432/replication",
        shown="`sqlite:///$AIRFLOW_HOME/registry_replication.db`",
        env="REGISTRY_REPLICATION_DB_URL",
    )
    reconcile_schedule: str = setting(
        "@hourly",
        "when `registry_reconcile` runs: any cron expression or preset; `none`: only "
        "manual runs and backfills",
        example="*/30 * * * *",
    )
    task_retries: int = setting(3, "retries of the reconcile's tasks")
    task_retry_delay_seconds: int = setting(
        30,
        "the first delay before a reconcile task's retry (doubling, at most 10 minutes)",
    )
    max_active_copy_tasks: int = setting(
        4,
        "the reconcile's tasks in flight at once per run: bounds the load on both registries",
    )
    copy_queue: str = setting(
        "",
        "the Celery queue of the copy tasks (`copy_blobs`, `push_manifests`, "
        "`replicate_events`) of all three DAGs: run them on workers close to the registries "
        "(`airflow celery worker --queues default,registry_copy`)",
        example="registry_copy",
        shown="`[operators] default_queue`",
    )
    copy_pool: str = setting(
        "default_pool",
        "the Airflow pool of those tasks: its slots bound the copies in flight "
        "across every run of every DAG. Create it first: `airflow pools set registry_replication "
        '8 "registry-replication copy tasks"` (a task in a pool that does not exist is never '
        "scheduled)",
        example="registry_replication",
    )
    blob_batch_bytes: int = setting(
        1 << 30,
        "bytes per `copy_blobs` task: smaller batches spread a copy over more workers",
        example="268435456",
        shown="1 GiB",
    )
    full_verify_hours: float = setting(
        24.0,
        "hours between full verifications, which list the secondary; between them, runs "
        "read its record (see [Scale](#scale)). `0`: every run is full",
        example="168",
        env="REGISTRY_REPLICATION_FULL_VERIFY_HOURS",
    )
    deep_verify_days: float = setting(
        7.0,
        "days between `blobs` verifications under `verify=auto` (see "
        "[Verification levels](#verification-levels-verify))",
        env="REGISTRY_REPLICATION_DEEP_VERIFY_DAYS",
    )
    lease_seconds: float = setting(
        60.0,
        "the lifetime of a writer's lease on a repository, renewed while it works: a "
        "killed writer's repositories are free again after this long",
        env="REGISTRY_REPLICATION_LEASE_SECONDS",
    )
    max_prune_fraction: float = setting(
        0.5,
        "the event path's mass-deletion guard: one batch of delete events removes at most "
        "this share of the secondary's tags (as recorded); the reconcile's is its DAG param of "
        "the same name (see [Consistency](#consistency))",
    )
    event_max_attempts: int = setting(
        10,
        "attempts of an event before it is marked failed (the status page's dead letters)",
    )
    event_drain_idle_seconds: float = setting(
        60.0,
        "how long `replicate_events` keeps draining new events after its last batch (see "
        "[the hot drain](#registry_events-within-seconds-of-a-push))",
    )
    event_drain_max_seconds: float = setting(
        3600.0,
        "how long one `replicate_events` task drains at most, so its log and run stay readable "
        "under a never-ending stream",
    )
    event_repositories_at_once: int = setting(
        16,
        "repositories `replicate_events` replicates at once from one batch of events (each "
        "under its own lease): a burst over many repositories overlaps their round trips",
    )
    artifacts_path: str = setting(
        "",
        "where each run writes its snapshots, differences and plan batches (Parquet, one "
        "folder per run): any `ObjectStoragePath` URL, e.g. `s3://bucket/registry-replication`; "
        "a local directory is refused on a distributed executor unless `artifacts_path_shared`",
        example="s3://bucket/registry-replication",
        shown="the replication store (`rr_run_artifacts`); `file://$AIRFLOW_HOME/"
        "registry_replication/artifacts` while the store is a local SQLite file",
    )
    artifacts_path_shared: bool = setting(
        False,
        "`True` declares a local `artifacts_path` a volume every worker mounts at that "
        "same path (NFS and the like), which a distributed executor then accepts",
        example="True",
    )
    artifacts_conn_id: str = setting(
        "",
        "the Airflow connection for `artifacts_path`, e.g. an `aws` connection",
        example="aws_default",
        shown="none",
    )
    artifacts_retention_days: float = setting(
        7.0,
        "run folders older than this are deleted by the `retention` task (after `report`) of later runs",
    )
    # A month: 4x the run folders' 7 days, so a month's incidents can be traced (when a push
    # reached the secondary, which run failed and why) after their folders are gone. A push
    # costs about 0.75 KB (its event and latency rows with their indexes, measured on SQLite):
    # 22 MiB a month at 1,000 pushes a day.
    history_retention_days: float = setting(
        30.0,
        "the replication store's history older than this is deleted by the same step "
        "(each DAG's latest run and outcome and every unfinished event stay; counters never go "
        "down); at least 1. Also `registry-replication store prune [--days N]`",
        env="REGISTRY_REPLICATION_HISTORY_RETENTION_DAYS",
    )
    notifier: str = setting(
        "",
        "the Airflow notifier class alerts go through (see [Alerts from Airflow]"
        "(#alerts-from-airflow)); none: alerts are logged only",
        example="airflow.providers.smtp.notifications.smtp.SmtpNotifier",
        shown="none",
    )
    notifier_kwargs: dict[str, Any] = setting(
        {},
        "the notifier's arguments, a JSON object",
        example='{"to": "oncall@example.com"}',
        shown="`{}`",
    )
    reconcile_deadline_minutes: float = setting(
        0.0,
        'a reconcile run not finished this long after it was queued raises an "overdue" '
        "alert; `0`: off",
        example="120",
    )
    notification_secret: str = setting(
        "",
        "the shared secret the primary's notifications carry (see [Notifications from the "
        "primary](#notifications-from-the-primary)); unset: every notification is refused",
        example="<openssl rand -hex 32>",
        shown="none",
        env="REGISTRY_NOTIFICATION_SECRET",
    )
    metrics_token: str = setting(
        "",
        "the Bearer token `/metrics` asks for (see [Prometheus](#prometheus)); unset: no "
        "metrics endpoint",
        example="<openssl rand -hex 32>",
        shown="none",
        env="REGISTRY_REPLICATION_METRICS_TOKEN",
    )

    def __post_init__(self) -> None:
        """Refuse secondaries that cannot be told apart: ids out of grammar, twice, the primary."""
        name = "secondary_conn_ids" if self.secondary_conn_ids else "secondary_conn_id"
        value = ",".join(self.secondaries)
        for conn_id in self.secondaries:
            if not SECONDARY_ID.fullmatch(conn_id):
                _refuse(
                    name,
                    value,
                    f"names {conn_id!r}, not a secondary's id (1 to 100 letters, digits, _ "
                    "or -: it names the secondary's rows in the store and its task group)",
                )
            if conn_id == self.primary_conn_id:
                _refuse(name, value, f"names the primary's connection {conn_id!r}")
        if len(set(self.secondaries)) < len(self.secondaries):
            twice = sorted({s for s in self.secondaries if self.secondaries.count(s) > 1})
            _refuse(name, value, f"names {', '.join(twice)} more than once")

    @property
    def secondaries(self) -> tuple[str, ...]:
        """The secondaries' connection ids, in order: ``secondary_conn_ids``, else
        ``secondary_conn_id`` alone."""
        return self.secondary_conn_ids or (self.secondary_conn_id,)

    @classmethod
    def load(cls, read: Read) -> Settings:
        """The settings ``read(name)`` gives (None: unset), then each field's older variable,
        then its default; a value that is not of its type raises ``SettingsError``."""
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            raw = read(spec.name)
            if raw is None and spec.metadata["env"]:
                raw = os.environ.get(spec.metadata["env"])
            if raw is not None:
                values[spec.name] = _parse(spec, raw)
        return cls(**values)


def variable(name: str) -> str:
    """The environment variable an operator sets for setting ``name``: its older spelling where
    it has one (the one documented), else Airflow's."""
    spec = next(spec for spec in dataclasses.fields(Settings) if spec.name == name)
    return spec.metadata["env"] or f"AIRFLOW__{SECTION.upper()}__{name.upper()}"


def environment(name: str) -> str | None:
    """Setting ``name`` from the environment, as Airflow maps it."""
    return os.environ.get(f"AIRFLOW__{SECTION.upper()}__{name.upper()}")


# Every variable a setting can come from: the settings are loaded again only when one changes.
_VARIABLES = [
    name
    for spec in dataclasses.fields(Settings)
    for name in (f"AIRFLOW__{SECTION.upper()}__{spec.name.upper()}", spec.metadata["env"])
    if name
]
_source: list[Read] = [environment]
_loaded: dict[tuple[Read, tuple[str | None, ...]], Settings] = {}


def use_source(read: Read) -> None:
    """Read the settings from ``read`` from now on (Airflow registers its configuration)."""
    _source[0] = read


def current() -> Settings:
    """This process's settings, loaded once from the registered source. The environment can
    change them only in tests (``monkeypatch.setenv``): they are loaded again when it does."""
    key = (_source[0], tuple(os.environ.get(name) for name in _VARIABLES))
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = Settings.load(_source[0])
    return _loaded[key]


def _parse(spec: dataclasses.Field[Any], raw: str) -> Any:
    """``raw`` as the type of ``spec``; a blank number, flag or object is its default."""
    kind = spec.type
    if kind == "str":
        return raw
    if kind == "tuple[str, ...]":
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    text = raw.strip()
    if not text:
        return spec.default_factory() if kind.startswith("dict") else spec.default  # type: ignore[misc]
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return {"t": True, "true": True, "1": True, "f": False, "false": False, "0": False}[
                text.lower()
            ]
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except (ValueError, KeyError):
        expected = {"int": "a whole number", "float": "a number", "bool": "True or False"}.get(
            kind, "a JSON object"
        )
        _refuse(spec.name, raw, f"is not {expected}")


def _written(value: object) -> str:
    """A setting's value as its line in ``airflow.cfg`` would say it (``60.0``: ``60``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def _refuse(name: str, raw: str, why: str) -> NoReturn:
    """Raise ``SettingsError``: setting ``name``'s value ``raw`` and why, then an example."""
    spec = next(spec for spec in dataclasses.fields(Settings) if spec.name == name)
    example = spec.metadata["example"] or _written(spec.default)
    raise SettingsError(
        f"[{SECTION}] {name} = {raw!r} {why}: set it like {name} = {example} (environment: "
        f"{variable(name)}={example})"
    ) from None
