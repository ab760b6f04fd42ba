"""``registry-replication sync`` in a process of its own, the way an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def sync_env(store_url: str, **variables: str) -> dict[str, str]:
    """This process's environment with the replication store at ``store_url``, and more."""
    return {**os.environ, "REGISTRY_REPLICATION_DB_URL": store_url, **variables}


def connection_args(primary: dict[str, Any], secondary: dict[str, Any] | str) -> list[str]:
    """``--primary`` and ``--secondary`` as connection JSON, the way every command takes them;
    a secondary given as a string is its connection id (``AIRFLOW_CONN_<ID>``)."""
    named = secondary if isinstance(secondary, str) else json.dumps(secondary)
    return ["--primary", json.dumps(primary), "--secondary", named]


def sync_command(primary: dict[str, Any], secondary: dict[str, Any] | str, *args: str) -> list[str]:
    """The command line of a sync from the ``primary`` to the ``secondary`` connection."""
    return [
        sys.executable,
        "-m",
        "registry_replication.cli",
        "sync",
        *connection_args(primary, secondary),
        *args,
    ]


def start_sync(
    primary: dict[str, Any], secondary: dict[str, Any] | str, *args: str, env: dict[str, str]
) -> subprocess.Popen[str]:
    """A sync left running (a test can hold or kill it); its stderr goes to its stdout."""
    return subprocess.Popen(
        sync_command(primary, secondary, *args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_sync_cli(
    primary: dict[str, Any], secondary: dict[str, Any], *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A sync run to its end (two minutes at the most), its output captured."""
    return subprocess.run(
        sync_command(primary, secondary, *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def named_secondaries(connections: dict[str, dict[str, Any]]) -> list[str]:
    """Several secondaries for ``sync --secondary``, each ``NAME=<connection JSON>``."""
    return [f"{name}={json.dumps(connection)}" for name, connection in connections.items()]
