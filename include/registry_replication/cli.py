"""``registry-replication``: the replication engine from a shell, for operators and benchmarks.

Registries are given as connection definitions, exactly as Airflow reads them: a JSON object
or URI, or the name of an ``AIRFLOW_CONN_<ID>`` variable (default ``registry_primary`` and
``registry_secondary``)::

    export AIRFLOW_CONN_REGISTRY_PRIMARY='{"conn_type": "oci_registry", "host": "https://...",
        "extra": {"auth": "jwt", "private_key_path": "/etc/gitlab/registry.key"}}'
    registry-replication plan
    registry-replication sync --include 'group/*' --dry-run
    registry-replication verify
    registry-replication store upgrade   # the replication store's schema, to this version's
    registry-replication store prune     # its history older than 30 days (--days)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from registry_replication.outcomes import VerifyLevel
from registry_replication.transport.reference import InvalidReference, Repository


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from registry_replication import commands  # the engine, only once there is work

    return commands.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry-replication",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("plan", "show what a sync would copy (changes nothing)"),
        ("sync", "make the secondary an exact replica of the primary"),
        ("verify", "compare per-repository checksums of both sides"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--primary",
            default="registry_primary",
            help="connection JSON/URI, or AIRFLOW_CONN_ id (default: %(default)s)",
        )
        p.add_argument(
            "--secondary",
            action="append",
            help="AIRFLOW_CONN_ id, NAME=connection JSON/URI, or connection JSON/URI (default: "
            "registry_secondary); sync takes several, each its own site, the primary read once",
        )
        p.add_argument("--include", action="append", help="repository glob to include (repeatable)")
        p.add_argument("--exclude", action="append", help="repository glob to exclude (repeatable)")
        p.add_argument("--tags", help="regular expression a tag must fully match")
        p.add_argument(
            "--repository",
            action="append",
            type=_repository,
            help="list only this repository instead of the catalog (repeatable)",
        )
        p.add_argument("--concurrency", type=int, default=16, help="listing requests in flight")
        p.add_argument("--parallelism", type=int, default=8, help="blob transfers in flight")
        p.add_argument(
            "--chunk-size-mib",
            type=int,
            default=0,
            help="blobs above this size upload in resumable chunks (default 128)",
        )
        p.add_argument("--dry-run", action="store_true", help="plan and report only")
        p.add_argument("--no-prune", action="store_true", help="keep tags the primary deleted")
        p.add_argument(
            "--force-prune", action="store_true", help="prune past the mass-deletion guard"
        )
        p.add_argument(
            "--max-prune-fraction",
            type=float,
            default=0.5,
            help="refuse to prune more than this share of the secondary's tags",
        )
        if name != "verify":  # verify always lists both sides
            p.add_argument(
                "--full-verify",
                action="store_true",
                help="list the secondary even if its record is recent enough (default: "
                "every full_verify_hours, 24)",
            )
        if name == "sync":
            p.add_argument(
                "--verify",
                choices=["auto", *VerifyLevel],
                default="auto",
                help="tags: tag lists; blobs: every tag's manifests and blobs exist "
                "with their sizes; content: and each blob hashes to its digest "
                "(default auto: blobs every --deep-verify-days, else tags)",
            )
            p.add_argument(
                "--deep-verify-days",
                type=float,
                default=None,
                help="days between blobs verifications under --verify auto (default: "
                "the deep_verify_days setting, 7)",
            )
            p.add_argument(
                "--content-verify-fraction",
                type=float,
                default=1.0,
                help="share of the blobs a content verification reads back; the "
                "share rotates over runs (default %(default)s)",
            )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("-v", "--verbose", action="store_true")
    store = sub.add_parser("store", help="the replication store (event queue, state, history)")
    store.add_argument(
        "action",
        choices=["upgrade", "prune"],
        help="upgrade: migrate the schema to this version's (Alembic); prune: "
        "delete the history older than --days",
    )
    store.add_argument(
        "--days",
        type=float,
        help="prune: the history retention in days (default: "
        "$REGISTRY_REPLICATION_HISTORY_RETENTION_DAYS, else 30)",
    )
    store.add_argument(
        "--url",
        help="the store's SQLAlchemy URL (default: "
        "$REGISTRY_REPLICATION_DB_URL, else SQLite in $AIRFLOW_HOME)",
    )
    store.add_argument("-v", "--verbose", action="store_true")
    return parser


def _repository(text: str) -> Repository:
    """A ``--repository`` typed where it enters: a bad name is refused before any request."""
    try:
        return Repository(text)
    except InvalidReference as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
