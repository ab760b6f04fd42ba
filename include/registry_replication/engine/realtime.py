"""Replicate what notifications reported, within seconds: the event path of Geo.

Events are coalesced per repository (the latest digest per tag; a delete after a push wins),
then the primary is asked what is true now, since events can be stale or arrive out of order,
and the engine copies or prunes exactly those tags. Each event gets an outcome: done once its
tag is complete on the secondary, or an error to retry with.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from registry_replication.engine.copy import copy_plan
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import WantedTag, build_plan
from registry_replication.engine.prune import (
    DeleteBudget,
    mirror_manifest_delete,
    mirror_tag_deletes,
)
from registry_replication.outcomes import PermanentFailure, describe
from registry_replication.run_outcome import RunOutcome
from registry_replication.store.queue import Event
from registry_replication.store.record import TagRecord
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.reference import Digest, Repository, Tag

log = logging.getLogger(__name__)


@dataclass
class RepositoryWork:
    """What a repository's events ask for, after coalescing."""

    tags: dict[Tag, list[str]] = field(default_factory=dict)  # tag -> event ids
    deleted: dict[Digest, list[str]] = field(default_factory=dict)  # digest -> event ids
    untagged: dict[Tag, list[str]] = field(default_factory=dict)  # tag -> event ids
    noop: list[str] = field(default_factory=list)  # event ids with nothing to do

    @property
    def event_ids(self) -> list[str]:
        return [
            *self.noop,
            *(
                i
                for part in (self.tags, self.deleted, self.untagged)
                for ids in part.values()
                for i in ids
            ),
        ]


def coalesce(events: Sequence[Event]) -> dict[Repository, RepositoryWork]:
    """Per repository: the tags to copy, digests and tags deleted; the latest event wins.

    Deleting a manifest by digest makes distribution 2.8 report the digest and, separately,
    each tag it untagged (tag only, no digest). The events' names are typed (``_typed``).
    """
    work: dict[Repository, RepositoryWork] = defaultdict(RepositoryWork)
    pushed_digest: dict[tuple[str, str], str | None] = {}
    for e in sorted(events, key=lambda e: e.timestamp):
        w = work[e.repository]
        if e.action == "push" and e.tag:
            w.tags.setdefault(e.tag, []).extend([*w.untagged.pop(e.tag, []), e.id])
            pushed_digest[(e.repository, e.tag)] = e.digest
        elif e.action == "delete" and e.tag and not e.digest:
            w.untagged.setdefault(e.tag, []).extend([*w.tags.pop(e.tag, []), e.id])
        elif e.action == "delete" and e.digest:
            w.deleted.setdefault(e.digest, []).append(e.id)
            # A delete after a push wins: that tag is not copied, the delete is mirrored.
            for tag in [t for t in w.tags if pushed_digest.get((e.repository, t)) == e.digest]:
                w.deleted[e.digest].extend(w.tags.pop(tag))
        else:
            w.noop.append(e.id)  # pushes by digest only: their tagged parent brings them
    return dict(work)


def replicate_events(
    primary: RegistryClient,
    secondary: RegistryClient,
    events: Sequence[Event],
    *,
    leases: Leases,
    concurrency: int = 16,
    parallelism: int = 8,
    repositories_at_once: int = 4,
    on_copied: Callable[[int], None] | None = None,
    max_prune_fraction: float = 0.5,
) -> dict[str, str | None]:
    """Process claimed events; returns {event id: None when done, else the error} (a
    ``PermanentFailure`` when no retry can help).

    Repositories are handled ``repositories_at_once`` at a time (a burst of pushes spreads
    over many), each under its own lease. Writes go through the shared write protocol
    (``leases``): a tag the primary moved again meanwhile is left to the event that reports
    the move, so events are acknowledged as done. ``on_copied`` is called with the blob bytes
    copied for each repository (from the worker threads), failed or not. The batch's tag
    deletes together remove at most ``max_prune_fraction`` of the secondary's recorded tags
    (prune's mass-deletion guard); the events of a repository refused go back to retry.
    """
    budget = DeleteBudget(TagRecord(leases.store, leases.secondary), max_prune_fraction)

    def one(repository: Repository, work: RepositoryWork) -> dict[str, str | None]:
        try:
            return replicate_repository(repository, work)
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: one repository's events
            log.exception("events of %s failed", repository)
            return {event_id: describe(exc) for event_id in work.event_ids}

    def replicate_repository(repository: Repository, work: RepositoryWork) -> dict[str, str | None]:
        outcomes: dict[str, str | None] = {event_id: None for event_id in work.noop}
        if work.tags:
            outcomes.update(
                _copy_tags(
                    primary,
                    secondary,
                    repository,
                    work.tags,
                    leases,
                    concurrency=concurrency,
                    parallelism=parallelism,
                    on_copied=on_copied,
                )
            )
        if work.deleted:
            outcomes.update(
                _mirror_deletes(
                    primary,
                    secondary,
                    repository,
                    work.deleted,
                    leases,
                    budget,
                    concurrency=concurrency,
                )
            )
        if work.untagged:
            results = mirror_tag_deletes(
                primary,
                secondary,
                repository,
                sorted(work.untagged),
                leases=leases,
                budget=budget,
                concurrency=concurrency,
            )
            failed = next((p.error for p in RunOutcome(pruned=results).problems()), None)
            outcomes.update({i: failed for ids in work.untagged.values() for i in ids})
        return outcomes

    typed: list[Event] = []
    outcomes: dict[str, str | None] = {}
    for event in events:
        try:
            typed.append(_typed(event))
        except Exception as exc:  # noqa: BLE001 - the unit's boundary: one event's row
            # A row the webhook did not write (out of grammar, or not even text): no retry helps.
            outcomes[event.id] = PermanentFailure(describe(exc))
    work = coalesce(typed)
    with ThreadPoolExecutor(max(1, min(repositories_at_once, len(work)))) as pool:
        for done in pool.map(lambda item: one(*item), work.items()):
            outcomes.update(done)
    return outcomes


