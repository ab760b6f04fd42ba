"""Bearer tokens: Geo-style self-minted JWTs (``JwtAuth``) and the token flow against a token
service (``TokenAuth``), both ``auth.Auth``s, sharing a cache of tokens by scope.

``JwtAuth`` is how a GitLab Geo secondary reads its primary: it holds a copy of the registry's
key pair and signs its own short-lived, minimal-scope RS256 tokens, exactly as GitLab's
``/jwt/auth`` would issue them. ``TokenAuth`` is the standard challenge flow against a token
service (Docker Hub, Harbor, GitLab.com).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import urlencode, urlsplit

import jwt
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from registry_replication.transport import secrets, wire
from registry_replication.transport.auth import Auth, Challenge
from registry_replication.transport.bounded import read_body
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import (
    RETRY_STATUSES,
    RegistryAuthError,
    RegistryUnavailableError,
)

# A token the service says lasts longer is renewed after this all the same.
MAX_TOKEN_LIFE_SECONDS = 86400.0
# Renew a cached token when less than this share of its lifetime is left.
_RENEW_FRACTION = 0.2


def libtrust_key_id(public_key: PublicKeyTypes) -> str:
    """The key id distribution 2.x and GitLab put in ``kid``.

    SHA-256 of the DER public key, first 240 bits, base32 without padding, in groups of 4
    joined by ``:`` (docker/libtrust ``keyIDFromCryptoKey``).
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


class _TokenCache:
    """Bearer tokens per scope set, renewed before they expire. Thread safe.

    Expired tokens are evicted: a run asks for one scope set per repository, so a long-lived
    client would otherwise hold every token it ever had. The sweep runs when the cache has
    doubled since the last one (amortised constant time per token).
    """

    _MIN_SWEEP = 64

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, ...], tuple[str, float, float]] = {}
        self._lock = threading.Lock()
        self._sweep_at = self._MIN_SWEEP

    def get(self, key: tuple[str, ...]) -> str | None:
        with self._lock:
            entry = self._tokens.get(key)
        if entry is None:
            return None
        token, issued, expires = entry
        if self._clock() > expires - (expires - issued) * _RENEW_FRACTION:
            return None
        return token

    def put(self, key: tuple[str, ...], token: str, issued: float, expires: float) -> None:
        # Not handed to the log masker: a run mints one short-lived token per repository, and
        # Airflow's masker recompiles its pattern for every secret added (quadratic in tokens).
        # Tokens stay out of logs by construction: only Authorization headers carry them.
        with self._lock:
            self._tokens[key] = (token, issued, expires)
            if len(self._tokens) >= self._sweep_at:
                now = self._clock()
                self._tokens = {k: v for k, v in self._tokens.items() if v[2] > now}
                self._sweep_at = max(self._MIN_SWEEP, 2 * len(self._tokens))

    def drop(self, key: tuple[str, ...]) -> None:
        with self._lock:
            self._tokens.pop(key, None)


class _BearerAuth(Auth):
    """Bearer tokens per scope set, from a cache (``_cache``) or obtained anew (``_obtain``)."""

    _cache: _TokenCache

    def authorization(self, scopes: Sequence[str]) -> tuple[str | None, bool]:
        key = tuple(scopes)
        token = self._cache.get(key)
        if token is not None:
            return f"Bearer {token}", False
        return f"Bearer {self._obtain(key)}", True

    def _obtain(self, key: tuple[str, ...]) -> str:
        raise NotImplementedError


