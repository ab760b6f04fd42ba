"""Schema migrations (Alembic, as Airflow uses), run programmatically.

The revisions live in ``migrations/versions``. Our version table is ``rr_alembic_version``: the
store may share Airflow's own database, whose ``alembic_version`` is Airflow's. A store made
before migrations (tables and ``rr_schema`` version 1, no version table) is stamped at the
baseline and upgraded from there; a new store is made at head from ``schema.metadata`` and
stamped there (Alembic's cookbook, "Building an Up to Date Database from Scratch"), so the
revisions only ever change stores that exist. One process upgrades at a time: a PostgreSQL
advisory lock, or SQLite's write lock (``BEGIN IMMEDIATE``), held across the whole upgrade.

Alembic is imported only when there is something to upgrade: a store already at this code's
head is told by one query, against the head read off the revision files' names (each revision
is named by its file's number; ``tests/store/test_store.py`` holds Alembic to the same head).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from registry_replication.store import schema

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

VERSION_TABLE = "rr_alembic_version"
BASELINE = "0001"  # the schema from before migrations (``rr_schema`` version 1)
MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key: "rr_migr" as an integer, distinct from any key Airflow takes.
_ADVISORY_LOCK = int.from_bytes(b"rr_migr", "big")


def config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration, built in code; ``env.py`` runs on ``connection``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@cache
def head() -> str:
    """This code's newest revision: the highest-numbered revision file (``NNNN_name.py``)."""
    return max(
        path.name[:4] for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    )


def current(connection: sa.Connection) -> str | None:
    """The store's revision (None: not under migrations yet)."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade(engine: sa.Engine) -> str | None:
    """Bring the store to this code's head; returns the revision it was at (head: nothing done)."""
    with engine.connect() as conn:
        found = current(conn)
    if found == head():
        return found
    from alembic import command  # before the lock: the import is not held against others

    with _exclusive(engine) as conn:
        found = current(conn)  # another process may have upgraded meanwhile
        if found == head():
            return found
        cfg = config(conn)
        if found is None and not sa.inspect(conn).has_table(schema.events.name):
            _create(conn)
            command.stamp(cfg, "head")
            log.info("made the replication store at %r at revision %s", engine.url, head())
            return found
        if found is None:
            log.info(
                "the replication store at %r predates migrations: stamping it at %s",
                engine.url,
                BASELINE,
            )
            command.stamp(cfg, BASELINE)
        else:
            _known(found, engine)
        command.upgrade(cfg, "head")
        log.info(
            "the replication store at %r is at revision %s (was %s)", engine.url, head(), found
        )
        return found


def _create(conn: sa.Connection) -> None:
    """Make every table of ``schema.metadata`` on the empty database of ``conn``."""
    schema.metadata.create_all(conn)
    conn.execute(schema.schema_info.insert().values(version=schema.REFUSED_BY_PREMIGRATION_CODE))


def _known(revision: str, engine: sa.Engine) -> None:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        ScriptDirectory.from_config(config()).get_revision(revision)
    except CommandError as exc:
        raise RuntimeError(
            f"the replication store at {engine.url!r} is at revision {revision}, which this "
            f"code (head {head()}) does not know: it was upgraded by a newer "
            "registry-replication; upgrade this installation"
        ) from exc


@contextmanager
def _exclusive(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection holding the store's migration lock until its transaction commits."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_LOCK)))
        else:
            # Taken now rather than at the first write: whoever waits here (busy_timeout)
            # then sees the finished upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn
        conn.commit()
