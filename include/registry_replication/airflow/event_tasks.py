"""The event path's tasks: one ``replicate_events`` per configured secondary (``drains``) drains
that secondary's deliveries from the queue the webhook fills, replicates each claimed event
through the engine and acknowledges it (``dags/registry_events.py``). A secondary that does not
answer is skipped, its deliveries postponed with no attempt counted, so its outage neither
holds the others back nor dead-letters its backlog, which drains once it answers again."""

from __future__ import annotations

import logging
import time

import pendulum
from airflow.sdk import XComArg, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from registry_replication.airflow import alerts
from registry_replication.airflow.deployment import checked
from registry_replication.airflow.settings import (
    COPY_QUEUE,
    PARSED,
    SHOWN,
    ReplicationFailed,
    registry_client,
)
from registry_replication.engine import realtime, sites
from registry_replication.engine.leases import Leases
from registry_replication.outcomes import PermanentFailure, RepositoryState
from registry_replication.settings import current
from registry_replication.store import Store
from registry_replication.store.queue import Event

log = logging.getLogger(__name__)

# How often a draining replicate_events looks for new events: a cheap count, no write lock.
DRAIN_POLL_SECONDS = 0.2
# A secondary that does not answer: its drain probes it this often while events still arrive,
# its deliveries waiting as long (no attempt counted) ...
DOWN_PROBE_SECONDS = 5.0
# ... and once its drain ends, this long, until a later run's drain probes it again.
PROBE_SECONDS = 30.0


def drains(max_attempts: int) -> list[XComArg]:
    """A ``replicate_events`` per configured secondary, each draining only its deliveries (one
    secondary: the task ``replicate_events``, as before there were several; else
    ``replicate_events_<conn id>``)."""
    secondaries = current().secondaries
    return [
        replicate_events.override(
            task_id="replicate_events" if len(secondaries) == 1 else f"replicate_events_{s}"
        )(s, max_attempts=max_attempts)
        for s in secondaries
    ]


# No task retries: events retry through the store's backoff, and a task retry would find the
# dead-lettered events gone and turn the run green (no failure alert).
@task(queue=COPY_QUEUE, pool=PARSED.copy_pool, retries=0)
@checked
def replicate_events(secondary: str, max_attempts: int = 10) -> dict[str, int]:
    """Claim ``secondary``'s waiting deliveries, replicate their events to it, and acknowledge
    each once its tag is complete there.

    Then keep draining: claim and replicate whatever arrives next, until no event has come for
    ``[registry_replication] event_drain_idle_seconds`` (default 60), so a burst of pushes skips
    the scheduler's and the task start-up's seconds. Events marked failed (their image cannot
    be replicated, they ran out of attempts, or they kept losing their worker) do not stop the
    drain: the run fails once it ends, naming them, and the failure alert fires.

    Before each claim, ``secondary`` is pinged once. While it does not answer, its deliveries
    wait with no attempt counted, and the drain probes it every ``DOWN_PROBE_SECONDS`` for as
    long as events still arrive: a site back within the run drains its backlog in seconds. Once
    none has come for the idle time with the site still down, its deliveries wait
    ``PROBE_SECONDS`` for a later run and the task is skipped.
    """
    configured = current()
    store = Store()
    primary = registry_client(PARSED.primary_conn_id)
    client = registry_client(secondary, writable=True)
    totals = {"claimed": 0, "done": 0, "retrying": 0, "batches": 0}
    started = last_work = time.monotonic()
    with Leases(store, secondary) as leases:
        # Renewed from the start: events are claimed under this writer's identity, so its
        # heartbeat keeps the claims alive while the work goes on, and a killed task's events
        # come back within the lease time.
        leases.keep_alive()
        failed: list[str] = []  # events marked failed, as repository:tag
        unreachable: str | None = None
        down_since: float | None = None
        waiting = 0
        while True:
            failed += _dead_letter_lost(store, secondary, max_attempts)
            unreachable = sites.unreachable(client)
            if unreachable:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "%s does not answer (%s): its deliveries wait, no attempt counted; "
                        "probing it every %.0fs while events still arrive",
                        secondary,
                        unreachable,
                        DOWN_PROBE_SECONDS,
                    )
                # While pushes still come (each one a delivery for every secondary), the drains
                # of the sites that answer are busy with them: this one stays too, probing, so
                # that a site back within the run drains its backlog in seconds, not at the
                # next run (which starts only once every drain of this one has ended).
                arrived = store.queue.postpone(
                    secondary, pendulum.now("UTC").add(seconds=DOWN_PROBE_SECONDS)
                )
                if arrived > waiting:
                    last_work = time.monotonic()
                waiting = arrived
                now = time.monotonic()
                if (
                    now - last_work >= configured.event_drain_idle_seconds
                    or now - started >= configured.event_drain_max_seconds
                ):
                    until = pendulum.now("UTC").add(seconds=PROBE_SECONDS)
                    store.queue.postpone(secondary, until)
                    break
                time.sleep(DOWN_PROBE_SECONDS)
                continue
            if down_since is not None:
                log.info(
                    "%s answers again after %.0fs: draining its %d waiting deliveries",
                    secondary,
                    time.monotonic() - down_since,
                    waiting,
                )
                down_since, unreachable = None, None
                # Its deliveries come due within DOWN_PROBE_SECONDS: the wait below claims them.
                last_work = time.monotonic()
            owner, claimed = store.queue.claim(
                secondary, lease_seconds=leases.ttl, owner=leases.owner, max_attempts=max_attempts
            )
            if claimed:
                log.info(
                    "claimed %d events: %s",
                    len(claimed),
                    ", ".join(
                        f"{e.action} {e.repository}:{e.tag or e.digest}" for e in claimed[:20]
                    ),
                )
                copied: list[int] = []
                try:
                    outcomes = realtime.replicate_events(
                        primary,
                        client,
                        claimed,
                        leases=leases,
                        repositories_at_once=configured.event_repositories_at_once,
                        on_copied=copied.append,
                        max_prune_fraction=configured.max_prune_fraction,
                    )
                finally:
                    if sum(copied):
                        alerts.record_copied_bytes(get_current_context(), secondary, sum(copied))
                counts, given_up = _acknowledge(
                    store, secondary, owner, claimed, outcomes, max_attempts
                )
                failed += given_up
                totals = {k: totals[k] + counts.get(k, 0) for k in totals}
                totals["batches"] += 1
                last_work = time.monotonic()
            now = time.monotonic()
            if now - started >= configured.event_drain_max_seconds:
                log.info(
                    "drained for %.0fs (event_drain_max_seconds): ending; the next run carries on",
                    now - started,
                )
                break
            if not _wait_for_events(
                store, secondary, last_work + configured.event_drain_idle_seconds
            ):
                break
    if not totals["batches"]:
        log.info("no events to process (another run took them, or they are backing off)")
    else:
        log.info(
            "drained %d events in %d batches; none came for %.0fs",
            totals["claimed"],
            totals["batches"],
            configured.event_drain_idle_seconds,
        )
    if failed:
        raise ReplicationFailed(
            f"{len(failed)} events are marked failed (their image cannot be replicated, they "
            f"failed {max_attempts} times, or their worker was lost {max_attempts} times; the "
            "log above says which): "
            + ", ".join(failed[:SHOWN])
            + (f" and {len(failed) - SHOWN} more" if len(failed) > SHOWN else "")
        )
    if unreachable:
        raise AirflowSkipException(
            f"{secondary} is unreachable ({unreachable}): its {waiting} waiting deliveries keep "
            f"their attempts; the next probe is after {until:%H:%M:%S} UTC"
        )
    return totals


