"""Does the record of the secondary's tags still describe the secondary? Asked by every cheap run.

A cheap run trusts ``store.record`` instead of listing the secondary. A secondary whose
storage was emptied or restored from an old backup, or a tag deleted or moved by hand, makes
that record lie, and a run that trusts it reports "in sync" for images that are gone. So each
cheap run checks, cheaply, before trusting it:

- the secondary's catalog (one request per page): empty, or lacking a repository the record
  holds tags in, means the record is not the secondary's any more: the run lists everything;
- a rotating sample of each repository's recorded tags (at least one, ``SAMPLE_FRACTION`` of
  them), each ``HEAD``ed: a tag that is absent or on another digest makes the run list that
  repository. The tags sampled longest ago go first, so successive runs cover them all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa

from registry_replication.outcomes import describe
from registry_replication.store.record import TagRecord
from registry_replication.store.schema import now, recorded_tags
from registry_replication.transport.client import RegistryClient

log = logging.getLogger(__name__)

SAMPLE_FRACTION = 0.01


@dataclass
class RecordCheck:
    """What the check found. ``lost``: why no part of the record can be trusted (list
    everything); ``stale``: {repository: why} for repositories to list in this run."""

    lost: str | None = None
    stale: dict[str, str] = field(default_factory=dict)
    sampled: int = 0
    catalog: int = 0

    def line(self) -> str:
        return (
            f"catalog read ({self.catalog} repositories), {self.sampled} recorded tags "
            "HEADed"
            + (
                f"; {len(self.stale)} repositories differ from the record and are listed"
                if self.stale
                else ""
            )
        )


def check_record(
    secondary: RegistryClient,
    record: TagRecord,
    repositories: Sequence[str],
    *,
    fraction: float = SAMPLE_FRACTION,
    concurrency: int = 16,
) -> RecordCheck:
    """Check the record of ``repositories`` (those a cheap run would read from it)."""
    rows = _present(record, repositories)
    holding = sorted(rows)
    try:
        catalog = set(secondary.catalog())
    except Exception as exc:  # noqa: BLE001 - any failure: the record is not trusted
        return RecordCheck(
            lost=f"the secondary's catalog could not be read to check the record ({describe(exc)})"
        )
    check = RecordCheck(catalog=len(catalog))
    missing = [r for r in holding if r not in catalog]
    if missing:
        tags = sum(len(rows[r]) for r in holding)
        check.lost = (
            f"the secondary's catalog is empty while the record holds {tags} tags in "
            f"{len(holding)} repositories (was its storage emptied or replaced?)"
            if not catalog
            else f"the secondary's catalog lacks {len(missing)} repositories the record holds "
            f"tags in ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
        )
        log.warning(
            "the record of the secondary's tags is not trusted: %s; this run lists the secondary",
            check.lost,
        )
        return check
    sample = [
        (repository, tag, digest)
        for repository in holding
        for tag, digest in rows[repository][: max(1, math.ceil(len(rows[repository]) * fraction))]
    ]

    def head(item: tuple[str, str, str]) -> str | None:
        repository, tag, digest = item
        try:
            found = secondary.head_manifest(repository, tag)
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: this tag
            return f"{repository}:{tag} could not be checked ({describe(exc)})"
        if found is None:
            return f"{repository}:{tag} is recorded on {digest} but absent on the secondary"
        if found.digest != digest:
            return (
                f"{repository}:{tag} is recorded on {digest} but the secondary has {found.digest}"
            )
        return None

    with ThreadPoolExecutor(max(1, min(concurrency, len(sample) or 1))) as pool:
        for (repository, _, _), why in zip(sample, pool.map(head, sample)):
            if why is not None:
                check.stale.setdefault(repository, why)
    check.sampled = len(sample)
    for repository, why in check.stale.items():
        log.warning(
            "the record of %s differs from the secondary: %s; this run lists it", repository, why
        )
    _stamp(record, [(repository, tag) for repository, tag, _ in sample])
    return check


def _present(record: TagRecord, repositories: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """{repository: [(tag, digest)]} recorded present, sampled longest ago first."""
    wanted = sorted(set(repositories))
    found: dict[str, list[tuple[str, str]]] = {}
    t = recorded_tags.c
    with record.engine.connect() as conn:
        for start in range(0, len(wanted), 500):  # bounded IN lists
            query = (
                sa.select(t.repository, t.tag, t.digest)
                .where(
                    t.secondary == record.secondary,
                    t.repository.in_(wanted[start : start + 500]),
                    t.state == "present",
                    t.digest.is_not(None),
                )
                .order_by(t.repository, sa.func.coalesce(t.sampled_at, t.recorded_at), t.tag)
            )
            for repository, tag, digest in conn.execute(query):
                found.setdefault(repository, []).append((tag, digest))
    return found


def _stamp(record: TagRecord, pairs: list[tuple[str, str]]) -> None:
    if not pairs:
        return
    t = recorded_tags.c
    update = (
        recorded_tags.update()
        .where(
            t.secondary == record.secondary,
            t.repository == sa.bindparam("r"),
            t.tag == sa.bindparam("t"),
        )
        .values(sampled_at=sa.bindparam("at"))
    )
    at = now()
    with record.engine.begin() as conn:
        conn.execute(update, [{"r": r, "t": tag, "at": at} for r, tag in pairs])
