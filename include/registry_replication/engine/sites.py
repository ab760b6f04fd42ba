"""The secondaries one run serves (``Site``), and each of them as a unit of failure: what one
site's work raises is that site's outcome, never another's (ARCHITECTURE.md, "Containment")."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from registry_replication.engine.leases import Leases
from registry_replication.store.record import TagRecord
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.errors import RETRY_STATUSES, RegistryError
from registry_replication.transport.retry import one_try_each

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Site:
    """A secondary one run serves: its name (the connection id its rows are kept under), its
    client, the record of its tags, and the leases its writes hold (None: a run that writes
    nothing, such as ``plan``)."""

    name: str
    client: RegistryClient
    record: TagRecord
    leases: Leases | None = None

    @classmethod
    def writing(cls, client: RegistryClient, leases: Leases) -> Site:
        return cls(leases.secondary, client, TagRecord(leases.store, leases.secondary), leases)

    @property
    def writer(self) -> Leases:
        """The leases every write to this site holds."""
        if self.leases is None:
            raise ValueError(f"{self.name}: a run that writes needs the site's leases")
        return self.leases


def per_site(sites: Sequence[Site], work: Callable[[Site], T]) -> dict[str, T | Exception]:
    """``work`` for every site side by side, each site's outcome by its name."""
    if len(sites) <= 1:  # a lone site in this thread: no pool to pay for
        return {site.name: outcome_of(partial(work, site)) for site in sites}
    with ThreadPoolExecutor(len(sites), thread_name_prefix="site") as pool:
        futures = {site.name: pool.submit(work, site) for site in sites}
        return {name: outcome_of(future.result) for name, future in futures.items()}


def outcome_of(call: Callable[[], T]) -> T | Exception:
    """``call()``, or what it raised."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - one site's failure is that site's outcome
        return exc


def only(outcomes: Mapping[str, T | Exception]) -> T:
    """The one site's outcome; its failure raised."""
    (outcome,) = outcomes.values()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def unreachable(client: RegistryClient) -> str | None:
    """Why a site does not answer one try of ``ping``; None when it answers, or answers with a
    refusal (a wrong credential, a 404: the work that follows fails on it and says so).

    Whatever else the ping raises (a TLS or proxy library's own error, a bug) counts as no
    answer, with its type and message: a check for reaching a site must never be what crashes
    the work of the sites that do answer, nor cost a site's work an attempt."""
    try:
        with one_try_each():
            client.ping()
    except RegistryError as exc:
        if exc.status is None or exc.status in RETRY_STATUSES:
            return exc.without_advice
    except Exception as exc:  # noqa: BLE001 - any failure to answer is an answer here
        # The traceback: a ping that raises what the transport does not wrap may be a bug.
        log.warning(
            "%s: its ping raised %s, taken as unreachable; if this is no network fault, "
            "report the traceback below",
            client.url,
            type(exc).__name__,
            exc_info=True,
        )
        return f"its ping raised {type(exc).__name__}: {exc}"
    return None
