"""Registry authentication: basic and anonymous here, Geo-style self-minted JWTs and the Bearer
token flow in ``tokens``.

Each kind is an ``Auth`` the client's ``Transport`` asks for every request's ``Authorization``
header (``authorization``), given the scopes the request needs, read from its method and path
the way distribution grants them (``scopes_for``: ``GET``/``HEAD``: pull;
``POST``/``PUT``/``PATCH``: pull,push; ``DELETE``: delete; a mount also pulls ``from``). On a
401 the transport hands it the ``WWW-Authenticate`` challenge (``refresh``): when refreshing its
token can help, the request is sent once more (bodies are bytes or replayable, see
``transport.Body``). Every failure is a typed ``RegistryError`` with advice.

``JwtAuth`` is how a GitLab Geo secondary reads its primary: it holds a copy of the registry's
key pair and signs its own short-lived, minimal-scope RS256 tokens, exactly as GitLab's
``/jwt/auth`` would issue them. ``TokenAuth`` is the standard challenge flow against a token
service (Docker Hub, Harbor, GitLab.com).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from registry_replication.transport import secrets

CATALOG_SCOPE = "registry:catalog:*"
# /v2/<name>/tags/..., /manifests/..., /blobs/... (greedy: a name may hold "blobs" itself).
_REPOSITORY_PATH = re.compile(r"^/v2/(?P<name>.+)/(?:tags|manifests|blobs)/")


def repository_scope(repository: str, actions: str) -> str:
    """``repository:<name>:<actions>``, actions being ``pull``, ``pull,push`` or ``delete``."""
    return f"repository:{repository}:{actions}"


def scopes_for(method: str, url: str) -> tuple[str, ...]:
    """The token scopes a request needs, as distribution's ``appendAccessRecords`` grants them."""
    parts = urlsplit(url)
    if parts.path.rstrip("/") == "/v2/_catalog":
        return (CATALOG_SCOPE,)
    match = _REPOSITORY_PATH.match(parts.path)
    if not match:
        return ()  # /v2/ itself
    actions = {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}.get(method, "pull,push")
    scopes = [repository_scope(match["name"], actions)]
    source = parse_qs(parts.query).get("from")
    if source and method == "POST":  # a cross-repository mount reads the other repository
        scopes.append(repository_scope(source[0], "pull"))
    return tuple(scopes)


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


class Auth:
    """Anonymous: no header. Subclasses produce the ``Authorization`` header for ``scopes``."""

    kind = "anonymous"

    def authorization(self, scopes: Sequence[str]) -> tuple[str | None, bool]:
        """The header value for ``scopes``, and whether it was obtained just now (not cached)."""
        return None, False

    def header(self, scopes: Sequence[str]) -> str | None:
        """The ``Authorization`` header value for a request needing ``scopes``."""
        return self.authorization(scopes)[0]

    def refresh(self, challenge: Challenge | None, scopes: Sequence[str], *, fresh: bool) -> bool:
        """Called on a 401 (``fresh``: the refused token was obtained for this very request);
        True when sending the request again may now succeed."""
        return False

    def explain_refusal(
        self, challenge: Challenge | None, scopes: Sequence[str], sent: str | None = None
    ) -> str:
        """Why the registry refused us (``sent`` = the Authorization header sent), for errors."""
        if challenge and challenge.error == "insufficient_scope":
            return self._lacks(" ".join(scopes))
        return self._refused(sent)

    def _lacks(self, wanted: str) -> str:
        return f"the credentials do not grant {wanted}"

    def _refused(self, sent: str | None) -> str:
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

    def authorization(self, scopes: Sequence[str]) -> tuple[str | None, bool]:
        return self._header, True

    def _refused(self, sent: str | None) -> str:
        return f"login {self.login!r} was refused; check the connection's login and password"

    def __repr__(self) -> str:
        return f"BasicAuth(login={self.login!r})"
