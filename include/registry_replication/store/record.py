"""The secondary's tags as recorded by their writers: what a cheap run reads instead of listing.

Only this package writes the secondary, so its state as the last full verification listed it,
kept current by every writer (``Copier._push_tag``, prune's tombstone untag, and through those
the event path, ad-hoc syncs and the CLI), can stand in for listing it again. A *cheap* run
lists the primary and reads this record; a *full* run lists both sides and re-records what it
listed. A full run comes when a repository has no record yet, when the last verification is
older than the cadence (``[registry_replication] full_verify_hours``, default 24), or when
asked (CLI ``--full-verify``, DAG param ``full_verify``).

The record may only ever be wrong in the direction that causes a recheck or a repeat copy,
never in the one that hides a difference:

- a writer marks *intent* (digest unknown) on a tag under the repository's lease *before* it
  writes the tag, and records the registry's answer after; a writer killed in between leaves
  the intent, which a cheap run resolves by ``HEAD`` on the secondary;
- a removed tag is recorded as *absent* (a row, not a missing row), so a full run's listing
  taken before the removal cannot bring it back: a full run replaces only rows older than its
  listing, and never an intent;
- each secondary has its record, keyed by its connection id, and a verification stamp also
  names the secondary's URL: a record made against another address is not trusted (use one
  URL for a secondary everywhere).

Drift made outside this package (a tag deleted on the secondary by hand, its storage emptied)
is checked for by every cheap run before it trusts the record (``record_check``: the catalog
and a rotating sample of recorded tags); what the check cannot see is found by the next full
verification.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa

from registry_replication.outcomes import Scope, Snapshot
from registry_replication.store import Store
from registry_replication.store.schema import aware, now, recorded_tags, recorded_verifications
from registry_replication.transport.client import Descriptor
from registry_replication.transport.reference import Digest

PRESENT, ABSENT, INTENT = "present", "absent", "intent"


class TagRecord:
    """The record of one secondary's tags (``secondary``: its connection id) in one store."""

    def __init__(self, store: Store, secondary: str) -> None:
        self.store = store
        self.engine = store.engine
        self.secondary = secondary
        tags, verifications = recorded_tags.c, recorded_verifications.c
        self._tags = tags.secondary == secondary  # every statement's: this secondary's rows
        self._verifications = verifications.secondary == secondary

    # -- writers (under the repository's lease) ---------------------------------------------

    def intend(self, repository: str, tags: Iterable[str], written_by: str) -> None:
        """About to write ``tags``: until recorded, their state on the secondary is unknown."""
        self._put(repository, {tag: (INTENT, None, None) for tag in tags}, written_by)

    def record(
        self,
        repository: str,
        tag: str,
        digest: str | None,
        written_by: str,
        media_type: str | None = None,
    ) -> None:
        """The secondary confirmed ``tag`` on ``digest`` (None: the tag is gone)."""
        self.record_all(repository, {tag: (digest, media_type)}, written_by)

    def record_all(
        self,
        repository: str,
        confirmed: Mapping[str, tuple[str | None, str | None]],
        written_by: str,
    ) -> None:
        """The secondary confirmed each tag on its (digest, media type), in one transaction
        (digest None: the tag is gone)."""
        self._put(
            repository,
            {
                tag: (PRESENT, digest, media_type) if digest else (ABSENT, None, None)
                for tag, (digest, media_type) in confirmed.items()
            },
            written_by,
        )

    def _put(
        self,
        repository: str,
        rows: Mapping[str, tuple[str, str | None, str | None]],
        written_by: str,
    ) -> None:
        if not rows:
            return
        at = now()
        with self.engine.begin() as conn:
            conn.execute(
                recorded_tags.delete().where(
                    self._tags,
                    recorded_tags.c.repository == repository,
                    recorded_tags.c.tag.in_(list(rows)),
                )
            )
            conn.execute(
                recorded_tags.insert(),
                [
                    {
                        "secondary": self.secondary,
                        "repository": repository,
                        "tag": tag,
                        "state": state,
                        "digest": digest,
                        "media_type": media_type,
                        "recorded_at": at,
                        "written_by": written_by,
                    }
                    for tag, (state, digest, media_type) in rows.items()
                ],
            )

    def replace_under_lease(
        self, repository: str, listed: Mapping[str, str], listed_since: dt.datetime, written_by: str
    ) -> None:
        """Re-record one repository from {tag: digest} listed while holding its lease: no
        writer can have changed it meanwhile, and a dead writer's intents are resolved."""
        with self.engine.begin() as conn:
            conn.execute(
                recorded_tags.delete().where(self._tags, recorded_tags.c.repository == repository)
            )
            if listed:
                conn.execute(
                    recorded_tags.insert(),
                    [
                        {
                            "secondary": self.secondary,
                            "repository": repository,
                            "tag": tag,
                            "state": PRESENT,
                            "digest": digest,
                            "media_type": None,
                            "recorded_at": listed_since,
                            "written_by": written_by,
                        }
                        for tag, digest in listed.items()
                    ],
                )

    # -- full runs ------------------------------------------------------------------------------

    def replace(
        self,
        registry: str,
        listing: Snapshot,
        repositories: Iterable[str],
        scope: Scope,
        listed_since: dt.datetime,
        written_by: str,
    ) -> None:
        """Re-record ``repositories`` from a listing of the secondary begun at ``listed_since``.

        Rows written since then (by writers working meanwhile) and intents are kept: the
        listing may predate them. A repository is stamped verified only when every tag of it
        was listed (no tag filter).
        """
        tags = listing.tags
        listed = {repository: group for repository, group in tags.groupby("repository")}
        whole = scope.tags == ".*"
        with self.engine.begin() as conn:
            for repository in sorted(set(repositories)):
                rows = conn.execute(
                    sa.select(
                        recorded_tags.c.tag, recorded_tags.c.state, recorded_tags.c.recorded_at
                    ).where(self._tags, recorded_tags.c.repository == repository)
                ).all()
                keep = {
                    r.tag for r in rows if r.state == INTENT or aware(r.recorded_at) >= listed_since
                }
                stale = [r.tag for r in rows if r.tag not in keep and scope.wants_tag(r.tag)]
                if stale:
                    conn.execute(
                        recorded_tags.delete().where(
                            self._tags,
                            recorded_tags.c.repository == repository,
                            recorded_tags.c.tag.in_(stale),
                        )
                    )
                group = listed.get(repository)
                if group is not None:
                    fresh = [
                        {
                            "secondary": self.secondary,
                            "repository": repository,
                            "tag": tag,
                            "state": PRESENT,
                            "digest": digest,
                            "media_type": media_type,
                            "recorded_at": listed_since,
                            "written_by": written_by,
                        }
                        for tag, digest, media_type in zip(
                            group["tag"], group["digest"], group["media_type"]
                        )
                        if tag not in keep
                    ]
                    if fresh:
                        conn.execute(recorded_tags.insert(), fresh)
                if whole:
                    conn.execute(
                        recorded_verifications.delete().where(
                            self._verifications, recorded_verifications.c.repository == repository
                        )
                    )
                    conn.execute(
                        recorded_verifications.insert().values(
                            secondary=self.secondary,
                            repository=repository,
                            registry=registry,
                            verified_at=listed_since,
                        )
                    )

    # -- cheap runs -----------------------------------------------------------------------------

    def verified(self, registry: str) -> dict[str, dt.datetime]:
        """{repository: last full verification} of the secondary at ``registry``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    recorded_verifications.c.repository, recorded_verifications.c.verified_at
                ).where(self._verifications, recorded_verifications.c.registry == registry)
            )
            return {r.repository: aware(r.verified_at) for r in rows}

    def tags(self, repositories: Iterable[str]) -> pd.DataFrame:
        """The recorded rows of ``repositories``: repository, tag, state, digest, media_type."""
        columns = ["repository", "tag", "state", "digest", "media_type"]
        # Plain tuples: pandas reads a list of SQLAlchemy rows ten times slower.
        rows = [tuple(row) for row in self._recorded(repositories, columns)]
        return pd.DataFrame(rows, columns=columns)

    def descriptors(self, repositories: Sequence[str]) -> dict[tuple[str, str], Descriptor]:
        """{(repository, tag): descriptor} of the tags recorded present with their media type:
        what a listing of the primary confirms with conditional HEADs (``known``), each digest
        typed again (``InvalidReference`` for a row out of grammar: the listing then goes on
        without conditional HEADs)."""
        return {
            (repository, tag): Descriptor(Digest.of(digest), media_type)
            for repository, tag, digest, media_type in self._recorded(
                repositories,
                ["repository", "tag", "digest", "media_type"],
                recorded_tags.c.state == PRESENT,
                recorded_tags.c.digest.is_not(None),
                recorded_tags.c.media_type.is_not(None),
            )
        }

    def _recorded(
        self, repositories: Iterable[str], columns: list[str], *where: sa.ColumnElement[bool]
    ) -> Iterator[sa.Row[Any]]:
        """``columns`` of this secondary's recorded rows of ``repositories`` (and ``where``),
        read 500 repositories at a time (bounded IN lists)."""
        wanted = sorted(set(repositories))
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                query = sa.select(*(recorded_tags.c[c] for c in columns)).where(
                    self._tags, recorded_tags.c.repository.in_(wanted[start : start + 500]), *where
                )
                yield from conn.execute(query)

    def tag_count(self) -> int:
        """How many tags the secondary holds as recorded (present, or an intent to write)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count())
                .select_from(recorded_tags)
                .where(self._tags, recorded_tags.c.state != ABSENT)
            ).scalar_one()

    def repositories(self) -> set[str]:
        """Every repository with a recorded tag or verification."""
        with self.engine.connect() as conn:
            tags = sa.select(recorded_tags.c.repository).where(self._tags).distinct()
            verified = sa.select(recorded_verifications.c.repository).where(self._verifications)
            return set(conn.execute(tags).scalars()) | set(conn.execute(verified).scalars())

    def rows(self, repository: str) -> dict[str, tuple[str, str | None]]:
        """{tag: (state, digest)} of one repository (for tests and operators)."""
        with self.engine.connect() as conn:
            return {
                r.tag: (r.state, r.digest)
                for r in conn.execute(
                    sa.select(recorded_tags).where(
                        self._tags, recorded_tags.c.repository == repository
                    )
                )
            }


