"""skopeo, the independent checker: what a manifest's exact bytes are, as skopeo reads them.

``LOGIN`` is the user the tests' token service knows (``tests/conftest.py``'s ``token_service``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from replication_harness.registry import LocalRegistry

LOGIN = ("skopeo", "skopeo-password")


def skopeo_raw(registry: LocalRegistry, repository: str, tag: str) -> bytes:
    """``skopeo inspect --raw`` of ``repository:tag`` on a local registry."""
    address = registry.url.removeprefix("http://")
    return subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"--creds={':'.join(LOGIN)}",
            f"docker://{address}/{repository}:{tag}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout


def skopeo_blob(
    registry: LocalRegistry, repository: str, tag: str, digest: str, directory: Path
) -> bytes:
    """One blob of ``repository:tag`` as ``skopeo copy`` to a ``dir:`` fetched it (skopeo
    checks every blob against its digest on the way)."""
    address = registry.url.removeprefix("http://")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            f"--src-creds={':'.join(LOGIN)}",
            f"docker://{address}/{repository}:{tag}",
            f"dir:{directory}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (directory / digest.split(":", 1)[1]).read_bytes()
