"""What each ``registry-replication`` command does, once ``cli`` has parsed its arguments.

Apart from the parser so that ``--help`` (and a mistyped flag) answers without importing the
engine (pandas, SQLAlchemy, requests).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

import pandas as pd

from registry_replication.engine import diff as diffs
from registry_replication.engine.leases import Leases
from registry_replication.engine.plan import Plan
from registry_replication.engine.sites import Site
from registry_replication.engine.snapshot import problem_line
from registry_replication.engine.sync import (
    SyncOptions,
    SyncReport,
    planned,
    run_sync_many,
    snapshots,
)
from registry_replication.outcomes import Scope, Snapshot
from registry_replication.run_outcome import RunOutcome
from registry_replication.settings import SECONDARY_ID, current
from registry_replication.store import Store
from registry_replication.store.record import TagRecord
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import ConfigError, RegistryConfig
from registry_replication.transport.errors import RegistryError

log = logging.getLogger("registry_replication")


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; returns the exit code."""
    if args.command == "store":
        if args.action == "prune":
            return _store_prune(args.url, args.days)
        return _store_upgrade(args.url)
    try:
        primary = RegistryClient(_config(args.primary))
        secondaries = _secondaries(args.secondary or ["registry_secondary"], args.command)
        options = SyncOptions(
            scope=Scope.of(args.include, args.exclude, args.tags),
            repositories=args.repository or None,
            dry_run=args.command != "sync" or args.dry_run,
            prune=not args.no_prune,
            force_prune=args.force_prune,
            max_prune_fraction=args.max_prune_fraction,
            concurrency=args.concurrency,
            parallelism=args.parallelism,
            chunk_size=args.chunk_size_mib << 20 if args.chunk_size_mib else None,
            full_verify=getattr(args, "full_verify", False),
            **(
                {
                    "verify": args.verify,
                    "content_verify_fraction": args.content_verify_fraction,
                    "deep_verify_days": args.deep_verify_days,
                }
                if args.command == "sync"
                else {}
            ),
        )
        if args.command != "verify":  # verify lists both sides and reads no secondary's rows
            _adopt_legacy(secondaries)
        if args.command == "sync":
            return _sync(primary, secondaries, options, args)
        ((name, secondary),) = secondaries.items()
        if args.command == "plan":
            return _plan(primary, name, secondary, options, args)
        return _verify(primary, secondary, options, args)
    except (ConfigError, RegistryError, ValueError) as exc:
        log.error("%s", exc)
        return 2


def _plan(primary, name: str, secondary, options: SyncOptions, args) -> int:
    report = planned(primary, secondary, options, TagRecord(Store(), name))
    plan = report.plan
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    print(report.run_kind.line())
    _print("tags per repository", diffs.summary(report.differences))
    _print_problems(report.primary, report.secondary)
    print(
        f"\n{len(plan.images)} images to push, {len(plan.blobs)} blobs "
        f"({plan.transfer_bytes / (1 << 20):.1f} MiB to transfer), {len(plan.skipped)} skipped"
    )
    _print_skipped(plan)
    return 0


def _print_skipped(plan: Plan) -> None:
    for line in RunOutcome(skipped=plan.skipped).lines():
        print(line)


def _sync(primary, secondaries: dict[str, RegistryClient], options: SyncOptions, args) -> int:
    store = Store()
    with ExitStack() as stack:
        sites = [
            Site.writing(client, stack.enter_context(Leases(store, name)))
            for name, client in secondaries.items()
        ]
        run = run_sync_many(primary, sites, options)
    if len(sites) == 1 and run.errors:  # one secondary: its failure is the command's, as ever
        raise next(iter(run.errors.values()))
    if args.json:
        reports = {name: _sync_json(report) for name, report in run.reports.items()}
        reports |= {name: {"failed": True, "error": str(exc)} for name, exc in run.errors.items()}
        print(
            json.dumps(
                {
                    **(
                        reports[sites[0].name]
                        if len(sites) == 1
                        else {"secondaries": reports, "failed": run.failed}
                    ),
                    "bytes_read_from_primary": primary.bytes_read,
                    "blob_bytes_read_from_primary": run.primary_bytes,
                },
                indent=2,
            )
        )
    else:
        for name, report in run.reports.items():
            if len(sites) > 1:
                print(f"\n== secondary {name} ==")
            _print_sync(report)
        for name, exc in run.errors.items():
            print(f"\n== secondary {name} ==\nnot served this run: {exc}")
        seconds = max((r.seconds for r in run.reports.values()), default=0.0)
        print(
            f"done in {seconds:.1f}s, {primary.bytes_read / (1 << 20):.1f} MiB read from the "
            "primary" + (f" for {len(sites)} secondaries" if len(sites) > 1 else "")
        )
    return 1 if run.failed else 0


def _sync_json(report: SyncReport) -> dict[str, Any]:
    outcome = report.outcome()
    return {
        "counts": outcome.counts(),
        "seconds": report.seconds,
        "run": {"kind": report.run_kind.kind, "reason": report.run_kind.reason},
        "problems": report.primary.problems + report.secondary.problems,
        "verification": report.verification_line(),
        "failed": outcome.failed,
        "failures": outcome.lines(),
        "findings": [asdict(f) for f in (report.deep.findings if report.deep else [])],
        "skipped": [asdict(s) for s in report.plan.skipped],
    }