@dataclass
class RunKind:
    """Whether this run listed the secondary (``full``) or read the record (``cheap``), and why."""

    kind: str  # full | cheap
    reason: str
    sampled: int = 0  # recorded tags HEADed to check the record (record_check)
    # Asked for, or the cadence's: the secondary is listed again after writing, too.
    verification_due: bool = False

    def line(self) -> str:
        return f"{self.kind} run: {self.reason}"


def choose(
    record: TagRecord,
    registry: str,
    scope: Scope,
    repositories: list[str] | None,
    *,
    full_verify: bool,
    cadence_hours: float,
    at: dt.datetime | None = None,
) -> RunKind:
    """Full or cheap, and why (the run log and summary say it)."""
    if full_verify:
        return RunKind("full", "a full verification was asked for", verification_due=True)
    stamps = record.verified(registry)
    if not stamps:
        return RunKind("full", f"no record of the secondary {registry} yet")
    wanted = [
        r
        for r in (repositories if repositories is not None else stamps)
        if scope.wants_repository(r) and r in stamps
    ]
    if wanted:
        oldest = min(wanted, key=stamps.__getitem__)
        age = ((at or now()) - stamps[oldest]).total_seconds() / 3600
        if age > cadence_hours:
            return RunKind(
                "full",
                f"the last full verification ({oldest}, "
                f"{stamps[oldest]:%Y-%m-%d %H:%M} UTC) is {age:.1f}h old, "
                f"older than full_verify_hours={cadence_hours:g}",
                verification_due=True,
            )
        return RunKind(
            "cheap",
            f"the secondary as recorded, last fully verified "
            f"{stamps[oldest]:%Y-%m-%d %H:%M} UTC ({age:.1f}h ago, "
            f"full_verify_hours={cadence_hours:g})",
        )
    return RunKind("cheap", "no repository in scope is recorded yet: each is listed")
