"""The HTTP layer under ``RegistryClient``: one registry's requests, the ``Request`` value
object, the retry policy and URL confinement.

One ``Transport`` per registry, shared by a thread pool: one urllib3 pool manager
(``wire.py``) carries every request (blob redirects to storage and the token service
included), authentication is an ``Auth`` (``auth.py``, ``tokens.py``: the header for a
request's scopes; on a 401 the challenge, a token refresh and one re-send), every request is
bounded in time and its answer in size (``bounded.read_body``), and one retry policy
(``Transport.retrying``, tenacity) retries connection errors, 5xx and 429 with exponential
backoff and jitter, honouring a capped ``Retry-After``. One policy owns each operation: the
requests made inside an operation a policy already retries (a blob upload's steps, and the
primary's download that feeds its body) get one try each, so attempts never multiply. Request
bodies are bytes or a ``Body`` that can be read again, so any ``Request`` can be sent again.
Every failure surfaces as a typed ``RegistryError`` (``responses.py`` reads a refusal).

Credentials go only to the configured registry: every URL it requests, including those the
registry hands back (``Link``, upload ``Location``, redirects), must have the configured scheme,
host and port. The one exception is a blob download redirected to a storage backend, which is
fetched without credentials (no ``~/.netrc`` is read; the environment's proxy for the registry
is read once, when the client is made), and only from a public address unless the connection
allows private ones (``allow_private_redirects``).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import urllib3
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from registry_replication.transport import wire
from registry_replication.transport.auth import Auth, BasicAuth, Challenge, scopes_for
from registry_replication.transport.bounded import read_body
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import (
    RegistryAuthError,
    RegistryError,
    RegistryUnavailableError,
)
from registry_replication.transport.responses import (
    connection_error,
    registry_error,
    storage_error,
)
from registry_replication.transport.tokens import JwtAuth, TokenAuth
from registry_replication.transport.wire import Response

log = logging.getLogger(__name__)

MAX_RETRY_SLEEP_SECONDS = 120.0  # the cap on any wait, Retry-After included
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
# What parsers read differently in a URL: backslashes, whitespace, control characters.
_UNSAFE_IN_URL = re.compile(r"[\\\s\x00-\x1f]")

T = TypeVar("T")

# Set while a retry policy runs an operation in this thread (any registry's): the requests
# inside it get one try each and their failures go to that policy, which retries the whole.
# Two policies nested would multiply the attempts (a download retried inside each attempt of
# the upload it feeds) and the time an operator was promised by ``max_retries``.
_retried_by_outer_policy: ContextVar[bool] = ContextVar("retried_by_outer_policy",
                                                        default=False)


@contextmanager
def one_try_each() -> Iterator[None]:
    """Requests made inside get one try each: an outer policy owns their retries."""
    token = _retried_by_outer_policy.set(True)
    try:
        yield
    finally:
        _retried_by_outer_policy.reset(token)


class Body:
    """A request body of known length that can be read again, like Go's ``GetBody``: each read
    calls ``open``, so a retried or re-authenticated request sends it anew, with a
    Content-Length (not chunked)."""

    def __init__(self, open_body: Callable[[], Iterable[bytes]], size: int) -> None:
        self._open = open_body
        self._size = size

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._open())

    def __len__(self) -> int:
        return self._size


@dataclass(frozen=True, slots=True)
class Request:
    """One request to a registry, as the retry policy sends it (again).

    ``path``: under the registry's URL, or a URL the registry handed back (checked again).
    ``operation``, ``repository`` and ``reference`` name it in errors and logs; ``ok`` are the
    statuses that answer it (any other is an error); ``body_bound`` names the ``config.Bounds``
    an ``ok`` answer's body is read within, unless ``stream``. ``authenticate=False``: no
    credentials (the probe). ``storage``: a blob download a registry redirected to its storage
    backend, fetched without credentials and from anywhere public.
    """

    method: str
    path: str
    operation: str
    repository: str | None = None
    reference: str | None = None
    headers: Mapping[str, str] | None = None
    data: bytes | Body | None = None
    stream: bool = False
    ok: Sequence[int] = (200,)
    allow_redirects: bool = True
    authenticate: bool = True
    storage: bool = False
    body_bound: str = "max_error_bytes"


class Transport:
    """One registry's HTTP: read-only unless ``writable`` (the primary is never written)."""

    def __init__(
        self, config: RegistryConfig, *, writable: bool = False, auth: Auth | None = None
    ) -> None:
        self.config = config
        self.url = config.url
        self.writable = writable
        # Every request to this registry, its storage and its token service: pooled, no
        # retries (``retrying`` retries: it logs, honours a capped Retry-After and sends
        # replayable bodies again), no redirects (``_attempt`` confines them).
        self.pool = wire.pool_manager(config)
        # URLs under this prefix are on the registry: ``own_url``'s cheap test.
        self._origin = (f"{self.url.partition('://')[0]}://{urlsplit(self.url).netloc}/"
                        if _same_origin(self.url, self.url) else "\0")
        self._auth = auth  # None: built from the config on first use
        self._auth_lock = threading.Lock()
        # The retry policy, declared once: every request (``send``) and every step of a blob
        # upload (``upload.upload_blob``) runs under a copy of it (``retried``), never one
        # inside another.
        self.retrying = Retrying(
            stop=stop_after_attempt(config.max_retries + 1),
            retry=retry_if_exception_type(RegistryUnavailableError),
            wait=self._backoff,
            before_sleep=self._log_retry,
            reraise=True,
        )

    # -- authentication -----------------------------------------------------------------------

    @property
    def auth(self) -> Auth:
        """This registry's authentication, built from the config (and the registry's challenge)
        on first use."""
        with self._auth_lock:
            if self._auth is None:
                self._auth = self._build_auth()
            return self._auth

    def _build_auth(self) -> Auth:
        cfg = self.config
        kind, challenge = cfg.auth, None
        if kind is None or (kind == "jwt" and not cfg.service):
            challenge = self._probe()
            if kind is None:
                kind = _detect_auth(challenge, cfg)
        if kind == "jwt":
            service = cfg.service or (challenge.params.get("service") if challenge else None)
            if not service:
                raise RegistryAuthError(
                    "cannot tell the token service name",
                    registry=self.url,
                    operation="ping",
                    advice="set 'service' in the connection extra (GitLab: container_registry)",
                )
            try:
                return JwtAuth(
                    cfg.private_key or "",
                    service=service,
                    issuer=cfg.issuer,
                    ttl_seconds=cfg.token_ttl_seconds,
                    certificate_pem=cfg.certificate,
                )
            except ValueError as exc:  # cryptography: not a PEM key or certificate
                raise RegistryAuthError(
                    f"the signing key or certificate cannot be read ({type(exc).__name__})",
                    registry=self.url, operation="sign token",
                    advice="private_key_path must name the registry's PEM private key (GitLab: "
                    "gitlab-registry.key) and certificate_path its PEM certificate",
                ) from None
        if kind == "token":
            auth = TokenAuth(
                self.pool, cfg.login, cfg.password, registry=self.url,
                realm_hosts=cfg.token_realm_hosts, max_answer_bytes=cfg.bounds.max_token_bytes,
            )
            if challenge:
                auth.refresh(challenge, (), fresh=False)
            return auth
        if kind == "basic":
            return BasicAuth(cfg.login or "", cfg.password or "")
        return Auth()

    def _probe(self) -> Challenge | None:
        """``GET /v2/`` without credentials: the challenge tells the auth scheme and service."""
        response = self.send(Request("GET", "/v2/", "ping", authenticate=False, ok=(200, 401)))
        response.close()
        return Challenge.parse(response.headers.get("WWW-Authenticate"))

    # -- requests -----------------------------------------------------------------------------

    def send(self, request: Request) -> Response:
        """``request`` to this registry (or, ``storage``, to the storage backend it redirected a
        download to: no credentials), under the retry policy (``retried``: one try inside an
        operation a policy already retries, such as a blob upload's step). Errors are typed,
        with advice.

        Unless ``stream``, the answer's body is read here, within the bound ``body_bound``
        names (``config.Bounds``; an error answer's within ``max_error_bytes``)."""
        if urlsplit(request.path).scheme:  # a URL the registry handed back, already checked
            url = request.path
        else:
            url = f"{self.url}/{request.path.lstrip('/')}"
        if not request.storage:
            url = self.own_url(url, request.operation, request.repository, "URL")
        if request.method not in ("GET", "HEAD") and not self.writable:
            raise PermissionError(
                f"refusing to {request.method} {request.repository or urlsplit(url).path} on "
                f"{self.url}: this client is read-only (the primary is never written to)"
            )
        # Built before the first request (the probe that builds it is not authenticated).
        auth = self.auth if request.authenticate and not request.storage else None
        return self.retried(partial(self._attempt, request, url, auth))

    def _attempt(self, request: Request, url: str, auth: Auth | None) -> Response:
        """One try; redirects are followed here, only within the registry."""
        redirects, ok = 0, request.ok
        while True:
            try:
                response = self._exchange(request, url, auth)
                if not request.stream or response.status not in ok:
                    bound = request.body_bound if response.status in ok else "max_error_bytes"
                    response.content = read_body(
                        response, getattr(self.config.bounds, bound), bound,
                        registry=self.url, operation=request.operation,
                        repository=request.repository, reference=request.reference,
                        status=response.status)
                    response.close()  # read: the connection goes back to the pool
            except urllib3.exceptions.HTTPError as exc:
                raise connection_error(exc, self.url, request.operation, request.repository,
                                       request.reference) from None
            if response.status in ok:
                return response
            if (response.redirect and request.allow_redirects
                    and request.method in ("GET", "HEAD") and redirects < MAX_REDIRECTS):
                location = urljoin(response.url, response.headers["Location"])
                response.close()
                url = self.own_url(location, request.operation, request.repository, "redirect")
                redirects += 1
                continue
            if request.storage:
                raise storage_error(response, self.url, request)
            # ``self._auth``, not ``self.auth``: this may be the probe that builds it.
            raise registry_error(response, self.url, request, self.config.bounds.max_json_depth,
                                 self._auth)

    def _exchange(self, request: Request, url: str, auth: Auth | None) -> Response:
        """``request`` sent to ``url`` with ``auth``'s header for its scopes; a 401 whose
        challenge lets ``auth`` refresh its token is answered by sending it once more."""
        headers = {"User-Agent": wire.USER_AGENT, **(request.headers or {})}
        if isinstance(request.data, Body):  # urllib3 would send an iterable chunked
            headers["Content-Length"] = str(len(request.data))
        if auth is None:
            return wire.send(self.pool, request.method, url, headers, request.data)
        scopes = scopes_for(request.method, url)
        value, fresh = auth.authorization(scopes)
        if value:
            headers["Authorization"] = value
        response = wire.send(self.pool, request.method, url, headers, request.data)
        if response.status != 401 or not auth.refresh(
                Challenge.parse(response.headers.get("WWW-Authenticate")), scopes, fresh=fresh):
            return response
        response.close()  # unread: a 401's body tells nothing, and could be of any size
        value, _ = auth.authorization(scopes)
        if value:
            headers["Authorization"] = value
        return wire.send(self.pool, request.method, url, headers, request.data)

    # -- the retry policy ---------------------------------------------------------------------

    def retried(self, operation: Callable[[], T], interrupted: str | None = None) -> T:
        """``operation()`` under this registry's retry policy, which then owns every request
        made inside it; inside an operation another policy retries, one try (see
        ``_retried_by_outer_policy``). ``interrupted`` begins each retry's log line."""
        if _retried_by_outer_policy.get():
            return operation()
        with one_try_each():
            # The first try outside tenacity, whose bookkeeping costs a tenth of a HEAD's CPU;
            # its failure is then tenacity's first attempt, so waits, logs and the count of
            # tries are the policy's.
            try:
                return operation()
            except RegistryUnavailableError as exc:
                first: list[BaseException] = [exc]

            def attempt() -> T:
                if first:
                    raise first.pop()
                return operation()

            retrying = (self.retrying.copy(before_sleep=partial(self._log_retry,
                                                                interrupted=interrupted))
                        if interrupted else self.retrying.copy())
            return retrying(attempt)

    def _backoff(self, state: RetryCallState) -> float:
        """The wait before the next try: ``Retry-After`` if the registry sent one, else
        exponential backoff with jitter; capped either way."""
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        delay = (retry_after if retry_after is not None else
                 self.config.backoff_seconds * 2 ** (state.attempt_number - 1)
                 * random.uniform(0.5, 1.0))
        return min(delay, MAX_RETRY_SLEEP_SECONDS)

    def _log_retry(self, state: RetryCallState, interrupted: str | None = None) -> None:
        exc = state.outcome.exception() if state.outcome else None
        what = exc.without_advice if isinstance(exc, RegistryError) else repr(exc)
        if interrupted:
            what = f"{interrupted}: {what}"
        log.warning(
            "%s; retry %d of %d in %.1fs%s", what, state.attempt_number,
            self.config.max_retries, state.upcoming_sleep,
            " (Retry-After)" if getattr(exc, "retry_after", None) is not None else "",
        )

    # -- URL confinement ----------------------------------------------------------------------

    def own_url(self, url: str, operation: str, repository: str | None, source: str) -> str:
        """``url`` if it has the configured scheme, host and port; else a ``RegistryError``.

        Credentials go with every request to the registry, so a URL the registry hands back
        (its ``source``: a ``Link``, a ``Location``, a redirect) must not lead anywhere else
        (``http:http://other-host/x``, ``//other-host``, userinfo, backslashes that parsers
        read differently).
        """
        if (url.startswith(self._origin) and not _UNSAFE_IN_URL.search(url)
                or _same_origin(url, self.url)):
            return url
        parts = urlsplit(url.replace("\\", "/"))
        port = _port(parts)
        elsewhere = f"{parts.scheme}://{parts.hostname or ''}" + (f":{port}" if port else "")
        raise RegistryError(
            f"refused to follow a {source} to {elsewhere!r}: it is not the configured registry, "
            "and requests carry its credentials; nothing was sent there",
            registry=self.url, operation=operation, repository=repository,
            advice="the registry (or a proxy in front of it) sends URLs for another host: set "
            "its http.host to the URL in this connection, or fix the connection's URL",
        )

    def storage_url(self, response: Response, repository: str, digest: str) -> str:
        """Where a blob download's redirect leads: an http(s) URL, and, off the registry's own
        host and port, only a public address unless the connection allows private storage
        (whatever answers at the registry's address must not make us read internal services:
        cloud metadata, admin ports)."""
        location = urljoin(response.url, response.headers["Location"])
        where = dict(registry=self.url, operation="get blob", repository=repository,
                     reference=digest, status=response.status)
        if urlsplit(location).scheme not in DEFAULT_PORTS:
            raise RegistryError("the registry redirected the download to a non-HTTP URL",
                                advice="check the registry's storage redirect configuration",
                                **where)
        if not self.config.allow_private_redirects and not _same_origin(location, self.url):
            host = urlsplit(location).hostname or ""
            private = _non_public_address(host)
            if private is not None:
                raise RegistryError(
                    f"refused to follow the storage redirect to {host!r} ({private}, not a "
                    "public address); nothing was sent there",
                    advice="if the registry's storage really is on a private network (MinIO, "
                    "an internal S3), set allow_private_redirects: true in the connection "
                    "extra; otherwise check the registry's storage redirect settings and "
                    "any proxy in front of it", **where,
                )
        return location

    def close(self) -> None:
        self.pool.clear()


def _detect_auth(challenge: Challenge | None, config: RegistryConfig) -> str:
    if challenge is None:
        return "anonymous"
    if challenge.scheme == "basic":
        return "basic"
    return "jwt" if config.private_key else "token"


# -- URLs ---------------------------------------------------------------------------------------

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
