"""Registry connection settings, read from Airflow-style connection definitions.

The same definition serves Airflow (a Connection of type ``oci_registry``), the CLI and the
tests: the JSON form of ``AIRFLOW_CONN_<ID>``::

    {"conn_type": "oci_registry", "host": "https://registry.example.com", "login": "...",
     "password": "...", "extra": {"auth": "jwt", "private_key_path": "/etc/gitlab/registry.key"}}

or its URI form ``oci-registry://login:password@host:port/https?auth=jwt&...``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

AUTH_KINDS = ("jwt", "token", "basic", "anonymous")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


# A leaked token is usable until it expires: an hour at most (GitLab's default is 5 minutes).
MAX_TOKEN_TTL_SECONDS = 3600


class ConfigError(ValueError):
    """A connection definition that cannot describe a registry."""


@dataclass(frozen=True)
class Bounds:
    """Bounds on what a registry sends, each a connection extra of the same name.

    The defaults are far beyond any real image (distribution itself refuses to accept a
    manifest over 4 MiB), so only a broken or hostile object meets one, and then it fails
    alone, named with the bound (``errors.LimitExceeded``): one pushed object never stops the
    replication of the others.
    """

    max_manifest_bytes: int = 4 << 20  # distribution's own limit on a pushed manifest
    max_listing_bytes: int = 64 << 20  # one catalog page or tag list (2.8's is one page)
    max_error_bytes: int = 64 << 10  # an error answer's body
    max_token_bytes: int = 64 << 10  # a token service's answer
    max_json_depth: int = 64  # nesting of any JSON document; real manifests nest 4 or 5 deep
    max_listing_pages: int = 100_000  # pages of one catalog or tag listing
    max_index_depth: int = 8  # index in index in ...; real ones nest 1 or 2 deep
    max_index_children: int = 4096  # manifests one index lists
    max_manifests_per_image: int = 10_000  # distinct manifests in one image's tree
    max_descriptors: int = 100_000  # layers (and config) of one image manifest
    image_plan_seconds: float = 600.0  # wall-clock budget to read one image's manifests

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> Bounds:
        values = {}
        for name, f in cls.__dataclass_fields__.items():
            if name in extra:
                raw = extra[name]
                try:  # bool is an int to Python, and float("nan") and "inf" parse
                    number = float(raw) if not isinstance(raw, bool) else math.nan
                except (TypeError, ValueError):
                    number = math.nan
                whole = f.type != "float"
                if not (math.isfinite(number) and number > 0) or whole and not number.is_integer():
                    raise ConfigError(
                        f"{name} must be a positive {'whole ' if whole else ''}"
                        f"number, not {str(raw)[:40]!r}"
                    )
                values[name] = int(number) if whole else number
        return cls(**values)


@dataclass
class RegistryConfig:
    url: str
    auth: str | None = None  # None: detect from the /v2/ challenge
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)  # PEM
    certificate: str | None = None  # PEM; sent as x5c
    issuer: str = "gitlab-issuer"
    service: str | None = None  # None: from the challenge
    token_ttl_seconds: int = 300
    verify: bool | str = True
    max_connections: int = 16
    timeout_seconds: float = 60.0
    max_retries: int = 5
    backoff_seconds: float = 0.5
    max_bytes_per_second: int | None = None  # blob bytes read from this registry; None: no limit
    # The only hosts a token realm may be on (the login goes there); empty: any host.
    token_realm_hosts: tuple[str, ...] = ()
    # Follow blob redirects off the registry's host:port to non-public addresses (MinIO on a
    # private network); off by default, so a redirect cannot reach internal services.
    allow_private_redirects: bool = False
    bounds: Bounds = field(default_factory=Bounds)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        parts = urlsplit(self.url)
        if "@" in parts.netloc:
            # Checked first, and the URL never quoted: it holds a password.
            host = parts.netloc.rpartition("@")[2]
            raise ConfigError(
                f"the registry URL for {host!r} holds a login or password (user:password@host): "
                "put them in the connection's login and password fields and keep the URL to "
                "scheme://host[:port]"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"registry URL {self.url!r} must look like https://host[:port]")
        if self.auth is not None and self.auth not in AUTH_KINDS:
            raise ConfigError(f"auth {self.auth!r} is not one of {', '.join(AUTH_KINDS)}")
        if self.auth == "jwt" and not self.private_key:
            raise ConfigError("auth 'jwt' needs private_key or private_key_path in the extra")
        if self.token_ttl_seconds <= 0 or self.max_connections <= 0:
            raise ConfigError("token_ttl_seconds and max_connections must be positive")
        if self.token_ttl_seconds > MAX_TOKEN_TTL_SECONDS:
            raise ConfigError(
                f"token_ttl_seconds {self.token_ttl_seconds} is above {MAX_TOKEN_TTL_SECONDS}: "
                "a minted token is a bearer credential, keep it short-lived (GitLab uses 300)"
            )
        if self.max_bytes_per_second is not None and self.max_bytes_per_second <= 0:
            raise ConfigError("max_bytes_per_second must be a positive number of bytes")

    @classmethod
    def from_connection(cls, definition: str | Mapping[str, Any]) -> RegistryConfig:
        """From an ``AIRFLOW_CONN_*`` value (JSON or URI) or its parsed JSON object."""
        if isinstance(definition, str):
            text = definition.strip()
            definition = json.loads(text) if text.startswith("{") else _parse_uri(text)
        fields = dict(definition)
        extra = fields.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra.strip() else {}
        return cls.from_fields(
            host=fields.get("host") or "",
            port=fields.get("port"),
            schema=fields.get("schema"),
            login=fields.get("login"),
            password=fields.get("password"),
            extra=extra,
        )

    @classmethod
    def from_fields(
        cls,
        *,
        host: str,
        port: int | str | None = None,
        schema: str | None = None,
        login: str | None = None,
        password: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> RegistryConfig:
        """From the fields of an Airflow Connection (host, port, schema, login, password, extra)."""
        extra = dict(extra or {})
        if not host:
            raise ConfigError("the connection has no host (the registry base URL)")
        url = host if "://" in host else f"{schema or 'https'}://{host}"
        if port and not urlsplit(url).port:
            url = f"{url.rstrip('/')}:{port}"
        private_key = extra.pop("private_key", None) or _read(extra.pop("private_key_path", None))
        certificate = extra.pop("certificate", None) or _read(extra.pop("certificate_path", None))
        known = {f for f in cls.__dataclass_fields__} - {
            "url",
            "login",
            "password",
            "bounds",
        } | set(Bounds.__dataclass_fields__)
        unknown = set(extra) - known
        if unknown:
            raise ConfigError(f"unknown connection extra keys: {', '.join(sorted(unknown))}")
        return cls(
            url=url,
            login=login or None,
            password=password or None,
            private_key=private_key,
            certificate=certificate,
            auth=extra.get("auth"),
            issuer=extra.get("issuer", "gitlab-issuer"),
            service=extra.get("service"),
            token_ttl_seconds=int(extra.get("token_ttl_seconds", 300)),
            verify=_verify(extra.get("verify", True)),
            max_connections=int(extra.get("max_connections", 16)),
            timeout_seconds=float(extra.get("timeout_seconds", 60.0)),
            max_retries=int(extra.get("max_retries", 5)),
            backoff_seconds=float(extra.get("backoff_seconds", 0.5)),
            max_bytes_per_second=(
                int(extra["max_bytes_per_second"]) if extra.get("max_bytes_per_second") else None
            ),
            token_realm_hosts=_hosts(extra.get("token_realm_hosts")),
            allow_private_redirects=_flag(
                extra.get("allow_private_redirects", False), "allow_private_redirects"
            ),
            bounds=Bounds.from_extra(extra),
        )

    @classmethod
    def from_env(cls, conn_id: str) -> RegistryConfig:
        """From ``AIRFLOW_CONN_<CONN_ID>``, the way Airflow reads connections from the environment."""
        name = f"AIRFLOW_CONN_{conn_id.upper()}"
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"{name} is not set")
        return cls.from_connection(value)


def _read(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _hosts(value: Any) -> tuple[str, ...]:
    """A list of hosts, or one string of them separated by commas."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(h, str) for h in items):
        raise ConfigError("token_realm_hosts must be a list of hosts or a comma-separated string")
    return tuple(h.strip().lower() for h in items if h.strip())


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ConfigError(f"{name} must be true or false, not {str(value)[:20]!r}")


def _verify(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    return text  # a CA bundle path


def _parse_uri(uri: str) -> dict[str, Any]:
    parts = urlsplit(uri)
    schema = parts.path.strip("/") or None
    return {
        "conn_type": parts.scheme.replace("-", "_"),
        "host": parts.hostname,
        "port": parts.port,
        "schema": schema,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "extra": dict(parse_qsl(parts.query)),
    }
