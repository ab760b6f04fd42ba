"""URL confinement: where one registry's requests may go.

Credentials go only to the configured registry: every URL it requests, including those the
registry hands back (``Link``, upload ``Location``, redirects), must have the configured scheme,
host and port (``Confinement.own_url``). The one exception is a blob download redirected to a
storage backend (``Confinement.storage_url``), which is fetched without credentials (no
``~/.netrc`` is read; the environment's proxy for the registry is read once, when the client is
made), and only from a public address unless the connection allows private ones
(``allow_private_redirects``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit

from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import RegistryError, where
from registry_replication.transport.wire import Response

DEFAULT_PORTS = {"http": 80, "https": 443}
# What parsers read differently in a URL: backslashes, whitespace, control characters.
_UNSAFE_IN_URL = re.compile(r"[\\\s\x00-\x1f]")


class Confinement:
    """The URLs one registry's requests may go to: its own, and public storage for blobs."""

    def __init__(self, config: RegistryConfig) -> None:
        self.url = config.url
        self.allow_private_redirects = config.allow_private_redirects
        # URLs under this prefix are on the registry: ``own_url``'s cheap test.
        self._origin = (
            f"{self.url.partition('://')[0]}://{urlsplit(self.url).netloc}/"
            if _same_origin(self.url, self.url)
            else "\0"
        )

    def own_url(self, url: str, operation: str, repository: str | None, source: str) -> str:
        """``url`` if it has the configured scheme, host and port; else a ``RegistryError``.

        Credentials go with every request to the registry, so a URL the registry hands back
        (its ``source``: a ``Link``, a ``Location``, a redirect) must not lead anywhere else
        (``http:http://other-host/x``, ``//other-host``, userinfo, backslashes that parsers
        read differently).
        """
        if (
            url.startswith(self._origin)
            and not _UNSAFE_IN_URL.search(url)
            or _same_origin(url, self.url)
        ):
            return url
        parts = urlsplit(url.replace("\\", "/"))
        port = _port(parts)
        elsewhere = f"{parts.scheme}://{parts.hostname or ''}" + (f":{port}" if port else "")
        raise RegistryError(
            f"refused to follow a {source} to {elsewhere!r}: it is not the configured registry, "
            "and requests carry its credentials; nothing was sent there",
            **where(self.url, operation, repository),
            advice="the registry (or a proxy in front of it) sends URLs for another host: set "
            "its http.host to the URL in this connection, or fix the connection's URL",
        )

    def storage_url(self, response: Response, repository: str, digest: str) -> str:
        """Where a blob download's redirect leads: an http(s) URL, and, off the registry's own
        host and port, only a public address unless the connection allows private storage
        (whatever answers at the registry's address must not make us read internal services:
        cloud metadata, admin ports)."""
        location = urljoin(response.url, response.headers["Location"])
        context = {**where(self.url, "get blob", repository, digest), "status": response.status}
        if urlsplit(location).scheme not in DEFAULT_PORTS:
            raise RegistryError(
                "the registry redirected the download to a non-HTTP URL",
                advice="check the registry's storage redirect configuration",
                **context,
            )
        if not self.allow_private_redirects and not _same_origin(location, self.url):
            host = urlsplit(location).hostname or ""
            private = _non_public_address(host)
            if private is not None:
                raise RegistryError(
                    f"refused to follow the storage redirect to {host!r} ({private}, not a "
                    "public address); nothing was sent there",
                    advice="if the registry's storage really is on a private network (MinIO, "
                    "an internal S3), set allow_private_redirects: true in the connection "
                    "extra; otherwise check the registry's storage redirect settings and "
                    "any proxy in front of it",
                    **context,
                )
        return location


def _same_origin(url: str, base: str) -> bool:
    """Same scheme, host and port as ``base``, no userinfo, nothing parsers read differently."""
    if _UNSAFE_IN_URL.search(url):
        return False
    theirs, ours = urlsplit(url), urlsplit(base)
    if theirs.username is not None or theirs.password is not None or not theirs.hostname:
        return False
    port = _port(theirs)
    return (
        theirs.scheme.lower() == ours.scheme.lower()
        and theirs.hostname == ours.hostname
        and port is not None
        and port == _port(ours)
    )


def _non_public_address(host: str) -> str | None:
    """The first address ``host`` is (or resolves to) that is not public (loopback, private,
    link-local, reserved...); None when all are public or it does not resolve (the connection
    then fails on its own)."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if not address.is_global:
            return str(address)
    return None


def _port(parts: Any) -> int | None:
    """The explicit or default port; None when the port is not a valid number."""
    try:
        return parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