class JwtAuth(_BearerAuth):
    """Mints RS256 registry tokens with the registry's own key pair (GitLab Geo's way)."""

    kind = "jwt"

    def __init__(
        self,
        private_key_pem: str | bytes,
        *,
        service: str,
        issuer: str = "gitlab-issuer",
        ttl_seconds: int = 300,
        certificate_pem: str | bytes | None = None,
        subject: str = "registry-replication",
        clock: Callable[[], float] = time.time,
    ) -> None:
        secrets.mask(private_key_pem)
        pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        self._key = serialization.load_pem_private_key(pem, password=None)
        self.key_id = libtrust_key_id(self._key.public_key())
        self.service = service
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds
        self.subject = subject
        self._clock = clock
        self._x5c: list[str] | None = None
        if certificate_pem:
            cert_bytes = (
                certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            )
            cert = x509.load_pem_x509_certificate(cert_bytes)
            self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self._cache = _TokenCache(clock)

    def mint(self, scopes: Sequence[str]) -> str:
        now = int(self._clock())
        claims = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.service,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            "access": [_access_claim(scope) for scope in scopes],
        }
        headers: dict[str, object] = {"kid": self.key_id}
        if self._x5c:
            headers["x5c"] = self._x5c
        token = jwt.encode(claims, self._key, algorithm="RS256", headers=headers)
        self._cache.put(tuple(scopes), token, now, now + self.ttl_seconds)
        return token

    def _obtain(self, key: tuple[str, ...]) -> str:
        return self.mint(key)

    def refresh(self, challenge: Challenge | None, scopes: Sequence[str], *, fresh: bool) -> bool:
        self._cache.drop(tuple(scopes))
        # A cached token may have expired at the registry (clocks, a long pause): mint once more.
        # One minted for this request would be refused the same way.
        return not fresh and not (challenge and challenge.error == "insufficient_scope")

    def _lacks(self, wanted: str) -> str:
        return f"the token was valid but lacks the needed action ({wanted})"

    def _refused(self, sent: str | None) -> str:
        if sent and sent.startswith("Bearer "):
            claims = jwt.decode(sent[7:], options={"verify_signature": False})
            if claims.get("exp", 0) <= time.time():
                return (
                    "the token had expired when the registry checked it: check this machine's "
                    "clock against the registry's, and token_ttl_seconds"
                )
        return (
            f"the token signed with key id {self.key_id} was refused: the registry's "
            "auth.token.rootcertbundle must hold this key's certificate, and its issuer "
            f"({self.issuer!r}) and service ({self.service!r}) must match the registry's config"
        )

    def __repr__(self) -> str:
        return f"JwtAuth(key_id={self.key_id!r}, issuer={self.issuer!r}, service={self.service!r})"