def _dead_letter_lost(store: Store, secondary: str, max_attempts: int) -> list[str]:
    lost = store.queue.dead_letter_lost(secondary, max_attempts)
    for event in lost:
        log.error(
            "event %s (%s %s:%s) is marked failed: %s",
            event.id,
            event.action,
            event.repository,
            event.tag or event.digest,
            event.error,
        )
    return [f"{e.repository}:{e.tag or e.digest}" for e in lost]


def _wait_for_events(store: Store, secondary: str, until: float) -> bool:
    """Poll the store (a count, cheap) until ``secondary`` has deliveries to claim or ``until``
    passes."""
    while True:
        if store.queue.ready_counts([secondary])[secondary]:
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(min(DRAIN_POLL_SECONDS, max(until - time.monotonic(), 0)))


def _acknowledge(
    store: Store,
    secondary: str,
    owner: str,
    claimed: list[Event],
    outcomes: dict[str, str | None],
    max_attempts: int,
) -> tuple[dict[str, int], list[str]]:
    """Mark each event done, failed (no retry can help) or back off; record each
    repository's state on ``secondary``. Returns the counts and the events marked failed."""
    done = [event_id for event_id, error in outcomes.items() if error is None]
    store.queue.complete(secondary, owner, done)
    acknowledged = set(done)
    alerts.send_latencies(
        store.history.record_acknowledged(secondary, (e for e in claimed if e.id in acknowledged)),
        secondary,
    )
    failed: dict[str, list[str]] = {}
    for event_id, error in outcomes.items():
        if error is not None:
            failed.setdefault(error, []).append(event_id)
    given_up: list[str] = []
    for error, ids in failed.items():
        if isinstance(error, PermanentFailure):
            log.error("events %s are marked failed (no retry can help): %s", ", ".join(ids), error)
            store.queue.fail(secondary, owner, ids, error)
            given_up += ids
            continue
        log.error("events %s will be retried: %s", ", ".join(ids), error)
        given_up += store.queue.retry_later(secondary, owner, ids, error, max_attempts=max_attempts)
    by_id = {e.id: e for e in claimed}
    repository_error = {e.repository: None for e in claimed}
    for error, ids in reversed(failed.items()):  # the first error per repository wins
        repository_error.update({by_id[i].repository: error for i in ids})
    now = pendulum.now("UTC")
    store.state.set_repository_state(
        secondary,
        [
            {
                "repository": repo,
                "state": RepositoryState.FAILED if error else RepositoryState.SYNCED,
                "last_sync_at": now,
                "last_error": error,
            }
            for repo, error in sorted(repository_error.items())
        ],
    )
    alerts.send_stats(store)
    counts = {
        "claimed": len(claimed),
        "done": len(done),
        "retrying": len(outcomes) - len(done) - len(given_up),
    }
    return counts, [f"{by_id[i].repository}:{by_id[i].tag or by_id[i].digest}" for i in given_up]
