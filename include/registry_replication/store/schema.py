"""The replication store's tables, on one ``MetaData`` (every table of the store goes here).

The schema itself is created and changed only by the Alembic revisions in ``migrations/``;
``tests/store/test_store.py`` checks that they produce exactly these tables.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from registry_replication.outcomes import EventStatus

metadata = sa.MetaData()

# Rows of a secondary's state name it by its connection id (``settings.SECONDARY_ID``); rows from
# before there were several stay on ``LEGACY`` until adopted (``store.secondaries``).
LEGACY = "(legacy)"
# ``rr_events.status`` of an event the webhook accepted (a rejected one has ``REJECTED``).
ACCEPTED = "accepted"


def _when(name: str, *, required: bool = True) -> sa.Column:
    """A moment, stored with its time zone (UTC; SQLite's come back naive: ``aware``)."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=not required)


def _name(name: str, *, key: bool = False, required: bool = True) -> sa.Column:
    """A name or id of up to 255 characters: a repository, a DAG, run or event id, a host."""
    return sa.Column(name, sa.String(255), primary_key=key, nullable=not (key or required))


def _state(name: str) -> sa.Column:
    """A row's state, one of a few short words (each table's comment lists them)."""
    return sa.Column(name, sa.String(16), nullable=False)


def _owner(name: str, *, required: bool = True) -> sa.Column:
    """A lease holder: one writer's id (``Leases``, ``EventQueue.claim``)."""
    return sa.Column(name, sa.String(64), nullable=not required)


def _secondary(*, key: bool, name: str = "secondary") -> sa.Column:
    """A secondary, by its connection id: the one a row of its state belongs to (part of the
    row's key where it has one)."""
    return sa.Column(name, sa.String(100), primary_key=key, nullable=False)


# Read only by code from before migrations, which refuses a store whose version is newer than
# its own 1: an old worker cannot write to an upgraded store (revision 0002 sets it).
schema_info = sa.Table(
    "rr_schema",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
)
REFUSED_BY_PREMIGRATION_CODE = 2

# The events the webhook received, once each: status ``accepted`` (its state per secondary is in
# ``rr_deliveries``) or ``rejected``. The other delivery columns are from before 0008, unused.
events = sa.Table(
    "rr_events",
    metadata,
    _name("id", key=True),  # the registry's event id
    _when("received_at"),
    _when("timestamp"),  # the registry's
    sa.Column("action", sa.String(16), nullable=False),  # push | delete
    _name("repository"),
    sa.Column("tag", sa.String(128)),
    sa.Column("digest", sa.String(160)),
    _name("media_type", required=False),
    sa.Column("status", sa.String(16), nullable=False, default=EventStatus.PENDING),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    _when("next_attempt_at"),
    _owner("lease_owner", required=False),
    _when("lease_expires_at", required=False),
    sa.Column("last_error", sa.Text),
    _when("updated_at"),
    sa.Index("ix_rr_events_status_next", "status", "next_attempt_at"),
    sa.Index("ix_rr_events_status_updated", "status", "updated_at"),  # retention, lag chart
)

# Each event's delivery to each secondary (``EventQueue``): its state there (pending |
# processing | done | failed), attempts, backoff and claim; the event's times are copied so that
# claims and "oldest waiting" read no join. ``rr_events`` keeps the event once.
deliveries = sa.Table(
    "rr_deliveries",
    metadata,
    sa.Column("event_id", sa.String(255), sa.ForeignKey("rr_events.id"), primary_key=True),
    _secondary(key=True),
    _state("status"),
    sa.Column("attempts", sa.Integer, nullable=False),
    _when("next_attempt_at"),
    _owner("lease_owner", required=False),
    _when("lease_expires_at", required=False),
    sa.Column("last_error", sa.Text),
    _when("event_timestamp"),
    _when("received_at"),
    _when("acknowledged_at", required=False),
    _when("updated_at"),
    sa.Index("ix_rr_deliveries_claim", "secondary", "status", "next_attempt_at"),
    sa.Index("ix_rr_deliveries_owner", "lease_owner"),
    sa.Index("ix_rr_deliveries_status_updated", "status", "updated_at"),  # retention, lag chart
)

repository_state = sa.Table(
    "rr_repository_state",
    metadata,
    _secondary(key=True),
    _name("repository", key=True),
    _state("state"),  # synced | pending | failed
    sa.Column("tags_primary", sa.Integer),
    sa.Column("tags_secondary", sa.Integer),
    sa.Column("checksum_primary", sa.String(64)),
    sa.Column("checksum_secondary", sa.String(64)),
    _when("last_sync_at", required=False),
    sa.Column("last_error", sa.Text),
    _when("updated_at"),
    # The last verification of the secondary (``verify``): its level (tags | blobs | content),
    # when, the next slice of its blobs a partial content check reads, and the digests it found
    # damaged (kept until a check at that level passes or the blob is copied again).
    sa.Column("verified_level", sa.String(16)),
    _when("verified_at", required=False),
    sa.Column("content_slice", sa.Integer),
    sa.Column("damaged", sa.JSON),
)


def _row_number() -> sa.Column:
    """An append-only table's key: the database numbers its rows."""
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


def _dag_run() -> list[sa.Column]:
    """The DAG run a row is about: its DAG and run ids."""
    return [_name("dag_id"), _name("run_id")]


def _written_by(*, task_id_required: bool) -> list[sa.Column]:
    """The task instance that wrote a row: its DAG, run, task and map index."""
    return [
        *_dag_run(),
        sa.Column("task_id", sa.String(255), nullable=not task_id_required),
        sa.Column("map_index", sa.Integer),
    ]


failed_layers = sa.Table(
    "rr_failed_layers",
    metadata,
    _row_number(),
    *_written_by(task_id_required=False),
    _secondary(key=False),
    _name("repository"),
    sa.Column("digest", sa.String(160), nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("status", sa.Integer),
    sa.Column("code", sa.String(64)),
    sa.Column("error", sa.Text),
    _when("recorded_at"),
)

# Write leases: one row per secondary and resource (``repository:<name>`` or ``upload:<key>``),
# held by one writer (``owner``) until ``expires_at``; the holder renews it while it works.
leases = sa.Table(
    "rr_leases",
    metadata,
    _secondary(key=True),
    sa.Column("resource", sa.String(512), primary_key=True),
    _owner("owner"),
    _when("expires_at"),
    _when("acquired_at"),
    sa.Column("detail", sa.JSON),
)

runs = sa.Table(
    "rr_runs",
    metadata,
    _name("run_id", key=True),
    _name("dag_id", key=True),
    _state("state"),
    sa.Column("summary", sa.JSON, nullable=False),
    _when("finished_at"),
)

# Operating history (append-only): what the metrics endpoint, the alerts and the lag chart read.
copied_bytes = sa.Table(
    "rr_copied_bytes",
    metadata,
    _row_number(),
    *_written_by(task_id_required=True),
    _secondary(key=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    _when("recorded_at"),
    sa.Index("ix_rr_copied_bytes_recorded", "recorded_at"),  # retention
)

push_latency = sa.Table(
    "rr_push_latency",
    metadata,
    _name("event_id", key=True),
    _secondary(key=True),
    _name("repository"),
    _when("pushed_at"),  # the registry's time
    _when("acknowledged_at"),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Index("ix_rr_push_latency_ack", "acknowledged_at"),
)

dag_outcomes = sa.Table(
    "rr_dag_outcomes",
    metadata,
    _row_number(),
    *_dag_run(),
    _state("state"),  # success | failed
    _when("finished_at"),
    sa.Index("ix_rr_dag_outcomes_dag", "dag_id", "id"),
)

sent_alerts = sa.Table(
    "rr_alerts",
    metadata,
    _row_number(),
    *_dag_run(),
    _state("state"),  # failed | recovered | overdue
    sa.Column("subject", sa.Text, nullable=False),
    _name("notifier", required=False),  # None: logged only, no notifier configured
    _when("sent_at"),
)

# What the history rows that retention deleted had added to the counters the metrics read
# (``retention``): each such counter is its carried total plus its rows still in the store, so
# pruning never lowers it. One row per secondary and counter, e.g. ``bytes_copied``,
# ``events_done``; the rejected events' total is no secondary's (``NO_SECONDARY``).
carried_totals = sa.Table(
    "rr_carried_totals",
    metadata,
    _secondary(key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
NO_SECONDARY = ""


# The secondary's tags as their writers recorded them (``recorded_tags``): what a cheap run
# reads instead of listing the secondary. state: present (digest confirmed) | absent | intent.
recorded_tags = sa.Table(
    "rr_recorded_tags",
    metadata,
    _secondary(key=True),
    _name("repository", key=True),
    sa.Column("tag", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("digest", sa.String(160)),
    _name("media_type", required=False),
    _when("recorded_at"),
    _name("written_by"),  # a writer's lease owner, or a run
    # When a cheap run's sample last HEADed it (``record_check``): the sample rotates.
    _when("sampled_at", required=False),
)

# Per repository: when a full listing of the secondary (at ``registry``) last confirmed it.
recorded_verifications = sa.Table(
    "rr_recorded_verifications",
    metadata,
    _secondary(key=True),
    _name("repository", key=True),
    sa.Column("registry", sa.String(512), nullable=False),
    _when("verified_at"),
)

# The secondaries of this store, by connection id: a ``LEGACY`` row (since when) while rows from
# before there were several wait for their adoption (``store.secondaries``).
secondaries = sa.Table(
    "rr_secondaries",
    metadata,
    _secondary(key=True, name="conn_id"),
    _when("first_seen_at"),
)

# Each file of a run's folder (``artifacts.RunFolder``): the host that wrote it, and its bytes
# when the store holds the runs' artifacts (no ``artifacts_path`` and a shared store); NULL when
# they are at ``artifacts_path``. Kept ``artifacts_retention_days`` after the run's due time.
run_artifacts = sa.Table(
    "rr_run_artifacts",
    metadata,
    sa.Column("folder", sa.String(512), primary_key=True),  # <dag_id>/<run due time>_<run_id>
    _name("name", key=True),
    _when("run_at"),  # the run's due time
    _name("host"),
    _when("written_at"),
    sa.Column("size", sa.BigInteger),
    sa.Column("data", sa.LargeBinary),
    sa.Index("ix_rr_run_artifacts_run_at", "run_at"),  # retention
)

# The keys that revisions 0007 and 0009 rekeyed carry PostgreSQL's names on SQLite too, where a
# store they upgraded has them (SQLite's keys are otherwise unnamed): a store made at head is
# made the same, so that a later revision finds them by name on both.
for _rekeyed in (
    leases,
    recorded_tags,
    recorded_verifications,
    repository_state,
    push_latency,
    carried_totals,
):
    _rekeyed.primary_key.name = f"{_rekeyed.name}_pkey"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes; everything in the store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def carried(name: str, secondary: str | None = None) -> sa.ColumnElement[int]:
    """The carried total of counter ``name`` on ``secondary`` (None: summed over every one; 0
    if none), as a scalar subquery.

    Read it in the same statement as the counter's rows: a statement sees one snapshot, so a
    prune that commits meanwhile is counted either in the rows or in the total, never twice.
    """
    total = sa.select(sa.func.sum(carried_totals.c.value)).where(carried_totals.c.name == name)
    if secondary is not None:
        total = total.where(carried_totals.c.secondary == secondary)
    return sa.func.coalesce(total.scalar_subquery(), 0)
