"""What a registry's answers say: a refusal as a typed ``RegistryError`` (the spec's JSON
error code and message, the refused scopes, ``Retry-After``), the headers the client reads
(media type, length), and a listing's pages (``Pages``: the entries, the next ``Link``).

Every answer reaching here was read within its bound (``Transport.send``), so an error body is
parsed as JSON no deeper than ``max_json_depth`` and quoted only in part.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from registry_replication.transport.auth import Auth, Challenge, scopes_for
from registry_replication.transport.bounded import loads
from registry_replication.transport.errors import (
    RETRY_STATUSES,
    LimitExceeded,
    NotFoundError,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailableError,
    where,
)

if TYPE_CHECKING:
    from registry_replication.transport.transport import Request, Transport
    from registry_replication.transport.wire import Response

# One link of a ``Link`` header: ``<url>`` and its parameters, up to the next link.
_LINK = re.compile(r"<([^>]*)>([^<]*)")


def connection_error(
    exc: Exception, registry: str, operation: str, repository: str | None, reference: str | None
) -> RegistryUnavailableError:
    """No answer (refused, reset, timed out): retried, like a 5xx."""
    return RegistryUnavailableError(
        f"no answer from the registry ({type(exc).__name__})",
        registry=registry,
        operation=operation,
        repository=repository,
        reference=reference,
        advice="check that the registry is running and reachable at the connection's URL; "
        "the next run retries",
    )


def storage_error(response: Response, registry: str, request: Request) -> RegistryError:
    response.close()
    status = response.status
    kind = RegistryUnavailableError if status in RETRY_STATUSES else RegistryError
    return kind(
        "the storage backend the registry redirected to refused the download",
        registry=registry,
        operation="get blob",
        repository=request.repository,
        reference=request.reference,
        status=status,
        advice="check the registry's storage backend (its redirect URLs, credentials and "
        "clock: presigned URLs expire); the next run retries",
    )


def registry_error(
    response: Response, registry: str, request: Request, max_json_depth: int, auth: Auth | None
) -> RegistryError:
    """The registry's answer as a typed error: its JSON error code and message if it sent the
    spec's error shape, the refused scopes on 401/403 (``auth``: None before it is built)."""
    status = response.status
    code = message = detail = None
    try:
        body = loads(response.content, max_json_depth)
    except (ValueError, RegistryError):  # not the JSON error shape: said below
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors else None
    if isinstance(first, dict):
        code = _text(first.get("code"), 64)
        message = _text(first.get("message"), 300)
        raw_detail = first.get("detail")
        detail = str(raw_detail)[:300] if raw_detail else None
    elif status >= 400 and _has_body(response):
        detail = f"the error body is not the registry's JSON error shape ({body_shape(response)})"
    response.close()
    kwargs: dict[str, Any] = dict(
        registry=registry,
        operation=request.operation,
        repository=request.repository,
        reference=request.reference,
        status=status,
        code=code,
        detail=detail,
    )
    if status in (401, 403):
        challenge = Challenge.parse(response.headers.get("WWW-Authenticate"))
        reason = (auth or Auth()).explain_refusal(
            challenge, scopes_for(response.method, response.url), response.authorization
        )
        kwargs["code"] = code or ("DENIED" if status == 403 else "UNAUTHORIZED")
        if challenge and challenge.error:
            reason = f"{reason} [{challenge.error}]"
        return RegistryAuthError(reason, **kwargs)
    if status == 404:
        return NotFoundError(message or "not found", **kwargs)
    if status in RETRY_STATUSES:
        return RegistryUnavailableError(
            message or f"the registry answered {status}",
            retry_after=_retry_after(response),
            **kwargs,
        )
    return RegistryError(message or f"unexpected HTTP {status}", **kwargs)


def _retry_after(response: Response) -> float | None:
    """``Retry-After`` in seconds (seconds or an HTTP date, parsed as urllib3 does)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return Retry().parse_retry_after(value)
    except InvalidHeader:  # an unparseable header: our own backoff
        return None


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _has_body(response: Response) -> bool:
    return response.method != "HEAD"


# -- reading answers ----------------------------------------------------------------------------


def media_type(response: Response) -> str:
    """The answer's ``Content-Type`` without parameters."""
    # Interned: a listing or plan of 100,000 tags holds a handful of distinct media types.
    return sys.intern((response.headers.get("Content-Type") or "").split(";", 1)[0].strip())


def content_length(response: Response) -> int | None:
    """The answer's ``Content-Length``; None when it is missing or not a whole number."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() else None


def body_shape(response: Response) -> str:
    """What an answer holds, for an error that cannot quote it: status, type and length."""
    kind = media_type(response) or "no Content-Type"
    return f"HTTP {response.status}, {kind}, {len(response.content)} bytes"


class Pages:
    """The pages of one listing: the next page from ``Link: <...>; rel="next"``, refused
    unless on our own registry, once already visited (a loop), or past ``max_listing_pages``."""

    def __init__(self, transport: Transport, operation: str, repository: str | None) -> None:
        self.transport = transport
        self.operation = operation
        self.repository = repository
        self.visited: set[str] = set()

    def entries(self, response: Response, key: str) -> list[Any]:
        """``body[key]`` of a page, which must be a JSON object holding a list."""
        transport = self.transport
        try:
            body = loads(
                response.content,
                transport.config.bounds.max_json_depth,
                **where(transport.url, self.operation, self.repository),
            )
        except ValueError:
            body = None
        value = body.get(key) if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(value, (list, type(None))):
            raise RegistryError(
                f"the answer is not the expected JSON object with a {key!r} list "
                f"({body_shape(response)})",
                **where(transport.url, self.operation, self.repository),
                status=response.status,
                advice="the registry or a proxy in front of it answered with something else; "
                "check that the connection's URL points at the registry itself",
            )
        return value or []

    def next(self, response: Response) -> str | None:
        link = next_link(response.headers.get("Link") or "")
        if not link:
            return None
        transport, bound = self.transport, self.transport.config.bounds.max_listing_pages
        url = transport.confinement.own_url(
            urljoin(response.url, link), self.operation, self.repository, "Link"
        )
        context = where(transport.url, self.operation, self.repository)
        if url in self.visited:
            raise RegistryError(
                "the registry's Link header leads back to a page already read (a loop)",
                code="PAGINATION_LOOP",
                **context,
                advice="the registry or a proxy in front of it rewrites pagination links: "
                "check its http.host and any proxy; other listings are not affected",
            )
        if len(self.visited) + 1 >= bound:
            raise LimitExceeded(
                f"the listing goes on past {bound} pages",
                code="LIMIT_EXCEEDED",
                setting="max_listing_pages",
                limit=bound,
                **context,
            )
        self.visited.add(url)
        return url


def next_link(header: str) -> str | None:
    """The URL of a ``Link`` header's ``rel="next"`` link (RFC 8288), None without one."""
    for url, params in _LINK.findall(header):
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "rel" and value.strip(" '\"") == "next":
                return url.strip()
    return None
