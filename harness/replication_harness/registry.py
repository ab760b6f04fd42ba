"""A real ``docker-registry`` (distribution 2.8) process on a free loopback port."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from replication_harness.keys import KeyPair

REGISTRY_BINARY = "docker-registry"
GITLAB_ISSUER = "gitlab-issuer"
GITLAB_SERVICE = "container_registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def open_client(url: str, *, writable: bool = False, retries: int = 3) -> RegistryClient:
    """A client of an open (no auth) registry at ``url`` (or a proxy in front of one), quick
    to give up: ``retries`` tries, 10 ms apart."""
    config = RegistryConfig.from_connection(
        {
            "conn_type": "oci_registry",
            "host": url,
            "extra": {"auth": "anonymous", "max_retries": retries, "backoff_seconds": 0.01},
        }
    )
    return RegistryClient(config, writable=writable)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate, and kill if it will not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Notifications:
    """A ``notifications.endpoints`` entry, as GitLab's ``registry['notifications']`` writes it."""

    url: str
    secret: str
    name: str = "geo_event"
    timeout: str = "500ms"
    threshold: int = 5
    backoff: str = "1s"
    # What the replicator does not use, as README's example config leaves out: the registry
    # sends each event in its own POST, one after another, so a pull event per HEAD or GET
    # (the replicator's own reads among them) would queue ahead of the next push.
    ignore: dict[str, list[str]] = field(
        default_factory=lambda: {
            "mediatypes": ["application/octet-stream"],
            "actions": ["pull", "mount"],
        }
    )


@dataclass
class LocalRegistry:
    """One registry process with its own storage. Use as a context manager, or start()/stop().

    ``keys`` set: token auth the way GitLab configures it (issuer ``gitlab-issuer``, service
    ``container_registry``, rootcertbundle = the key pair's certificate). ``htpasswd`` set:
    basic auth. Neither: no auth.
    """

    workdir: Path
    keys: KeyPair | None = None
    notifications: Notifications | None = None
    token_realm: str | None = None
    htpasswd: Path | None = None  # basic auth instead of token auth
    name: str = "registry"
    port: int = field(default_factory=free_port)
    # The registry's own Prometheus metrics (``served_bytes``), on its debug listener.
    debug_port: int = field(default_factory=free_port)
    # Kept across restarts, as a real deployment's config keeps it: upload sessions survive.
    http_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"127.0.0.1:{self.port}",
                "secret": self.http_secret,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
                "debug": {
                    "addr": f"127.0.0.1:{self.debug_port}",
                    "prometheus": {"enabled": True, "path": "/metrics"},
                },
            },
            # Like GitLab's: manifests may reference foreign (non-distributable) layers.
            "validation": {"manifests": {"urls": {"allow": ["^https?://"]}}},
        }
        if self.htpasswd:
            config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(self.htpasswd)}}
        elif self.keys:
            config["auth"] = {
                "token": {
                    "realm": self.token_realm or f"http://127.0.0.1:{self.port}/jwt/auth",
                    "service": GITLAB_SERVICE,
                    "issuer": GITLAB_ISSUER,
                    "rootcertbundle": str(self.keys.cert_path),
                }
            }
        if self.notifications:
            n = self.notifications
            config["notifications"] = {
                "endpoints": [
                    {
                        "name": n.name,
                        "url": n.url,
                        "headers": {"Authorization": [n.secret]},
                        "timeout": n.timeout,
                        "threshold": n.threshold,
                        "backoff": n.backoff,
                        **({"ignore": n.ignore} if n.ignore else {}),
                    }
                ]
            }
        return config

    def start(self, timeout: float = 20.0) -> LocalRegistry:
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise RuntimeError(
                "docker-registry is not installed: run scripts/setup (apt-get install docker-registry)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "config.yml"
        config_path.write_text(json.dumps(self.config(), indent=2))  # YAML is a JSON superset
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)
        self.process = None

    def connection(self, **extra: Any) -> dict[str, Any]:
        """This registry as an ``AIRFLOW_CONN_*`` JSON object for the replicator (``jwt`` auth)."""
        if self.keys:
            extra = {
                "auth": "jwt",
                "private_key_path": str(self.keys.key_path),
                "certificate_path": str(self.keys.cert_path),
                **extra,
            }
        else:
            extra = {"auth": "anonymous", **extra}
        return {"conn_type": "oci_registry", "host": self.url, "extra": extra}

    def client_config(self, **extra: Any) -> RegistryConfig:
        return RegistryConfig.from_connection(self.connection(**extra))

    def served_bytes(self, handler: str = "blob") -> int:
        """The bytes of the answers this process has sent (since it started) for ``handler``
        (``blob``: blob downloads; ``manifest``, ``tags``, ...), as the registry itself counts
        them (``registry_http_response_size_bytes``): what a test holds the replicator's own
        reading against."""
        metrics = requests.get(f"http://127.0.0.1:{self.debug_port}/metrics", timeout=10)
        metrics.raise_for_status()
        wanted = f'registry_http_response_size_bytes_sum{{handler="{handler}"}} '
        for line in metrics.text.splitlines():
            if line.startswith(wanted):
                return round(float(line.removeprefix(wanted)))
        return 0

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver stores a blob's bytes (for corrupting one in tests)."""
        algorithm, hex_ = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algorithm / hex_[:2] / hex_ / "data"

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
