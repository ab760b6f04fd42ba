"""The wire under ``Transport``: one registry's urllib3 pool manager (pool size, TLS
verification, the environment's proxy, timeouts) and ``Response``, what every request returns.

urllib3 directly, not ``requests``: a request's CPU is what a full sync spends most of on a
small machine, and half of it went to preparing, hooking and adapting a ``requests`` call. The
pool manager neither retries nor follows redirects (``Transport`` does both, its own way) and
reads the environment once, when the client is made.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import certifi
import urllib3
from urllib3.response import BaseHTTPResponse

from registry_replication.transport.config import RegistryConfig

USER_AGENT = "registry-replication/0.1"
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))


class Response:
    """One answer: its status, headers (case-insensitive), the method and URL it answers, the
    ``Authorization`` sent with it (a refusal explains it), and its body: ``content`` once
    read within a bound (``bounded.read_body``), else streamed (``stream``)."""

    __slots__ = ("raw", "status", "headers", "method", "url", "authorization", "content")

    def __init__(
        self, raw: BaseHTTPResponse, method: str, url: str, authorization: str | None = None
    ) -> None:
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers
        self.method = method
        self.url = url
        self.authorization = authorization
        self.content = b""

    @property
    def redirect(self) -> bool:
        return self.status in REDIRECT_STATUSES and "Location" in self.headers

    def stream(self, chunk_size: int) -> Iterator[bytes]:
        """The body's bytes as they arrive (decoded, as the server encoded them)."""
        return self.raw.stream(chunk_size)

    def close(self) -> None:
        """Hand the connection back to the pool: reused when nothing of the body is left to
        read (read whole, or none: a HEAD, a 304), closed first otherwise (the rest would be
        read as the next answer)."""
        raw = self.raw
        if raw.length_remaining == 0:
            raw.drain_conn()
        elif not raw.closed:
            raw.close()
        raw.release_conn()


def pool_manager(config: RegistryConfig) -> urllib3.PoolManager:
    """The pool every request to ``config``'s registry goes through (storage redirects and its
    token service included): ``max_connections`` per host, verified against the configured CA
    bundle (``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` or certifi's, as requests would), through
    the proxy the environment names for the registry."""
    timeout = urllib3.Timeout(
        connect=min(10.0, config.timeout_seconds), read=config.timeout_seconds
    )
    verify = (
        config.verify
        if config.verify is not True
        else os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
    tls: dict[str, str] = {"cert_reqs": "CERT_NONE" if verify is False else "CERT_REQUIRED"}
    if verify is not False:
        bundle = certifi.where() if verify is True else str(verify)
        tls["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
    proxy = environ_proxy(config.url)
    if proxy is None:
        return urllib3.PoolManager(
            num_pools=4,
            maxsize=config.max_connections,
            block=False,
            retries=False,
            timeout=timeout,
            **tls,
        )
    parts = urlsplit(proxy)
    credentials = (
        f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        if parts.username is not None
        else None
    )
    return urllib3.ProxyManager(
        proxy,
        num_pools=4,
        maxsize=config.max_connections,
        block=False,
        retries=False,
        timeout=timeout,
        proxy_headers=urllib3.make_headers(proxy_basic_auth=credentials),
        **tls,
    )


def environ_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``<scheme>_proxy``, else ``all_proxy``),
    None when there is none or ``no_proxy`` covers its host."""
    parts = urlsplit(url)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None
    return proxy


def send(
    pool: urllib3.PoolManager,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: object = None,
) -> Response:
    """One request, its answer unread (the caller reads it within a bound or streams it).
    Connection failures raise urllib3's ``HTTPError``s."""
    raw = pool.urlopen(
        method, url, headers=headers, body=body, redirect=False, preload_content=False
    )
    return Response(raw, method, url, headers.get("Authorization"))
