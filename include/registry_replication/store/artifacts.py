"""The runs' artifact files in the store (``rr_run_artifacts``): who wrote each, and its bytes
when the store holds the artifacts (``artifacts.RunFolder`` reads and writes through this)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from registry_replication.store.engine import dialect_insert
from registry_replication.store.schema import aware, now, run_artifacts


class ArtifactRecords:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def record(
        self, folder: str, name: str, *, run_at: dt.datetime, host: str, data: bytes | None = None
    ) -> None:
        """Record that ``host`` wrote ``folder/name`` (with its bytes, when the store holds
        them); a file written again (a task's retry) replaces its row."""
        row = {
            "folder": folder,
            "name": name,
            "run_at": run_at,
            "host": host,
            "written_at": now(),
            "size": None if data is None else len(data),
            "data": data,
        }
        insert = dialect_insert(self.engine, run_artifacts)
        with self.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[run_artifacts.c.folder, run_artifacts.c.name],
                    set_={k: insert.excluded[k] for k in row if k not in ("folder", "name")},
                ),
                row,
            )

    def find(self, folder: str, name: str) -> dict[str, Any] | None:
        """The row of ``folder/name`` (host, written_at, size, data), or None."""
        with self.engine.connect() as conn:
            found = (
                conn.execute(
                    sa.select(run_artifacts).where(
                        run_artifacts.c.folder == folder, run_artifacts.c.name == name
                    )
                )
                .mappings()
                .first()
            )
        if found is None:
            return None
        return {**found, "written_at": aware(found["written_at"])}