class TokenAuth(_BearerAuth):
    """The Bearer challenge flow: ask the realm named by the registry's challenge for a token."""

    kind = "token"

    def __init__(
        self,
        pool: urllib3.PoolManager,
        config: RegistryConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``pool``: the registry's (``wire.pool_manager``: its proxy, TLS and timeouts);
        ``config``: the registry's connection: its URL (an https registry accepts only an https
        realm), login and password, ``token_realm_hosts`` (when set, the only hosts, ``host``
        or ``host:port``, a realm may be on) and the bound ``max_token_bytes`` on the token
        service's answer."""
        secrets.mask(config.password)
        self._pool = pool
        self.login = config.login
        self._password = config.password
        self.registry = config.url
        self.realm_hosts = frozenset(
            h.strip().lower() for h in config.token_realm_hosts if h.strip()
        )
        self._max_answer_bytes = config.bounds.max_token_bytes
        self._clock = clock
        self._realm: str | None = None
        self._service: str | None = None
        self._cache = _TokenCache(clock)
        self._lock = threading.Lock()

    def authorization(self, scopes: Sequence[str]) -> tuple[str | None, bool]:
        if self._realm is None:
            return None, False  # the first request earns the challenge that names the realm
        return super().authorization(scopes)

    def refresh(self, challenge: Challenge | None, scopes: Sequence[str], *, fresh: bool) -> bool:
        if challenge is None or challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        if challenge.error == "insufficient_scope" or (fresh and self._realm):
            return False  # the token service's answer would not change
        realm = challenge.params["realm"]
        self._check_realm(realm)
        with self._lock:
            self._realm = realm
            self._service = challenge.params.get("service")
        self._cache.drop(tuple(scopes))
        return True

    def _check_realm(self, realm: str) -> None:
        """Refuse a realm our login must not go to: another scheme than an https registry's,
        or a host outside ``token_realm_hosts``. The challenge comes from whatever answers at
        the registry's address, so it alone must not decide where the password goes."""
        parts = urlsplit(realm)
        try:
            port = parts.port
        except ValueError:
            port = None
        host = (parts.hostname or "").lower()
        where = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
        if parts.scheme not in ("http", "https") or not host:
            why = "it is not an http(s) URL"
        elif urlsplit(self.registry).scheme == "https" and parts.scheme != "https":
            why = "the registry is https and the realm is not: the login would cross in clear"
        elif self.realm_hosts and not {host, f"{host}:{port}"} & self.realm_hosts:
            why = (
                f"its host is not in the connection's token_realm_hosts "
                f"({', '.join(sorted(self.realm_hosts))})"
            )
        else:
            return
        raise RegistryAuthError(
            f"refused to send login {self.login!r} to the token realm {where!r}: {why}; "
            "nothing was sent there",
            registry=self.registry,
            operation="get token",
            code="UNAUTHORIZED",
            advice=f"if {host or 'that host'} is your token service, add it to the connection "
            "extra token_realm_hosts (and use https for an https registry); otherwise check the "
            "registry's auth.token.realm and any proxy in front of the registry",
        )

    def _obtain(self, key: tuple[str, ...]) -> str:
        """A token from the realm; every failure is a typed error naming the realm."""
        params: list[tuple[str, str]] = [("scope", s) for s in key]
        if self._service:
            params.append(("service", self._service))
        realm = self._realm or ""
        failure = dict(registry=realm, operation="get token", code="UNAUTHORIZED")
        query = urlencode(params)
        url = f"{realm}{'&' if urlsplit(realm).query else '?'}{query}" if query else realm
        headers = {"User-Agent": wire.USER_AGENT}
        if self.login:
            headers.update(urllib3.make_headers(basic_auth=f"{self.login}:{self._password or ''}"))
        try:
            response = wire.send(self._pool, "GET", url, headers)
            answer = read_body(
                response,
                self._max_answer_bytes,
                "max_token_bytes",
                registry=realm,
                operation="get token",
            )
        except urllib3.exceptions.HTTPError as exc:
            raise RegistryUnavailableError(
                f"no answer from the token service ({type(exc).__name__})",
                registry=realm,
                operation="get token",
                advice="check that the token service named by the registry's challenge (its "
                "auth.token.realm) is running and reachable from here; the request is retried",
            ) from None
        if response.status in RETRY_STATUSES:
            raise RegistryUnavailableError(
                f"the token service answered {response.status}",
                registry=realm,
                operation="get token",
                status=response.status,
            )
        if response.status != 200:
            raise RegistryAuthError(
                f"the token service refused login {self.login!r}",
                status=response.status,
                advice="check the connection's login and password (or access token) against the "
                "token service",
                **failure,
            )
        token, expires_in = None, 60.0
        try:
            body = json.loads(answer)
            token = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or 60)
        except Exception:  # noqa: BLE001 - an answer of any other shape holds no token
            token = None
        if not 0 < expires_in <= MAX_TOKEN_LIFE_SECONDS:  # NaN, inf, negative: the default
            expires_in = 60.0
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(
                "the token service's answer holds no token",
                status=response.status,
                advice="check that the registry's auth.token.realm points at a token service "
                "(GitLab: /jwt/auth)",
                **failure,
            )
        issued = self._clock()
        self._cache.put(key, token, issued, issued + expires_in)
        return token

    def _lacks(self, wanted: str) -> str:
        return f"the token service did not grant {wanted} to login {self.login!r}"

    def _refused(self, sent: str | None) -> str:
        return f"the registry refused the token issued to login {self.login!r}"

    def __repr__(self) -> str:
        return f"TokenAuth(login={self.login!r})"


def _access_claim(scope: str) -> dict[str, object]:
    # Names cannot contain ':', so the first and last fields are type and actions.
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": kind, "name": name, "actions": actions.split(",")}
