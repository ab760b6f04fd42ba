"""skopeo, the independent checker: what a manifest's exact bytes are, as skopeo reads them.

``LOGIN`` is the user the tests' token service knows (``tests/conftest.py``'s ``token_service``).
"""

from __future__ import annotations

import subprocess

from replication_harness.registry import LocalRegistry

LOGIN = ("skopeo", "skopeo-password")


def skopeo_raw(registry: LocalRegistry, repository: str, tag: str) -> bytes:
    """``skopeo inspect --raw`` of ``repository:tag`` on a local registry."""
    address = registry.url.removeprefix("http://")
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"--creds={':'.join(LOGIN)}",
         f"docker://{address}/{repository}:{tag}"],
        check=True, capture_output=True, timeout=60,
    ).stdout
