"""One SQLAlchemy engine per process and store URL, its schema brought up to date once.

Every caller (the webhook, a sensor poke, the trigger, a task, the status page) goes through
``shared_engine(url)``: the first use of a URL in a process upgrades the schema
(``migrate.upgrade``), later ones reuse the engine and its connection pool. A forked child
starts with none.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from registry_replication.settings import current, variable
from registry_replication.store import migrate

# A process uses one store; a test session many. The least recently used beyond this many give
# back their pooled connections (such an engine stays usable, with a new pool).
MAX_ENGINES = 8
_engines: OrderedDict[str, sa.Engine] = OrderedDict()
_lock = threading.Lock()


def default_url() -> str:
    """The ``db_url`` setting, else ``$AIRFLOW_HOME/registry_replication.db``."""
    url = current().db_url
    if url:
        return url
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return f"sqlite:///{home / 'registry_replication.db'}"


def shared_engine(url: str | None = None) -> sa.Engine:
    """This process's engine for ``url`` (default ``default_url()``), schema at head."""
    url = url or default_url()
    with _lock:
        found = _engines.get(url)
        if found is not None:
            _engines.move_to_end(url)
        else:
            found = create(url)
            migrate.upgrade(found)
            _engines[url] = found
            while len(_engines) > MAX_ENGINES:
                _engines.popitem(last=False)[1].dispose()
    return found


def create(url: str) -> sa.Engine:
    """A new engine for ``url``, schema untouched (``shared_engine`` is the cached one)."""
    created = sa.create_engine(url, pool_pre_ping=True)
    if created.dialect.name == "sqlite":
        _private_file(created.url.database)
        sa_event.listen(created, "connect", _sqlite_pragmas)
    elif created.dialect.name != "postgresql":
        raise RuntimeError(
            f"the replication store supports SQLite and PostgreSQL, not {created.dialect.name} "
            f"({created.url!r}): set {variable('db_url')} to a sqlite:/// or "
            "postgresql+psycopg2:// URL"
        )
    return created


def _private_file(database: str | None) -> None:
    """Create a new SQLite store 0600 (SQLite gives its -wal and -shm files the same mode), in
    a folder made 0700: it holds event payloads, error texts and the registries' names."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    for folder in reversed([p for p in path.parents if not p.exists()]):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # another process made it meanwhile
            pass
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # an existing store keeps its mode


def dialect_insert(bind: sa.Engine | sa.Connection, table: sa.Table) -> Any:
    """``INSERT`` with ``on_conflict_do_nothing``/``_do_update`` for this database."""
    if bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _forget_in_child() -> None:
    # A forked child must not use (or close) its parent's pooled connections.
    for inherited in _engines.values():
        inherited.dispose(close=False)
    _engines.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, tried again within ``BUSY_SECONDS``: SQLite answers "database
    is locked" at once, without its busy handler, when the switch could deadlock with another
    process's open transaction (several processes opening a new store at the same instant)."""
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


# How long a connection waits for another process's lock on the store file.
BUSY_SECONDS = 10.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # First: switching a new file to WAL needs its lock, which another process may hold.
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
    cursor.close()
