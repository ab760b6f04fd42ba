"""Replication state: each repository's last known sync state on each secondary, and the write
leases (one per secondary and repository being written, one per open blob upload session) that
writers coordinate through."""

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

    def set_repository_state(self, secondary: str, rows: Iterable[dict[str, Any]]) -> None:
        """Upsert per-repository state on ``secondary`` (for the status page)."""
        values = [{**row, "secondary": secondary, "updated_at": now()} for row in rows]
        if not values:
            return
        with self.engine.begin() as conn:
            # One statement per column set: repositories may report different columns.
            for columns in {tuple(sorted(v)) for v in values}:
                insert = dialect_insert(self.engine, repository_state)
                upsert = insert.on_conflict_do_update(
                    index_elements=[repository_state.c.secondary, repository_state.c.repository],
                    set_={
                        c: insert.excluded[c]
                        for c in columns
                        if c not in ("secondary", "repository")
                    },
                )
                conn.execute(upsert, [v for v in values if tuple(sorted(v)) == columns])

    def repository_states(self, secondary: str | None = None) -> list[dict[str, Any]]:
        """Each repository's state on ``secondary`` (None: on every secondary)."""
        query = sa.select(repository_state).order_by(
            repository_state.c.repository, repository_state.c.secondary
        )
        if secondary is not None:
            query = query.where(repository_state.c.secondary == secondary)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # -- write leases ---------------------------------------------------------------------------

    def acquire_lease(
        self,
        secondary: str,
        resource: str,
        owner: str,
        ttl_seconds: float,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Take ``resource`` on ``secondary`` for ``owner`` if it is free, expired or already
        ``owner``'s (then it is renewed). Returns None when ``owner`` holds it, else the
        holder's row."""
        at = now()
        values = {
            "secondary": secondary,
            "resource": resource,
            "owner": owner,
            "acquired_at": at,
            "detail": detail,
            "expires_at": at + dt.timedelta(seconds=ttl_seconds),
        }
        insert = dialect_insert(self.engine, leases).values(**values)
        upsert = insert.on_conflict_do_update(
            index_elements=[leases.c.secondary, leases.c.resource],
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
            row = conn.execute(
                sa.select(leases).where(
                    leases.c.secondary == secondary, leases.c.resource == resource
                )
            ).one()
        return None if row.owner == owner else _lease(row)

    def renew_leases(self, owner: str, ttl_seconds: float) -> int:
        """Extend every write lease ``owner`` holds; returns how many it holds."""
        expires = now() + dt.timedelta(seconds=ttl_seconds)
        with self.engine.begin() as conn:
            return conn.execute(
                leases.update().where(leases.c.owner == owner).values(expires_at=expires)
            ).rowcount

    def release_lease(self, secondary: str, resource: str, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                leases.delete().where(
                    leases.c.secondary == secondary,
                    leases.c.resource == resource,
                    leases.c.owner == owner,
                )
            )

    def expired_leases(self, secondary: str, prefix: str) -> list[dict[str, Any]]:
        """Leases on ``secondary``'s resources starting with ``prefix`` whose holder stopped
        renewing them."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases).where(
                    leases.c.secondary == secondary,
                    leases.c.resource.startswith(prefix, autoescape=True),
                    leases.c.expires_at < now(),
                )
            )
            return [_lease(row) for row in rows]

    def all_leases(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                _lease(row)
                for row in conn.execute(
                    sa.select(leases).order_by(leases.c.secondary, leases.c.resource)
                )
            ]


def _lease(row: Any) -> dict[str, Any]:
    return {
        **row._mapping,
        "expires_at": aware(row.expires_at),
        "acquired_at": aware(row.acquired_at),
    }