def _print_sync(report: SyncReport) -> None:
    outcome = report.outcome()
    print(report.run_kind.line())
    if outcome.failed_blobs:
        _print(
            "failed blobs",
            pd.DataFrame(outcome.failed_blobs)[
                ["repository", "digest", "size", "status", "code", "error"]
            ],
        )
    _print("summary", pd.Series(outcome.counts(), name="count").to_frame())
    _print_problems(report.primary, report.secondary)
    _print_skipped(report.plan)
    if report.prune_refused:
        print(f"\nprune refused: {report.prune_refused}")
    if report.deep is not None:
        print(f"\n{report.deep.line()}")
        for finding in report.deep.findings:
            print(f"  {finding.line()}")
    print(f"\n{report.verification_line()}")


def _verify(primary, secondary, options: SyncOptions, args) -> int:
    source, target = snapshots(primary, secondary, options)
    report = diffs.verify(source, target)
    differ = report[~report["in_sync"]]
    if args.json:
        print(report.to_json(orient="records", indent=2))
    else:
        _print(
            "repositories whose checksums differ" if len(differ) else "all repositories in sync",
            differ if len(differ) else report,
        )
        _print_problems(source, target)
    return 1 if len(differ) or not source.complete or not target.complete else 0


def _store_upgrade(url: str | None) -> int:
    """Bring the replication store's schema to this version (also done on first use)."""
    from registry_replication.store import engine, migrate

    target = engine.create(url or engine.default_url())
    try:
        was = migrate.upgrade(target)
    finally:
        target.dispose()
    head = migrate.head()
    print(
        f"replication store at {target.url!r}: "
        + (f"already at revision {head}" if was == head else f"upgraded from {was} to {head}")
    )
    return 0


def _store_prune(url: str | None, days: float | None) -> int:
    """Delete the store's history older than ``days`` (what the DAGs' reports do hourly)."""
    import datetime as dt

    from registry_replication.store import retention

    days = current().history_retention_days if days is None else days
    store = Store(url)
    try:
        pruned = retention.prune(store.engine, dt.timedelta(days=days))
    except ValueError as exc:
        log.error("%s: nothing was pruned. What to do: give --days 1 or more", exc)
        return 2
    print(
        f"replication store at {store.engine.url!r}: removed {pruned.line()} older than "
        f"{days:g} days (each DAG's latest run and outcome, and unfinished events, stay)"
    )
    return 0


def _print_problems(*listings: Snapshot) -> None:
    """Repositories and tags that could not be handled, each with what to do."""
    for listing in listings:
        if listing.problems:
            print(f"\ncannot replicate from {listing.registry} (every other repository was):")
            for found in listing.problems:
                print(f"  {problem_line(found)}")


def _config(definition: str) -> RegistryConfig:
    if _given_whole(definition):
        return RegistryConfig.from_connection(definition)
    return RegistryConfig.from_env(definition)


def _given_whole(definition: str) -> bool:
    """A connection given as its JSON or URI rather than by its id."""
    return definition.lstrip().startswith("{") or "://" in definition


def _secondaries(definitions: Sequence[str], command: str) -> dict[str, RegistryClient]:
    """Each ``--secondary`` by its name in the store (its rows, its leases shared with the
    DAGs): a connection id; ``NAME=`` and a connection's JSON or URI; or, alone and with one
    secondary configured, a connection given whole, named as that secondary.
    ``plan`` and ``verify`` take one."""
    if command != "sync" and len(definitions) > 1:
        raise ValueError(f"{command} takes one --secondary; sync takes several")
    found: dict[str, RegistryClient] = {}
    for definition in definitions:
        name, named, whole = definition.partition("=")
        if named and SECONDARY_ID.fullmatch(name) and _given_whole(whole):
            config = RegistryConfig.from_connection(whole)
        elif _given_whole(definition):
            configured = current().secondaries
            if len(definitions) > 1 or len(configured) > 1:
                # Its rows would be another secondary's: the name must say whose they are.
                raise ValueError(
                    "name each connection given whole when there are several secondaries "
                    f"({', '.join(configured)}): --secondary NAME='{{...}}'"
                )
            name, config = configured[0], RegistryConfig.from_connection(definition)
        elif SECONDARY_ID.fullmatch(definition):
            name, config = definition, RegistryConfig.from_env(definition)
        else:
            raise ValueError(
                f"--secondary {definition!r} is not a secondary's connection id (1 to 100 "
                "letters, digits, _ or -), NAME= and a connection's JSON or URI, nor one alone"
            )
        if name in found:
            raise ValueError(f"--secondary {name} is given twice")
        found[name] = RegistryClient(config, writable=command == "sync")
    return found


def _adopt_legacy(secondaries: dict[str, RegistryClient]) -> None:
    """The store's rows from before several secondaries go to one of the configured ones
    (``store.secondaries``), judged by the URLs of those this shell can resolve (the given
    secondaries' among them)."""

    def url_of(conn_id: str) -> str | None:
        if conn_id in secondaries:
            return secondaries[conn_id].url
        try:
            return RegistryConfig.from_env(conn_id).url
        except ConfigError:
            return None

    settings = current()
    Store().secondaries.adopt_legacy(settings.secondaries, url_of, settings.secondary_conn_id)


def _print(title: str, frame: pd.DataFrame) -> None:
    print(f"\n{title}:")
    print(frame.to_string() if len(frame) else "(none)")
