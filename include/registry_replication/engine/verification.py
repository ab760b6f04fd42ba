"""Verification's cadence and record: which level a run verifies at, what the store remembers
of each repository's last verification, and the run's verification line.

``verify=auto`` runs ``blobs`` (``verify.deep_verify``) where a repository replicated before has
had none for ``deep_verify_days``; a repository's first replication starts its clock
(``settle``). A repository recorded ``damaged`` stays so until a check at that level passes.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa

from registry_replication.engine.findings import DeepReport
from registry_replication.outcomes import RepositoryState, Scope, Snapshot, VerifyLevel
from registry_replication.settings import current
from registry_replication.store import Store
from registry_replication.store.record import RunKind
from registry_replication.store.schema import aware, now, repository_state

log = logging.getLogger(__name__)

AUTO = "auto"  # the ``verify`` default: tags, or blobs where the last one is deep_verify_days old


def choose_level(
    store: Store,
    secondary: str,
    asked: str,
    repositories: Iterable[str] | None,
    scope: Scope,
    days: float | None = None,
) -> tuple[VerifyLevel, str]:
    """The run's level and why: as asked, or under ``auto`` ``blobs`` when a repository in
    scope that was replicated before has had no ``blobs`` (or deeper) verification for
    ``deep_verify_days``. A repository this run replicates for the first time is not due: what
    the run writes is checked as it lands, and ``settle`` starts its cadence."""
    if asked != AUTO:
        return VerifyLevel(asked), f"verify={asked} was asked for"
    days = current().deep_verify_days if days is None else days
    last = last_deep(store, secondary)
    names = sorted(
        n
        for n in (last if repositories is None else set(repositories) & set(last))
        if scope.wants_repository(n)
    )
    if not names:
        return VerifyLevel.TAGS, (
            "no repository in scope was replicated before: this run's "
            "writes are checked as they land"
        )
    cutoff = now() - dt.timedelta(days=days)
    due = [n for n in names if last[n] is None or last[n] < cutoff]
    if due:
        return VerifyLevel.BLOBS, (
            f"{len(due)} repositories ({', '.join(due[:3])}"
            f"{' ...' if len(due) > 3 else ''}) had no blobs "
            f"verification for deep_verify_days={days:g}"
        )
    return VerifyLevel.TAGS, f"every repository had a blobs verification within {days:g} days"


def last_deep(store: Store, secondary: str) -> dict[str, dt.datetime | None]:
    """{repository: its last blobs or content verification (None: never)} of the repositories
    known on ``secondary``."""
    t = repository_state.c
    with store.engine.connect() as conn:
        return {
            r.repository: aware(r.verified_at)
            if r.verified_level in (VerifyLevel.BLOBS, VerifyLevel.CONTENT)
            else None
            for r in conn.execute(
                sa.select(t.repository, t.verified_level, t.verified_at).where(
                    t.secondary == secondary
                )
            )
        }


def damaged_repositories(store: Store, secondary: str) -> dict[str, dict[str, str]]:
    """{repository: {digest: level found at}} of the repositories recorded damaged on
    ``secondary``."""
    t = repository_state.c
    with store.engine.connect() as conn:
        return {
            r.repository: r.damaged or {}
            for r in conn.execute(
                sa.select(t.repository, t.damaged).where(
                    t.secondary == secondary, t.state == RepositoryState.DAMAGED
                )
            )
        }


def settle(
    store: Store,
    secondary: str,
    verification: pd.DataFrame,
    level: VerifyLevel,
    before: Snapshot | None = None,
) -> dict[str, dict[str, str]]:
    """The repositories of ``verification`` still recorded damaged ({repository: {digest:
    level}}): a tags run cannot clear a deeper level's finding, so they stay damaged.

    Also starts the ``blobs`` cadence of the repositories replicated for the first time (none
    known to the store). One that this run wrote whole (nothing of it on the secondary in
    ``before``, the run's starting view of it, and in sync now) counts as verified at ``blobs``
    now: each blob the run copied was checked against its digest as it landed, and the
    registry accepted each manifest only with its blobs present. Any other is due at the
    next run."""
    damaged = damaged_repositories(store, secondary)
    if damaged:
        log.error(
            "repositories damaged on the secondary (found by an earlier or this %s "
            "verification; the log of that run names each data file): %s",
            level,
            ", ".join(sorted(set(damaged) & set(verification["repository"]))),
        )
    known = last_deep(store, secondary)
    first = {
        r: bool(ok)
        for r, ok in zip(verification["repository"], verification["in_sync"])
        if r not in known
    }
    if first:
        held = set(before.tags["repository"]) if before is not None else set(first)
        whole = sorted(r for r, ok in first.items() if ok and r not in held)
        at = now()
        store.state.set_repository_state(
            secondary,
            (
                {
                    "repository": r,
                    "state": RepositoryState.SYNCED if ok else RepositoryState.PENDING,
                    **(
                        {"verified_level": VerifyLevel.BLOBS.value, "verified_at": at}
                        if r in whole
                        else {}
                    ),
                }
                for r, ok in first.items()
            ),
        )
        log.info(
            "%d repositories replicated for the first time: %d written whole by this run "
            "count as verified at blobs now (next due in deep_verify_days), %d are due for "
            "a blobs verification at the next run",
            len(first),
            len(whole),
            len(first) - len(whole),
        )
    return {r: damaged[r] for r in verification["repository"] if r in damaged}


def verification_line(
    verification: pd.DataFrame | None,
    level: VerifyLevel,
    kind: RunKind | None,
    damaged: Mapping[str, Any],
    deep: DeepReport | None,
) -> str:
    """``10 of 10 repositories in sync (tags, from the record; sample of 50 tags checked)``:
    what the run looked at. A damaged repository is never counted in sync."""
    if verification is None:
        return "verification: none (dry run)"
    total = len(verification)
    in_sync = int((verification["in_sync"] & ~verification["repository"].isin(list(damaged))).sum())
    how = [level.value]
    if kind is None:
        how.append("listed")
    elif kind.kind == "cheap":
        how.append(
            "from the record" + (f"; sample of {kind.sampled} tags checked" if kind.sampled else "")
        )
    else:
        how.append("listed")
    if deep is not None:
        how.append(
            f"{deep.manifests_checked} manifests and {deep.blobs_checked} blobs checked"
            + (f", {deep.blobs_read} read back" if deep.level == VerifyLevel.CONTENT else "")
        )
    line = f"verification: {in_sync} of {total} repositories in sync ({'; '.join(how)})"
    if damaged:
        line += f"; {len(damaged)} damaged: {', '.join(sorted(damaged)[:10])}"
    return line
