"""Replication state: each repository's last known sync state, and the write leases (one per
repository being written, one per open blob upload session) that writers coordinate through."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from registry_replication.store.engine import dialect_insert
from registry_replication.store.schema import aware, leases, now, repository_state


class ReplicationState:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # -- repositories ---------------------------------------------------------------------------

    def set_repository_state(self, rows: Iterable[dict[str, Any]]) -> None:
        """Upsert per-repository state (for the status page)."""
        values = [{**row, "updated_at": now()} for row in rows]
        if not values:
            return
        with self.engine.begin() as conn:
            # One statement per column set: repositories may report different columns.
            for columns in {tuple(sorted(v)) for v in values}:
                insert = dialect_insert(self.engine, repository_state)
                upsert = insert.on_conflict_do_update(
                    index_elements=[repository_state.c.repository],
                    set_={c: insert.excluded[c] for c in columns if c != "repository"},
                )
                conn.execute(upsert, [v for v in values if tuple(sorted(v)) == columns])

    def repository_states(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(repository_state).order_by(repository_state.c.repository))
            return [dict(row._mapping) for row in rows]

    # -- write leases ---------------------------------------------------------------------------

    def acquire_lease(
        self, resource: str, owner: str, ttl_seconds: float, detail: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Take ``resource`` for ``owner`` if it is free, expired or already ``owner``'s (then
        it is renewed). Returns None when ``owner`` holds it, else the holder's row."""
        at = now()
        values = {
            "resource": resource,
            "owner": owner,
            "acquired_at": at,
            "detail": detail,
            "expires_at": at + dt.timedelta(seconds=ttl_seconds),
        }
        insert = dialect_insert(self.engine, leases).values(**values)
        upsert = insert.on_conflict_do_update(
            index_elements=[leases.c.resource],
            set_={name: insert.excluded[name] for name in ("owner", "expires_at", "detail")}
            | {
                "acquired_at": sa.case(
                    (leases.c.owner == owner, leases.c.acquired_at),
                    else_=insert.excluded.acquired_at,
                )
            },
            where=sa.or_(leases.c.owner == owner, leases.c.expires_at < at),
        )
        with self.engine.begin() as conn:
            conn.execute(upsert)
            row = conn.execute(sa.select(leases).where(leases.c.resource == resource)).one()
        return None if row.owner == owner else _lease(row)

    def renew_leases(self, owner: str, ttl_seconds: float) -> int:
        """Extend every write lease ``owner`` holds; returns how many it holds."""
        expires = now() + dt.timedelta(seconds=ttl_seconds)
        with self.engine.begin() as conn:
            return conn.execute(
                leases.update().where(leases.c.owner == owner).values(expires_at=expires)
            ).rowcount

    def release_lease(self, resource: str, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                leases.delete().where(leases.c.resource == resource, leases.c.owner == owner)
            )

    def expired_leases(self, prefix: str) -> list[dict[str, Any]]:
        """Leases on resources starting with ``prefix`` whose holder stopped renewing them."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases).where(
                    leases.c.resource.startswith(prefix, autoescape=True),
                    leases.c.expires_at < now(),
                )
            )
            return [_lease(row) for row in rows]

    def all_leases(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                _lease(row) for row in conn.execute(sa.select(leases).order_by(leases.c.resource))
            ]


def _lease(row: Any) -> dict[str, Any]:
    return {
        **row._mapping,
        "expires_at": aware(row.expires_at),
        "acquired_at": aware(row.acquired_at),
    }