def _typed(event: Event) -> Event:
    """An event read back from the store with its names typed, each validated once here for
    the whole path (the webhook validated them before it stored the event)."""
    return dataclasses.replace(
        event,
        repository=Repository.of(event.repository),
        tag=None if event.tag is None else Tag.of(event.tag),
        digest=None if event.digest is None else Digest.of(event.digest),
    )


def _copy_tags(
    primary: RegistryClient,
    secondary: RegistryClient,
    repository: Repository,
    tags: dict[Tag, list[str]],
    leases: Leases,
    *,
    concurrency: int,
    parallelism: int,
    on_copied: Callable[[int], None] | None,
) -> dict[str, str | None]:
    def heads(tag: Tag):
        return primary.head_manifest(repository, tag), secondary.head_manifest(repository, tag)

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            found = dict(zip(tags, pool.map(heads, tags)))
    except Exception as exc:  # noqa: BLE001 - these events' outcome
        return {event_id: describe(exc) for ids in tags.values() for event_id in ids}
    # Gone from the primary since (the delete event or the reconcile mirrors that), or already
    # where the primary points: done. The rest is what the plan copies.
    wanted = [
        WantedTag(repository, tag, source.digest)
        for tag, (source, target) in found.items()
        if source is not None and (target is None or target.digest != source.digest)
    ]
    if not wanted:
        return {event_id: None for ids in tags.values() for event_id in ids}
    plan = build_plan(primary, secondary, wanted, concurrency=concurrency)
    # The plan was made moments ago from these very HEADs: no second existence check per blob
    # and tag (the compare-and-set on the primary before each tag write stays).
    _, images = copy_plan(
        primary,
        secondary,
        plan,
        leases=leases,
        recheck=False,
        parallelism=parallelism,
        on_copied=on_copied,
    )
    # Images not pushed, then images skipped (a PermanentFailure when no retry helps).
    errors = RunOutcome(images=images, skipped=plan.skipped).errors_by_tag()
    return {event_id: errors.get(tag) for tag, ids in tags.items() for event_id in ids}


def _mirror_deletes(
    primary: RegistryClient,
    secondary: RegistryClient,
    repository: Repository,
    deleted: dict[Digest, list[str]],
    leases: Leases,
    budget: DeleteBudget,
    *,
    concurrency: int,
) -> dict[str, str | None]:
    outcomes: dict[str, str | None] = {}
    for digest, ids in deleted.items():
        try:
            if primary.head_manifest(repository, digest) is not None:
                outcomes.update({i: None for i in ids})  # a blob delete, or pushed again
                continue
        except Exception as exc:  # noqa: BLE001 - this digest's events' outcome
            outcomes.update({i: describe(exc) for i in ids})
            continue
        results = mirror_manifest_delete(
            primary,
            secondary,
            repository,
            digest,
            leases=leases,
            budget=budget,
            concurrency=concurrency,
        )
        failed = next((p.error for p in RunOutcome(pruned=results).problems()), None)
        outcomes.update({i: failed for i in ids})
    return outcomes
