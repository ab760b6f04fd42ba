"""A client for the Distribution API v2 / OCI distribution spec.

One ``RegistryClient`` per registry, shared by a thread pool: connections are pooled, every
request is bounded in time, transient failures (connection errors, 5xx, 429) are retried with
exponential backoff and jitter, and every failure surfaces as a typed ``RegistryError``.
Names, tags and digests are validated before they reach a URL; blob bytes are hashed as they
stream, so a digest mismatch is an error and never a committed blob.

Credentials go only to the configured registry: every URL it requests, including those the
registry hands back (``Link``, upload ``Location``, redirects), must have the configured scheme,
host and port. The one exception is a blob download redirected to a storage backend, which is
fetched without credentials by a session that reads no ``~/.netrc`` and no proxy variables.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from registry_replication import mediatypes
from registry_replication.auth import (
    CATALOG_SCOPE,
    Auth,
    BasicAuth,
    Challenge,
    JwtAuth,
    TokenAuth,
    repository_scope,
)
from registry_replication.bandwidth import BandwidthLimit
from registry_replication.config import RegistryConfig
from registry_replication.errors import (
    DigestMismatchError,
    NotFoundError,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailableError,
)
from registry_replication.reference import (
    InvalidReference,
    validate_digest,
    validate_reference,
    validate_repository,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_SLEEP_SECONDS = 120.0
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Descriptor:
    """What ``HEAD`` of a manifest tells: its digest, media type and size."""

    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes as the registry served them, and their digest."""

    raw: bytes
    media_type: str
    digest: str

    @cached_property
    def json(self) -> dict[str, Any]:
        import json

        return json.loads(self.raw)


@dataclass(frozen=True)
class _Answer:
    """The status and headers of an answer without a body (``_pooled_head``)."""

    status_code: int
    headers: Any


@dataclass
class Upload:
    """An open blob upload session: where to send the next bytes, and how many it holds."""

    repository: str
    location: str
    offset: int = 0


