"""Registry authentication: Geo-style self-minted JWTs, the Bearer token flow, basic, anonymous.

``JwtAuth`` is how a GitLab Geo secondary reads its primary: it holds a copy of the registry's
key pair and signs its own short-lived, minimal-scope RS256 tokens, exactly as GitLab's
``/jwt/auth`` would issue them. ``TokenAuth`` is the standard challenge flow against a token
service (Docker Hub, Harbor, GitLab.com).
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from registry_replication import secrets

CATALOG_SCOPE = "registry:catalog:*"
# Renew a cached token when less than this share of its lifetime is left.
_RENEW_FRACTION = 0.2


def repository_scope(repository: str, actions: str) -> str:
    """``repository:<name>:<actions>``, actions being ``pull`` or ``pull,push``."""
    return f"repository:{repository}:{actions}"


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str | None) -> Challenge | None:
        if not header:
            return None
        scheme, _, rest = header.strip().partition(" ")
        params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
        return cls(scheme.lower(), params)

    @property
    def error(self) -> str | None:
        return self.params.get("error")


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


class Auth:
    """Produces the ``Authorization`` header for a request needing ``scopes``."""

    kind = "anonymous"

    def header(self, scopes: Sequence[str]) -> str | None:
        return None

    def refresh(self, challenge: Challenge | None, scopes: Sequence[str]) -> bool:
        """Called on a 401; True when retrying the request may now succeed."""
        return False

    def explain_refusal(
        self, challenge: Challenge | None, scopes: Sequence[str], sent: str | None = None
    ) -> str:
        """Why the registry refused us (``sent`` = the Authorization header sent), for errors."""
        if challenge and challenge.error == "insufficient_scope":
            return f"the credentials do not grant {' '.join(scopes)}"
        return "the registry requires authentication; set auth and credentials on the connection"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BasicAuth(Auth):
    kind = "basic"

    def __init__(self, login: str, password: str) -> None:
        secrets.mask(password)
        raw = f"{login}:{password}".encode()
        self._header = "Basic " + base64.b64encode(raw).decode()
        secrets.mask(self._header)
        self.login = login

    def header(self, scopes: Sequence[str]) -> str | None:
        return self._header

    def explain_refusal(
        self, challenge: Challenge | None, scopes: Sequence[str], sent: str | None = None
    ) -> str:
        return f"login {self.login!r} was refused; check the connection's login and password"

    def __repr__(self) -> str:
        return f"BasicAuth(login={self.login!r})"


class _TokenCache:
    """Bearer tokens per scope set, renewed before they expire. Thread safe."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, ...], tuple[str, float, float]] = {}
        self._lock = threading.Lock()

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

    def drop(self, key: tuple[str, ...]) -> None:
        with self._lock:
            self._tokens.pop(key, None)


class JwtAuth(Auth):
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

    def header(self, scopes: Sequence[str]) -> str | None:
        key = tuple(scopes)
        token = self._cache.get(key) or self.mint(key)
        return f"Bearer {token}"

    def refresh(self, challenge: Challenge | None, scopes: Sequence[str]) -> bool:
        self._cache.drop(tuple(scopes))
        return False  # a fresh token from the same key would be refused the same way

    def explain_refusal(
        self, challenge: Challenge | None, scopes: Sequence[str], sent: str | None = None
    ) -> str:
        wanted = " ".join(scopes)
        if challenge and challenge.error == "insufficient_scope":
            return f"the token was valid but lacks the needed action ({wanted})"
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


class TokenAuth(Auth):
    """The Bearer challenge flow: ask the realm named by the registry's challenge for a token."""

    kind = "token"

    def __init__(
        self,
        session: requests.Session,
        login: str | None = None,
        password: str | None = None,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        secrets.mask(password)
        self._session = session
        self.login = login
        self._password = password
        self._timeout = timeout
        self._clock = clock
        self._realm: str | None = None
        self._service: str | None = None
        self._cache = _TokenCache(clock)
        self._lock = threading.Lock()

    def header(self, scopes: Sequence[str]) -> str | None:
        if self._realm is None:
            return None  # the first request earns the challenge that names the realm
        key = tuple(scopes)
        token = self._cache.get(key)
        if token is None:
            token = self._fetch(key)
        return f"Bearer {token}"

    def refresh(self, challenge: Challenge | None, scopes: Sequence[str]) -> bool:
        if challenge is None or challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        if challenge.error in ("invalid_token", "insufficient_scope") and self._realm:
            return False  # the token service's answer would not change
        with self._lock:
            self._realm = challenge.params["realm"]
            self._service = challenge.params.get("service")
        self._cache.drop(tuple(scopes))
        return True

    def _fetch(self, key: tuple[str, ...]) -> str:
        params: list[tuple[str, str]] = [("scope", s) for s in key]
        if self._service:
            params.append(("service", self._service))
        auth = (self.login, self._password) if self.login else None
        response = self._session.get(self._realm, params=params, auth=auth, timeout=self._timeout)
        if response.status_code != 200:
            from registry_replication.errors import RegistryAuthError

            raise RegistryAuthError(
                f"the token service refused login {self.login!r}",
                registry=self._realm or "",
                operation="get token",
                status=response.status_code,
                code="UNAUTHORIZED",
            )
        body = response.json()
        token = body.get("token") or body.get("access_token")
        issued = self._clock()
        expires = issued + float(body.get("expires_in") or 60)
        self._cache.put(key, token, issued, expires)
        return token

    def explain_refusal(
        self, challenge: Challenge | None, scopes: Sequence[str], sent: str | None = None
    ) -> str:
        if challenge and challenge.error == "insufficient_scope":
            return f"the token service did not grant {' '.join(scopes)} to login {self.login!r}"
        return f"the registry refused the token issued to login {self.login!r}"

    def __repr__(self) -> str:
        return f"TokenAuth(login={self.login!r})"


def _access_claim(scope: str) -> dict[str, object]:
    # Names cannot contain ':', so the first and last fields are type and actions.
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": kind, "name": name, "actions": actions.split(",")}
