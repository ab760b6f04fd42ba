"""The secondaries one run serves (``Site``), and each of them as a unit of failure: what one
site's work raises is that site's outcome, never another's (ARCHITECTURE.md, "Containment")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from registry_replication.engine.leases import Leases
from registry_replication.store.record import TagRecord
from registry_replication.transport.client import RegistryClient

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