class RegistryClient:
    """Talks to one registry. Read-only unless ``writable`` (the primary is never written)."""

    def __init__(
        self, config: RegistryConfig, *, writable: bool = False, auth: Auth | None = None
    ) -> None:
        self.config = config
        self.url = config.url
        self.writable = writable
        self.session = requests.Session()
        # Read proxy and CA settings from the environment once, not on every request (requests
        # re-scans os.environ and ~/.netrc per request: a third of a HEAD's CPU).
        self.session.trust_env = False
        self.session.proxies = requests.utils.get_environ_proxies(config.url)
        self.session.verify = (
            config.verify if config.verify is not True
            else os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        # Our own loop below retries (it logs, honours Retry-After and knows which bodies can
        # be replayed); the adapter only pools connections.
        adapter = HTTPAdapter(
            pool_connections=4, pool_maxsize=config.max_connections, max_retries=0
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "registry-replication/0.1"
        self._auth = auth  # None: built from the config on first use
        self._auth_lock = threading.Lock()
        self.bytes_read = 0  # blob and manifest bytes received, for benchmarks and summaries
        self._count_lock = threading.Lock()
        self.bandwidth = (BandwidthLimit(config.max_bytes_per_second)
                          if config.max_bytes_per_second else None)

    # -- discovery and auth -----------------------------------------------------------------

    @property
    def auth(self) -> Auth:
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
            return JwtAuth(
                cfg.private_key or "",
                service=service,
                issuer=cfg.issuer,
                ttl_seconds=cfg.token_ttl_seconds,
                certificate_pem=cfg.certificate,
            )
        if kind == "token":
            auth = TokenAuth(
                self.session, cfg.login, cfg.password, timeout=cfg.timeout_seconds
            )
            if challenge:
                auth.refresh(challenge, ())
            return auth
        if kind == "basic":
            return BasicAuth(cfg.login or "", cfg.password or "")
        return Auth()

    def _probe(self) -> Challenge | None:
        """``GET /v2/`` without credentials: the challenge tells the auth scheme and service."""
        response = self._send("GET", "/v2/", operation="ping", authenticate=False, ok=(200, 401))
        response.close()
        return Challenge.parse(response.headers.get("WWW-Authenticate"))

    def ping(self) -> None:
        """``GET /v2/`` with credentials: raises unless the registry accepts us."""
        self._send("GET", "/v2/", operation="ping", scopes=()).close()

    # -- listing ------------------------------------------------------------------------------

    def catalog(self, page_size: int = 1000) -> Iterator[str]:
        """Every repository, following ``Link`` pagination (``n``/``last``)."""
        path = f"/v2/_catalog?{urlencode({'n': page_size})}"
        while path:
            response = self._send("GET", path, operation="list catalog", scopes=(CATALOG_SCOPE,))
            # Entries are yielded as the registry sent them (even non-strings): the snapshot
            # reports a bad entry as that repository's problem.
            yield from self._json_list(response, "repositories", "list catalog", None)
            path = self._next_link(response, "list catalog", None)

    def tags(self, repository: str) -> list[Any]:
        """Every tag of a repository (distribution 2.8 returns them in one page), as sent."""
        validate_repository(repository)
        path = f"/v2/{repository}/tags/list"
        tags: list[Any] = []
        while path:
            try:
                response = self._send(
                    "GET", path, operation="list tags", repository=repository,
                    scopes=self._scopes(repository, "pull"),
                )
            except NotFoundError as exc:
                if exc.code == "NAME_UNKNOWN" and not tags:
                    return []  # a repository holding blobs but no tags
                raise
            tags.extend(self._json_list(response, "tags", "list tags", repository))
            path = self._next_link(response, "list tags", repository)
        return tags

    # -- manifests ------------------------------------------------------------------------------

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """The digest, media type and size of a tag or digest; None when it does not exist."""
        validate_repository(repository)
        validate_reference(reference)
        headers = {"Accept": mediatypes.MANIFEST_ACCEPT}
        response, retried = self._pooled_head(f"/v2/{repository}/manifests/{reference}",
                                              scopes=self._scopes(repository, "pull"),
                                              headers=headers)
        if response is None:  # anything but a plain 200 or 404: the full request path
            response = self._at("HEAD", repository, "manifests", reference, "check manifest",
                                headers=headers, ok=(200, 404), retried=retried)
            response.close()
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            # Registries that omit the header on HEAD: fall back to fetching the bytes.
            manifest = self.get_manifest(repository, reference)
            return Descriptor(manifest.digest, manifest.media_type, len(manifest.raw))
        try:
            validate_digest(digest)
        except InvalidReference:
            raise RegistryError(
                f"the registry answered with an invalid Docker-Content-Digest {digest[:100]!r}",
                registry=self.url, operation="check manifest", repository=repository,
                reference=reference, status=response.status_code, code="DIGEST_INVALID",
                advice="the registry (or a proxy in front of it) sends a broken digest header "
                "for this manifest: check the registry's version and any proxy, or re-push the "
                "tag; other repositories are not affected",
            ) from None
        return Descriptor(digest, _media_type(response), _content_length(response))

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """A manifest's exact bytes, checked against the digest they were asked for or served as."""
        validate_repository(repository)
        validate_reference(reference)
        response = self._at("GET", repository, "manifests", reference, "get manifest",
                            headers={"Accept": mediatypes.MANIFEST_ACCEPT})
        raw = response.content
        self._count(len(raw))
        media_type = _media_type(response)
        digest = _digest_of(raw, reference if ":" in reference else "sha256:")
        expected = reference if ":" in reference else response.headers.get("Docker-Content-Digest")
        # Schema 1 signed manifests are served with their signatures stripped from the digest,
        # so their header digest legitimately differs; they are reported as unsupported later.
        if expected and digest != expected and media_type not in mediatypes.SCHEMA1:
            raise DigestMismatchError(
                f"the manifest's bytes hash to {digest}",
                registry=self.url, operation="get manifest", repository=repository,
                reference=expected, code="DIGEST_INVALID",
            )
        return Manifest(raw, media_type, digest)

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        """Push these exact bytes under a tag or digest; returns the digest the registry stored."""
        validate_repository(repository)
        validate_reference(reference)
        response = self._send(
            "PUT", f"/v2/{repository}/manifests/{reference}", operation="push manifest",
            repository=repository, reference=reference,
            scopes=self._scopes(repository, "pull,push"),
            headers={"Content-Type": media_type}, data=raw, ok=(200, 201, 202),
        )
        response.close()
        digest = _digest_of(raw, "sha256:")
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError(
                f"the registry stored the manifest as {stored}, not as {digest}",
                registry=self.url, operation="push manifest", repository=repository,
                reference=reference, code="DIGEST_INVALID",
                advice="the registry rewrote the manifest; it cannot hold an exact replica",
            )
        return digest

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete by digest (untagging every tag on it); False when it was already gone."""
        validate_repository(repository)
        validate_digest(digest)
        response = self._at("DELETE", repository, "manifests", digest, "delete manifest",
                            action="delete", ok=(200, 202, 404))
        response.close()
        return response.status_code != 404

    # -- blobs ----------------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob in a repository, or None when the repository does not have it."""
        validate_repository(repository)
        validate_digest(digest)
        response = self._at("HEAD", repository, "blobs", digest, "check blob", ok=(200, 404))
        response.close()
        return None if response.status_code == 404 else _content_length(response)

    def _at(self, method: str, repository: str, kind: str, reference: str, operation: str, *,
            action: str = "pull", **send: Any) -> requests.Response:
        """``<method> /v2/<repository>/<kind>/<reference>`` with the repository's ``action``
        scope; the caller has validated the names."""
        return self._send(method, f"/v2/{repository}/{kind}/{reference}", operation=operation,
                          repository=repository, reference=reference,
                          scopes=self._scopes(repository, action), **send)

    def read_blob(
        self,
        repository: str,
        digest: str,
        *,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> Iterator[bytes]:
        """Stream a blob's bytes (``length`` of them from ``offset``; default: all), following
        redirects to storage backends.

        A whole blob is hashed as it passes and a mismatch with ``digest`` raises
        ``DigestMismatchError`` after the last chunk, before the caller can commit it.
        """
        validate_repository(repository)
        validate_digest(digest)
        partial = bool(offset) or length is not None
        headers = {}
        if partial:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = self._send(
            "GET", f"/v2/{repository}/blobs/{digest}", operation="get blob",
            repository=repository, reference=digest, scopes=self._scopes(repository, "pull"),
            headers=headers, stream=True, ok=(200, 206, 307, 302, 303), allow_redirects=False,
        )
        if response.is_redirect:
            response.close()
            # Storage backends (S3, GCS) get a presigned URL, never the registry's token.
            location = urljoin(response.url, response.headers["Location"])
            if urlsplit(location).scheme not in DEFAULT_PORTS:
                raise RegistryError(
                    "the registry redirected the download to a non-HTTP URL",
                    registry=self.url, operation="get blob", repository=repository,
                    reference=digest, status=response.status_code,
                    advice="check the registry's storage redirect configuration",
                )
            try:
                response = self._storage.get(location, headers=headers, stream=True,
                                             timeout=self._timeout)
            except requests.RequestException as exc:
                raise self._connection_error(exc, "get blob", repository, digest) from None
            if response.status_code not in (200, 206):
                response.close()
                raise RegistryUnavailableError(
                    "the storage backend the registry redirected to refused the download",
                    registry=self.url, operation="get blob", repository=repository,
                    reference=digest, status=response.status_code,
                )
        if partial and response.status_code != 206:
            response.close()
            raise RegistryError(
                f"the registry ignored the Range request {headers['Range']}",
                registry=self.url, operation="get blob", repository=repository, reference=digest,
                status=response.status_code,
            )
        return self._stream(response, repository, digest, verify=not partial, chunk_size=chunk_size)

    def _stream(
        self, response: requests.Response, repository: str, digest: str, *, verify: bool,
        chunk_size: int,
    ) -> Iterator[bytes]:
        hasher = hashlib.new(digest.split(":", 1)[0]) if verify else None
        try:
            for chunk in response.iter_content(chunk_size):
                self._count(len(chunk))
                if self.bandwidth:
                    self.bandwidth.consume(len(chunk))
                if hasher:
                    hasher.update(chunk)
                yield chunk
        except requests.RequestException as exc:
            raise self._connection_error(exc, "get blob", repository, digest) from None
        finally:
            response.close()
        if hasher and f"{hasher.name}:{hasher.hexdigest()}" != digest:
            raise DigestMismatchError(
                f"the blob's bytes hash to {hasher.name}:{hasher.hexdigest()}",
                registry=self.url, operation="get blob", repository=repository, reference=digest,
                code="DIGEST_INVALID",
            )

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Cross-repository mount on this registry; False when it could not mount."""
        validate_repository(repository)
        validate_repository(from_repository)
        validate_digest(digest)
        query = urlencode({"mount": digest, "from": from_repository})
        response = self._send(
            "POST", f"/v2/{repository}/blobs/uploads/?{query}", operation="mount blob",
            repository=repository, reference=digest,
            scopes=(*self._scopes(repository, "pull,push"), repository_scope(from_repository, "pull")),
            ok=(201, 202),
        )
        response.close()
        if response.status_code == 202:
            # The registry opened an upload instead; it expires on its own, but tidy up.
            self.cancel_upload(Upload(repository, self._location(response)))
            return False
        return True

    def start_upload(self, repository: str) -> Upload:
        validate_repository(repository)
        response = self._send(
            "POST", f"/v2/{repository}/blobs/uploads/", operation="start upload",
            repository=repository, scopes=self._scopes(repository, "pull,push"), ok=(202,),
        )
        response.close()
        return Upload(repository, self._location(response))

    def push_blob(
        self, repository: str, digest: str, data: bytes | Iterable[bytes], size: int | None = None
    ) -> None:
        """Monolithic upload: ``POST`` then one streaming ``PUT ?digest=``.

        The registry checks the digest before it commits; an iterable that raises (as
        ``read_blob`` does on a mismatch) aborts the request, so nothing is committed.
        """
        validate_digest(digest)
        upload = self.start_upload(repository)
        self.finish_upload(upload, digest, data, size)

    def upload_chunk(self, upload: Upload, data: bytes | Iterable[bytes], size: int) -> Upload:
        """``PATCH`` ``size`` bytes at ``upload.offset``; returns the advanced session."""
        response = self._send(
            "PATCH", upload.location, operation="upload chunk", repository=upload.repository,
            scopes=self._scopes(upload.repository, "pull,push"),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{upload.offset}-{upload.offset + size - 1}",
            },
            data=_Body(data, size), ok=(202,),
        )
        response.close()
        return Upload(upload.repository, self._location(response), _range_end(response))

    def upload_status(self, upload: Upload) -> Upload:
        """Ask where an interrupted upload stands (the offset to resume from)."""
        response = self._send(
            "GET", upload.location, operation="check upload", repository=upload.repository,
            scopes=self._scopes(upload.repository, "pull,push"), ok=(204,),
        )
        response.close()
        return Upload(upload.repository, self._location(response), _range_end(response))

    def finish_upload(
        self,
        upload: Upload,
        digest: str,
        data: bytes | Iterable[bytes] = b"",
        size: int | None = None,
    ) -> None:
        """``PUT ?digest=`` with the remaining bytes (none after chunked uploads): commits the blob."""
        validate_digest(digest)
        sep = "&" if "?" in upload.location else "?"
        body = data if isinstance(data, bytes) else _Body(data, size)
        response = self._send(
            "PUT", f"{upload.location}{sep}{urlencode({'digest': digest})}",
            operation="commit blob", repository=upload.repository, reference=digest,
            scopes=self._scopes(upload.repository, "pull,push"),
            headers={"Content-Type": "application/octet-stream"}, data=body, ok=(201, 204),
        )
        response.close()

    def cancel_upload(self, upload: Upload) -> bool:
        """End an upload session (``DELETE`` needs the delete action); True once it is gone."""
        try:
            self._send(
                "DELETE", upload.location, operation="cancel upload",
                repository=upload.repository, scopes=self._scopes(upload.repository, "delete"),
                ok=(204, 404),
            ).close()
            return True
        except RegistryError as exc:  # the registry purges it in time; not worth failing for
            log.info("could not cancel upload in %s: %s", upload.repository, exc)
            return False

    @cached_property
    def _storage(self) -> requests.Session:
        """For blob redirects to storage: no credentials, no ``~/.netrc``, no proxy variables
        read per request (the registry's proxy settings, read once, apply to its storage)."""
        session = requests.Session()
        session.trust_env = False
        session.proxies = dict(self.session.proxies)
        session.verify = self.session.verify
        session.headers["User-Agent"] = self.session.headers["User-Agent"]
        return session

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.bytes_read += n

    # -- transport ------------------------------------------------------------------------------

    @property
    def _timeout(self) -> tuple[float, float]:
        return (min(10.0, self.config.timeout_seconds), self.config.timeout_seconds)

    def _scopes(self, repository: str, actions: str) -> tuple[str, ...]:
        if actions != "pull" and not self.writable:
            raise PermissionError(
                f"refusing to {actions} on {self.url}/{repository}: this client is read-only "
                "(the primary is never written to)"
            )
        return (repository_scope(repository, actions),)

    def _location(self, response: requests.Response) -> str:
        """An upload URL from ``Location``; refused unless it is on our own registry."""
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(
                "the registry sent no upload Location", registry=self.url,
                operation="upload", status=response.status_code,
            )
        return self._own_url(urljoin(response.url, location), "upload", None, "Location")

    def _next_link(
        self, response: requests.Response, operation: str, repository: str | None
    ) -> str | None:
        """The next page from ``Link: <...>; rel="next"``; refused unless on our own registry."""
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        return self._own_url(urljoin(response.url, link), operation, repository, "Link")

    def _own_url(self, url: str, operation: str, repository: str | None, source: str) -> str:
        """``url`` if it has the configured scheme, host and port; else a ``RegistryError``.

        Credentials go with every request to the registry, so a URL the registry hands back
        must not lead anywhere else (``http:http://other-host/x``, ``//other-host``, userinfo,
        backslashes that parsers read differently).
        """
        if _same_origin(url, self.url):
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

    def _json_list(
        self, response: requests.Response, key: str, operation: str, repository: str | None
    ) -> list[Any]:
        """``body[key]`` of a listing answer, which must be a JSON object holding a list."""
        try:
            body = response.json()
        except ValueError:
            body = None
        value = body.get(key) if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(value, (list, type(None))):
            raise RegistryError(
                f"the answer is not the expected JSON object with a {key!r} list "
                f"({_body_shape(response)})",
                registry=self.url, operation=operation, repository=repository,
                status=response.status_code,
                advice="the registry or a proxy in front of it answered with something else; "
                "check that the connection's URL points at the registry itself",
            )
        return value or []

    def _send(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        scopes: Sequence[str] = (),
        repository: str | None = None,
        reference: str | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
        stream: bool = False,
        ok: Sequence[int] = (200,),
        allow_redirects: bool = True,
        authenticate: bool = True,
        retried: int = 0,
    ) -> requests.Response:
        """One request with auth, bounded retries and typed errors.

        Retries: connection errors, 5xx and 429, with exponential backoff and jitter, honouring
        ``Retry-After``. A body that is a stream cannot be replayed, so such a request is tried
        once and the caller resumes (the copy engine resumes blob uploads from the registry's
        offset).
        """
        if urlsplit(path).scheme:  # a URL the registry handed back, already checked
            url = path
        else:
            url = urljoin(self.url + "/", path.lstrip("/"))
        url = self._own_url(url, operation, repository, "URL")
        replayable = data is None or isinstance(data, bytes)
        retries = retried  # already used by ``_pooled_head``
        redirects = 0
        refreshed = False
        while True:
            request_headers = dict(headers or {})
            if authenticate:
                value = self.auth.header(scopes)
                if value:
                    request_headers["Authorization"] = value
            try:
                # Redirects are followed below, only within the registry: requests would follow
                # them anywhere.
                response = self.session.request(
                    method, url, headers=request_headers, data=data, stream=stream,
                    timeout=self._timeout, allow_redirects=False,
                )
            except requests.RequestException as exc:
                if not replayable or retries >= self.config.max_retries:
                    raise self._connection_error(exc, operation, repository, reference) from None
                retries += 1
                self._wait(retries, method, url, type(exc).__name__, None)
                continue
            status = response.status_code
            if status in ok:
                return response
            if (response.is_redirect and allow_redirects and method in ("GET", "HEAD")
                    and redirects < MAX_REDIRECTS):
                location = urljoin(response.url, response.headers["Location"])
                response.close()
                url = self._own_url(location, operation, repository, "redirect")
                redirects += 1
                continue
            if status == 401 and authenticate and not refreshed:
                challenge = Challenge.parse(response.headers.get("WWW-Authenticate"))
                if replayable and self.auth.refresh(challenge, scopes):
                    refreshed = True
                    response.close()
                    continue
            if status in RETRY_STATUSES and replayable and retries < self.config.max_retries:
                retry_after = response.headers.get("Retry-After")
                response.close()
                retries += 1
                self._wait(retries, method, url, f"HTTP {status}", retry_after)
                continue
            raise self._error(response, operation, repository, reference, scopes, request_headers)

    def _pooled_head(self, path: str, *, scopes: Sequence[str],
                     headers: dict[str, str]) -> tuple[_Answer | None, int]:
        """A ``HEAD`` sent straight on the session's urllib3 pool, for the listing sweep (one per
        tag), where ``requests``' per-request work was most of the client's CPU. The same URL
        confinement and auth header as ``_send``; only a 200 or 404 is answered here. Anything
        else (401, a redirect, an error) returns None and the retries it used (a 429, a 5xx or a
        connection error is waited for as ``_send`` would), and the caller repeats the request
        through ``_send``, which retries, refreshes and explains."""
        url = urljoin(self.url + "/", path.lstrip("/"))
        pool = self._head_pool
        if pool is None or not self.config.max_retries or not _same_origin(url, self.url):
            return None, 0  # without retries, the first answer is the one ``_send`` reports
        request_headers = {"User-Agent": self.session.headers["User-Agent"], **headers}
        value = self.auth.header(scopes)
        if value:
            request_headers["Authorization"] = value
        parts = urlsplit(url)
        connect, read = self._timeout
        try:
            response = pool.urlopen(
                "HEAD", parts.path + (f"?{parts.query}" if parts.query else ""),
                headers=request_headers, retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=connect, read=read), assert_same_host=True)
        except urllib3.exceptions.HTTPError as exc:
            self._wait(1, "HEAD", url, type(exc).__name__, None)
            return None, 1
        if response.status in (200, 404):
            return _Answer(response.status, response.headers), 0
        if response.status in RETRY_STATUSES:
            self._wait(1, "HEAD", url, f"HTTP {response.status}",
                       response.headers.get("Retry-After"))
            return None, 1
        return None, 0

    @cached_property
    def _head_pool(self) -> urllib3.HTTPConnectionPool | None:
        """The session adapter's pool for the registry (TLS settings as ``requests`` makes
        them); None behind a proxy, where ``_send`` does every request."""
        if self.session.proxies:
            return None
        request = requests.Request("HEAD", self.url + "/v2/").prepare()
        return self.session.get_adapter(self.url).get_connection_with_tls_context(
            request, self.session.verify, proxies={}, cert=None)

    def _wait(
        self, attempt: int, method: str, url: str, cause: str, retry_after: str | None
    ) -> None:
        """Sleep before retry ``attempt``: exponential backoff with jitter, or Retry-After."""
        delay = self.config.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
        if retry_after:
            try:  # seconds or an HTTP date, parsed as urllib3 does
                delay = Retry().parse_retry_after(retry_after)
            except InvalidHeader:  # an unparseable header falls back to our own backoff
                pass
        delay = min(delay, MAX_RETRY_SLEEP_SECONDS)
        log.warning(
            "%s %s: %s from %s; retry %d of %d in %.1fs%s",
            method, urlsplit(url).path, cause, self.url, attempt, self.config.max_retries, delay,
            " (Retry-After)" if retry_after else "",
        )
        time.sleep(delay)

    def _connection_error(
        self, exc: Exception, operation: str, repository: str | None, reference: str | None
    ) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"no answer from the registry ({type(exc).__name__})",
            registry=self.url, operation=operation, repository=repository, reference=reference,
            advice="check that the registry is running and reachable at the connection's URL; "
            "the next run retries",
        )

    def _error(
        self,
        response: requests.Response,
        operation: str,
        repository: str | None,
        reference: str | None,
        scopes: Sequence[str],
        sent: dict[str, str],
    ) -> RegistryError:
        status = response.status_code
        code = message = detail = None
        try:
            body = response.json()
        except ValueError:
            body = None
        errors = body.get("errors") if isinstance(body, dict) else None
        first = errors[0] if isinstance(errors, list) and errors else None
        if isinstance(first, dict):
            code = _text(first.get("code"), 64)
            message = _text(first.get("message"), 300)
            raw_detail = first.get("detail")
            detail = str(raw_detail)[:300] if raw_detail else None
        elif status >= 400 and _has_body(response):
            detail = f"the error body is not the registry's JSON error shape ({_body_shape(response)})"
        response.close()
        kwargs: dict[str, Any] = dict(
            registry=self.url, operation=operation, repository=repository, reference=reference,
            status=status, code=code, detail=detail,
        )
        if status in (401, 403):
            challenge = Challenge.parse(response.headers.get("WWW-Authenticate"))
            reason = self.auth.explain_refusal(challenge, scopes, sent.get("Authorization"))
            kwargs["code"] = code or ("DENIED" if status == 403 else "UNAUTHORIZED")
            if challenge and challenge.error:
                reason = f"{reason} [{challenge.error}]"
            return RegistryAuthError(reason, **kwargs)
        if status == 404:
            return NotFoundError(message or "not found", **kwargs)
        if status in RETRY_STATUSES:
            return RegistryUnavailableError(
                message or f"the registry answered {status} after {self.config.max_retries} retries",
                **kwargs,
            )
        return RegistryError(message or f"unexpected HTTP {status}", **kwargs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r}, writable={self.writable})"


class _Body:
    """A streamed request body of known length: requests sends it with Content-Length."""

    def __init__(self, data: bytes | Iterable[bytes], size: int | None) -> None:
        self._data = data
        self._size = size

    def __iter__(self) -> Iterator[bytes]:
        if isinstance(self._data, bytes):
            yield self._data
        else:
            yield from self._data

    def __len__(self) -> int:
        if self._size is None:
            raise TypeError("unknown length")  # requests falls back to chunked encoding
        return self._size


def _detect_auth(challenge: Challenge | None, config: RegistryConfig) -> str:
    if challenge is None:
        return "anonymous"
    if challenge.scheme == "basic":
        return "basic"
    return "jwt" if config.private_key else "token"


def _media_type(response: requests.Response) -> str:
    return (response.headers.get("Content-Type") or "").split(";", 1)[0].strip()


def _digest_of(raw: bytes, like: str) -> str:
    algorithm = like.split(":", 1)[0] or "sha256"
    return f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"


def _same_origin(url: str, base: str) -> bool:
    """Same scheme, host and port as ``base``, no userinfo, nothing parsers read differently."""
    if any(c == "\\" or c.isspace() or ord(c) < 32 for c in url):
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


def _port(parts: Any) -> int | None:
    """The explicit or default port; None when the port is not a valid number."""
    try:
        return parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None


def _content_length(response: requests.Response) -> int:
    value = response.headers.get("Content-Length") or "0"
    return int(value) if value.isdigit() else 0


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _has_body(response: requests.Response) -> bool:
    return response.request is None or response.request.method != "HEAD"


def _body_shape(response: requests.Response) -> str:
    kind = _media_type(response) or "no Content-Type"
    return f"HTTP {response.status_code}, {kind}, {len(response.content)} bytes"


def _range_end(response: requests.Response) -> int:
    """The upload offset from ``Range: 0-<last byte>``.

    distribution answers ``0-0`` both for an empty upload and for one byte; chunks are far
    larger than a byte, so ``0-0`` means nothing received yet.
    """
    _, _, end = (response.headers.get("Range") or "").partition("-")
    return int(end) + 1 if end.isdigit() and int(end) > 0 else 0
