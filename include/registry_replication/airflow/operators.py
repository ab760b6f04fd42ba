"""``ReplicateImagesOperator``: replicate the image a pipeline just pushed, then deploy from the
secondary.

A build DAG pushes ``group/app:1.4`` to the primary, then::

    ReplicateImagesOperator(task_id="replicate", repositories=["group/app"],
                            tags=["{{ params.version }}"])

and its deploy task pulls from a secondary, knowing the tag is there and complete. The work is
the ad-hoc sync's (``registry_sync``), in one task, for every configured secondary (or those
named by ``secondaries``): the connections from ``[registry_replication] primary_conn_id`` /
``secondary_conn_ids``, each secondary's ``Leases``, the plans, the ``Copier`` with its
compare-and-set before each tag write, and the verification.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from airflow.sdk import BaseOperator

from registry_replication.airflow.deployment import adopt_legacy, refuse_unshared_state
from registry_replication.airflow.hooks import OciRegistryHook
from registry_replication.airflow.settings import (
    PARSED,
    ReplicationFailed,
)
from registry_replication.engine.leases import Leases
from registry_replication.engine.sites import Site
from registry_replication.engine.sync import SyncOptions, SyncReport, run_sync_many
from registry_replication.outcomes import Scope
from registry_replication.settings import current
from registry_replication.store import Store


class ReplicateImagesOperator(BaseOperator):
    """Replicate ``tags`` (default: every tag) of ``repositories`` to the secondaries, and
    verify: the primary read once for all of them (``run_sync_many``).

    Returns the counts of what it did, summed over the secondaries (XCom); fails naming each
    ``secondary: repository:tag`` that is not on a secondary afterwards, with the registry's
    error and what to do. Tags are never pruned here.

    :param repositories: a repository or a list of them (templated).
    :param tags: a tag or a list of tags to replicate; None: every tag (templated).
    :param primary_conn_id: the primary's ``oci_registry`` connection (default: the
        ``[registry_replication] primary_conn_id`` setting).
    :param secondaries: the secondaries' connections, a subset of the configured ones (default:
        every configured secondary; templated).
    :param secondary_conn_id: one secondary's connection, any (``secondaries``' one-item alias).
    :param parallelism: blob transfers (and batches of tag writes) in flight.
    """

    template_fields: Sequence[str] = ("repositories", "tags", "secondaries")
    ui_color = "#d9ecf7"

    def __init__(
        self,
        *,
        repositories: str | list[str],
        tags: str | list[str] | None = None,
        primary_conn_id: str = PARSED.primary_conn_id,
        secondaries: str | list[str] | None = None,
        secondary_conn_id: str | None = None,
        parallelism: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.repositories = repositories
        self.tags = tags
        self.primary_conn_id = primary_conn_id
        self.secondaries = secondaries
        self.secondary_conn_id = secondary_conn_id
        self.parallelism = parallelism

    def execute(self, context: Any) -> dict[str, int]:
        refuse_unshared_state()  # its leases live in the store every writer must share
        adopt_legacy()
        repositories, tags = _names(self.repositories), _names(self.tags)
        if not repositories:
            raise ValueError("ReplicateImagesOperator needs at least one repository")
        # The tags exactly as named (escaped: a tag such as 1.4 is not a pattern).
        scope = Scope.of(tags="|".join(map(re.escape, tags)) if tags else None)
        options = SyncOptions(
            scope=scope, repositories=repositories, prune=False, parallelism=self.parallelism
        )
        names = self._secondaries()
        primary = OciRegistryHook(self.primary_conn_id).get_conn()
        with ExitStack() as held:
            sites = [
                Site.writing(
                    OciRegistryHook(name, writable=True).get_conn(),
                    held.enter_context(Leases(Store(), name)),
                )
                for name in names
            ]
            many = run_sync_many(primary, sites, options)
        counts: Counter[str] = Counter()
        problems = [f"{name}: {exc}" for name, exc in many.errors.items()]
        for name, report in many.reports.items():
            self.log.info(
                "replicated %s (tags %s) to %s: %s",
                ", ".join(repositories),
                ", ".join(tags) or "all",
                name,
                report.counts(),
            )
            counts.update(report.counts())
            problems += [f"{name}: {line}" for line in _problems(report, repositories, tags)]
        if problems:
            self.log.error("not replicated:\n%s", "\n".join(problems))
            raise ReplicationFailed("; ".join(problems))
        return dict(counts)

    def _secondaries(self) -> list[str]:
        """The secondaries this task serves: ``secondaries`` (each one configured), else
        ``secondary_conn_id``, else every configured one."""
        configured = current().secondaries
        names = _names(self.secondaries)
        if unknown := [name for name in names if name not in configured]:
            raise ValueError(
                f"ReplicateImagesOperator: {', '.join(unknown)} is not a configured secondary "
                f"(secondary_conn_ids: {', '.join(configured)})"
            )
        if names:
            return names
        return [self.secondary_conn_id] if self.secondary_conn_id else list(configured)


def _names(value: str | list[str] | None) -> list[str]:
    """One name, a list, or a rendered template of either (comma or space separated)."""
    if value is None:
        return []
    items = re.split(r"[,\s]+", value) if isinstance(value, str) else value
    return [str(item).strip() for item in items if str(item).strip()]


def _problems(report: SyncReport, repositories: list[str], tags: list[str]) -> list[str]:
    """Each requested ``repository:tag`` that is not replicated, and why: the run's problems
    (``SyncReport.outcome``), each requested tag the primary does not have, and, if nothing
    else failed, a secondary that still differs after the copy."""
    problems = report.outcome().lines()
    listed = set(zip(report.primary.tags["repository"], report.primary.tags["tag"]))
    problems += [
        f"{repository}:{tag} is not on the primary (check the tag the build pushed)"
        for repository in repositories
        for tag in tags
        if (repository, tag) not in listed
    ]
    if (
        not problems
        and report.verification is not None
        and not report.verification["in_sync"].all()
    ):
        differ = report.verification.loc[~report.verification["in_sync"], "repository"]
        problems.append(
            f"the secondary differs from the primary after the copy in "
            f"{', '.join(differ)}; rerun (a push may have landed meanwhile)"
        )
    return problems
