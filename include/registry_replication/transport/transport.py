"""The HTTP layer under ``RegistryClient``: one registry's requests and the ``Request`` value
object.

One ``Transport`` per registry, shared by a thread pool: one urllib3 pool manager
(``wire.py``) carries every request (blob redirects to storage and the token service
included), authentication is an ``Auth`` (``auth.py``, ``tokens.py``: the header for a
request's scopes; on a 401 the challenge, a token refresh and one re-send), every request is
bounded in time and its answer in size (``bounded.read_body``), runs under the registry's
retry policy (``retry.py``: connection errors, 5xx and 429, one policy per operation) and goes
only where the registry's URL confinement allows (``confinement.py``: the configured registry,
or a public storage backend for a blob download, without credentials). Request bodies are bytes
or a ``Body`` that can be read again, so any ``Request`` can be sent again. Every failure
surfaces as a typed ``RegistryError`` (``responses.py`` reads a refusal).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3

from registry_replication.transport import wire
from registry_replication.transport.auth import Auth, BasicAuth, Challenge, scopes_for
from registry_replication.transport.bounded import read_body
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.confinement import Confinement
from registry_replication.transport.errors import RegistryAuthError, where
from registry_replication.transport.responses import (
    connection_error,
    registry_error,
    storage_error,
)
from registry_replication.transport.retry import RetryPolicy
from registry_replication.transport.tokens import JwtAuth, TokenAuth
from registry_replication.transport.wire import Response

MAX_REDIRECTS = 5


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

    @classmethod
    def at(
        cls, method: str, repository: str, kind: str, reference: str, operation: str, **fields: Any
    ) -> Request:
        """``<method> /v2/<repository>/<kind>/<reference>`` (the other fields: ``fields``)."""
        return cls(
            method,
            f"/v2/{repository}/{kind}/{reference}",
            operation,
            repository,
            reference,
            **fields,
        )


class Transport:
    """One registry's HTTP: read-only unless ``writable`` (the primary is never written)."""

    def __init__(
        self, config: RegistryConfig, *, writable: bool = False, auth: Auth | None = None
    ) -> None:
        self.config = config
        self.url = config.url
        self.writable = writable
        # Every request to this registry, its storage and its token service: pooled, no
        # retries (``retry_policy`` retries: it logs, honours a capped Retry-After and sends
        # replayable bodies again), no redirects (``_attempt`` confines them).
        self.pool = wire.pool_manager(config)
        self.confinement = Confinement(config)
        self._auth = auth  # None: built from the config on first use
        self._auth_lock = threading.Lock()
        # Every request (``send``) and every step of a blob upload (``upload.upload_blob``)
        # runs under it, never one inside another.
        self.retry_policy = RetryPolicy(config)

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
                    **where(self.url, "ping"),
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
                    **where(self.url, "sign token"),
                    advice="private_key_path must name the registry's PEM private key (GitLab: "
                    "gitlab-registry.key) and certificate_path its PEM certificate",
                ) from None
        if kind == "token":
            auth = TokenAuth(self.pool, cfg)
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
        download to: no credentials), under the retry policy (``RetryPolicy.run``: one try inside
        an operation a policy already retries, such as a blob upload's step). Errors are typed,
        with advice.

        Unless ``stream``, the answer's body is read here, within the bound ``body_bound``
        names (``config.Bounds``; an error answer's within ``max_error_bytes``)."""
        if urlsplit(request.path).scheme:  # a URL the registry handed back, already checked
            url = request.path
        else:
            url = f"{self.url}/{request.path.lstrip('/')}"
        if not request.storage:
            url = self.confinement.own_url(url, request.operation, request.repository, "URL")
        if request.method not in ("GET", "HEAD") and not self.writable:
            raise PermissionError(
                f"refusing to {request.method} {request.repository or urlsplit(url).path} on "
                f"{self.url}: this client is read-only (the primary is never written to)"
            )
        # Built before the first request (the probe that builds it is not authenticated).
        auth = self.auth if request.authenticate and not request.storage else None
        return self.retry_policy.run(partial(self._attempt, request, url, auth))

    def _attempt(self, request: Request, url: str, auth: Auth | None) -> Response:
        """One try; redirects are followed here, only within the registry."""
        redirects, ok = 0, request.ok
        while True:
            try:
                response = self._exchange(request, url, auth)
                if not request.stream or response.status not in ok:
                    bound = request.body_bound if response.status in ok else "max_error_bytes"
                    response.content = read_body(
                        response,
                        getattr(self.config.bounds, bound),
                        bound,
                        **where(self.url, request.operation, request.repository, request.reference),
                        status=response.status,
                    )
                    response.close()  # read: the connection goes back to the pool
            except urllib3.exceptions.HTTPError as exc:
                raise connection_error(
                    exc, self.url, request.operation, request.repository, request.reference
                ) from None
            if response.status in ok:
                return response
            if (
                response.redirect
                and request.allow_redirects
                and request.method in ("GET", "HEAD")
                and redirects < MAX_REDIRECTS
            ):
                location = urljoin(response.url, response.headers["Location"])
                response.close()
                url = self.confinement.own_url(
                    location, request.operation, request.repository, "redirect"
                )
                redirects += 1
                continue
            if request.storage:
                raise storage_error(response, self.url, request)
            # ``self._auth``, not ``self.auth``: this may be the probe that builds it.
            raise registry_error(
                response, self.url, request, self.config.bounds.max_json_depth, self._auth
            )

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
            Challenge.parse(response.headers.get("WWW-Authenticate")), scopes, fresh=fresh
        ):
            return response
        response.close()  # unread: a 401's body tells nothing, and could be of any size
        value, _ = auth.authorization(scopes)
        if value:
            headers["Authorization"] = value
        return wire.send(self.pool, request.method, url, headers, request.data)

    def close(self) -> None:
        self.pool.clear()


def _detect_auth(challenge: Challenge | None, config: RegistryConfig) -> str:
    if challenge is None:
        return "anonymous"
    if challenge.scheme == "basic":
        return "basic"
    return "jwt" if config.private_key else "token"
