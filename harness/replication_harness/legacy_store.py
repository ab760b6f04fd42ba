"""Checks of the store's migrations: a store made by the code from before migrations upgrades
with its data, so does a store at each revision with a row in every table (a secondary's rows
on the placeholder ``LEGACY`` until adopted), and the revisions make the declared schema.

The old store is a dump in ``schemas/`` (``premigration.<dialect>.sql``): that code's schema
and the data it wrote for the steps in ``schemas/README.md``, dumped once from SQLite and
PostgreSQL with the database's own tool.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from registry_replication.store import Store, engine, migrate
from registry_replication.store.queue import Event
from registry_replication.store.schema import LEGACY, metadata, secondaries
from registry_replication.store.secondaries import KEYED

SCHEMAS = Path(__file__).parent / "schemas"
T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)


def assert_schema_matches(store: Store) -> None:
    """Alembic's autogenerate finds nothing between the migrated database and ``metadata``."""
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": migrate.VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
        assert migrate.current(conn) == migrate.head()


def reflected_schema(url: str) -> dict[str, dict[str, object]]:
    """Each table of the database at ``url`` as the database describes it: its columns (in any
    order), primary key with its name, indexes, foreign keys and unique constraints."""
    created = engine.create(url)
    try:
        with created.connect() as conn:
            inspector = sa.inspect(conn)
            return {
                table: {
                    "columns": sorted(
                        (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                        for c in inspector.get_columns(table)
                    ),
                    "primary_key": inspector.get_pk_constraint(table),
                    "indexes": sorted(
                        (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                        for i in inspector.get_indexes(table)
                    ),
                    "foreign_keys": sorted(
                        (tuple(f["constrained_columns"]), f["referred_table"])
                        for f in inspector.get_foreign_keys(table)
                    ),
                    "unique": sorted(
                        tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
                    ),
                }
                for table in inspector.get_table_names()
            }
    finally:
        created.dispose()


def assert_made_like_upgraded(new_url: str, old_url: str) -> None:
    """A store made at head (``migrate.upgrade`` on an empty database) is, table by table, the
    store the revisions make of the code from before migrations, and both match ``metadata``."""
    new = Store(new_url)
    load_dump(old_url, "premigration")
    for store in (new, Store(old_url)):
        assert_schema_matches(store)
    assert reflected_schema(new_url) == reflected_schema(old_url)
    assert _schema_version(new_url) == _schema_version(old_url) == 2


def load_dump(url: str, name: str) -> None:
    """Run ``schemas/<name>.<dialect>.sql`` on the empty database at ``url``, schema untouched."""
    created = engine.create(url)
    script = (SCHEMAS / f"{name}.{created.dialect.name}.sql").read_text()
    try:
        with created.connect() as conn:
            dbapi = conn.connection.driver_connection
            if created.dialect.name == "sqlite":
                dbapi.executescript(script)
            else:
                with dbapi.cursor() as cursor:
                    cursor.execute(script)
                dbapi.commit()
    finally:
        created.dispose()  # pg_dump's script empties search_path: no pooled connection keeps it


def _schema_version(url: str) -> int:
    """What the code from before migrations reads to accept a store: ``rr_schema``'s version."""
    created = engine.create(url)
    try:
        with created.connect() as conn:
            return conn.execute(sa.text("SELECT max(version) FROM rr_schema")).scalar_one()
    finally:
        created.dispose()


def assert_premigration_store_upgrades(url: str) -> None:
    """An old installation's store, with data in every table, upgrades and keeps it all."""
    load_dump(url, "premigration")
    assert _schema_version(url) == 1

    store = Store(url)  # the first use upgrades it
    with store.engine.connect() as conn:
        assert migrate.current(conn) == migrate.head()
    assert store.queue.stats()["counts"] == {
        "pending": 3,
        "processing": 0,
        "done": 2,
        "failed": 0,
        "rejected": 0,
    }
    assert store.history.last_run("registry_reconcile")["summary"] == {"copied": 3}
    assert [(r["digest"], r["code"]) for r in store.history.failed_layers()] == [
        ("sha256:" + "b" * 64, "UNKNOWN")
    ]
    assert [(r["repository"], r["state"]) for r in store.state.repository_states()] == [
        ("group/app", "failed")
    ]
    assert [(r["secondary"], r["owner"]) for r in store.state.all_leases()] == [
        (LEGACY, "old-writer")
    ]
    assert store.history.copied_bytes_total() == 12345
    assert store.history.push_latency_histogram()[1] == 2
    assert store.history.record_dag_outcome("registry_reconcile", "run2", "success") == "failed"
    assert [a["subject"] for a in store.history.alerts()] == ["subject"]
    assert_schema_matches(store)
    # Its secondary's rows wait on the placeholder; the first writer gives them to its
    # secondary (no record verified at a URL: the secondary_conn_id setting's).
    assert_adopted(store, ("registry_eu", "registry_secondary"), "registry_secondary")
    assert [(r["secondary"], r["state"]) for r in store.state.repository_states()] == [
        ("registry_secondary", "failed")
    ]
    # The events' state so far is their delivery to that secondary (0008).
    assert store.queue.stats("registry_secondary")["counts"]["pending"] == 3
    assert store.queue.stats("registry_eu")["counts"]["pending"] == 0

    # The upgraded store works on: the old events are claimed, a new one is added, once, with
    # a delivery to each secondary.
    e9 = Event("e9", "push", "group/app", "2.0", None, None, T0)
    assert store.queue.add([e9], ("registry_secondary", "registry_eu")) == 1
    assert store.queue.add([e9], ("registry_secondary", "registry_eu")) == 0
    _, claimed = store.queue.claim("registry_secondary")
    assert sorted(e.id for e in claimed) == ["e2", "e3", "e4", "e9"]
    assert [e.id for e in store.queue.claim("registry_eu")[1]] == ["e9"]
    # And the code from before migrations refuses it from now on: that code (released, so
    # fixed) reads max(rr_schema.version) on start and refuses the store when it is above its
    # SCHEMA_VERSION, 1 ("schema version 2, newer than this code's 1").
    assert _schema_version(url) == 2


def revisions() -> list[str]:
    """Every revision below head, oldest first."""
    script = ScriptDirectory.from_config(migrate.config())
    return [
        r.revision for r in reversed(list(script.walk_revisions())) if r.revision != migrate.head()
    ]


def _row(table: sa.Table) -> dict[str, object]:
    """One row for ``table``, a plain value of each column's type."""
    values = {
        str: "x",
        int: 1,
        float: 1.5,
        bool: True,
        bytes: b"x",
        dict: {"k": 1},
        dt.datetime: T0,
    }
    # A secondary's row from a revision with the column is one not adopted yet, as 0007 left it.
    return {
        c.name: LEGACY if c.name == "secondary" else values[c.type.python_type]
        for c in table.columns
    }


def _row_counts(conn: sa.Connection) -> dict[sa.Table, int]:
    """Each of the store's tables (as the database has it) and its number of rows."""
    tables = sa.MetaData()
    tables.reflect(conn)
    return {
        table: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        for name, table in tables.tables.items()
        if name != migrate.VERSION_TABLE
    }


def store_at(url: str, revision: str) -> dict[str, int]:
    """Make the store at ``url`` a store at ``revision`` with a row in every table (the
    pre-migrations dump, upgraded to ``revision``, a row added to each empty table); returns
    each table's rows."""
    load_dump(url, "premigration")
    created = engine.create(url)
    try:
        with created.connect() as conn:
            cfg = migrate.config(conn)
            command.stamp(cfg, migrate.BASELINE)
            command.upgrade(cfg, revision)
            for table, count in _row_counts(conn).items():
                if count == 0:
                    conn.execute(table.insert().values(_row(table)))
            before = {table.name: count for table, count in _row_counts(conn).items()}
            conn.commit()
    finally:
        created.dispose()
    assert min(before.values()) >= 1
    return before


def assert_revision_upgrades(url: str, revision: str) -> None:
    """A store at ``revision`` with a row in every table upgrades to head and keeps them all."""
    before = store_at(url, revision)

    store = Store(url)  # the first use upgrades it
    assert_schema_matches(store)
    with store.engine.connect() as conn:
        after = {table.name: count for table, count in _row_counts(conn).items()}
    assert {name: after[name] for name in before} == before
    assert_adopted(store, ("registry_eu", "registry_ap"), "registry_secondary")
    with store.engine.connect() as conn:
        adopted = {table.name: count for table, count in _row_counts(conn).items()}
    # Adoption takes the ``LEGACY`` row out of ``rr_secondaries`` (nothing is left to adopt).
    kept = {name: count for name, count in before.items() if name != secondaries.name}
    assert {name: adopted[name] for name in kept} == kept


def secondaries_of(store: Store) -> dict[str, set[str]]:
    """{table: the secondaries its rows name} of each table of a secondary's state."""
    with store.engine.connect() as conn:
        return {
            table.name: set(conn.execute(sa.select(table.c.secondary).distinct()).scalars())
            for table in KEYED
        }


def assert_adopted(store: Store, configured: tuple[str, ...], preferred: str) -> None:
    """The rows a revision before 0007 left are all ``LEGACY``'s until a writer adopts them;
    then all ``preferred``'s if it is configured, else ``configured[0]``'s (no record was
    verified at a configured URL), and nothing is left to adopt."""
    found = {name: names for name, names in secondaries_of(store).items() if names}
    assert found == dict.fromkeys(found, {LEGACY})
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(secondaries.c.conn_id)).scalars().all() == [LEGACY]
    chosen = preferred if preferred in configured else configured[0]
    assert store.secondaries.adopt_legacy(configured, lambda _: None, preferred) == chosen
    adopted = {name: names for name, names in secondaries_of(store).items() if names}
    assert adopted == dict.fromkeys(found, {chosen})
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(secondaries.c.conn_id)).scalars().all() == []
    assert store.secondaries.adopt_legacy(configured, lambda _: None, preferred) is None
