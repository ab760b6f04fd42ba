"""A client for the Distribution API v2 / OCI distribution spec.

One ``RegistryClient`` per registry, shared by a thread pool: one pooled ``requests`` session
carries every request (blob redirects to storage included), authentication is the session's
``AuthBase`` (``auth.py``: scopes, the 401 challenge, token refresh), every request is bounded
in time, and one retry policy (``RegistryClient.retrying``, tenacity) retries connection
errors, 5xx and 429 with exponential backoff and jitter, honouring a capped ``Retry-After``.
One policy owns each operation: the requests made inside an operation a policy already
retries (a blob upload's steps, and the primary's download that feeds its body) get one try
each, so attempts never multiply. Request bodies are bytes or a ``Body`` that can be read
again, so any request can be sent again, and ``upload_blob`` resumes an interrupted upload
from the registry's offset. Every
failure surfaces as a typed ``RegistryError``. Names, tags and digests are validated before
they reach a URL; blob bytes are hashed as they stream, so a digest mismatch is an error and
never a committed blob.

Credentials go only to the configured registry: every URL it requests, including those the
registry hands back (``Link``, upload ``Location``, redirects), must have the configured scheme,
host and port. The one exception is a blob download redirected to a storage backend, which is
fetched without credentials (the session reads no ``~/.netrc`` and no proxy variables), and
only from a public address unless the connection allows private ones
(``allow_private_redirects``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import random
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from registry_replication.transport import mediatypes
from registry_replication.transport.auth import (
    Auth,
    BasicAuth,
    Challenge,
    JwtAuth,
    TokenAuth,
    no_auth,
    scopes_for,
)
from registry_replication.transport.bandwidth import BandwidthLimit
from registry_replication.transport.bounded import loads, read_body
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import (
    DigestMismatchError,
    LimitExceeded,
    NotFoundError,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailableError,
)
from registry_replication.transport.reference import (
    InvalidReference,
    validate_digest,
    validate_reference,
    validate_repository,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_SLEEP_SECONDS = 120.0  # the cap on any wait, Retry-After included
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}

# A blob's bytes from an offset to its end (``open_body(0)``: all of them).
OpenBody = Callable[[int], Iterable[bytes]]

T = TypeVar("T")

# Set while a retry policy runs an operation in this thread (any client's): the requests
# inside it get one try each and their failures go to that policy, which retries the whole.
# Two policies nested would multiply the attempts (a download retried inside each attempt of
# the upload it feeds) and the time an operator was promised by ``max_retries``.
_retried_by_outer_policy: ContextVar[bool] = ContextVar("retried_by_outer_policy",
                                                        default=False)


@contextmanager
def _one_try_each() -> Iterator[None]:
    """Requests made inside get one try each: an outer policy owns their retries."""
    token = _retried_by_outer_policy.set(True)
    try:
        yield
    finally:
        _retried_by_outer_policy.reset(token)


@dataclass(frozen=True)
class Descriptor:
    """What ``HEAD`` of a manifest tells: its digest, media type and size (None: not known, a
    descriptor recalled from a record rather than read from a registry)."""

    digest: str
    media_type: str
    size: int | None = None


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
        # The adapter only pools connections: ``retrying`` retries (it logs, honours a capped
        # Retry-After and sends replayable bodies again; urllib3's Retry would resend a body
        # it cannot reopen).
        adapter = HTTPAdapter(
            pool_connections=4, pool_maxsize=config.max_connections, max_retries=0
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "registry-replication/0.1"
        self._auth = auth  # None: built from the config on first use
        self.session.auth = auth
        self._auth_lock = threading.Lock()
        self.bytes_read = 0  # blob and manifest bytes received, for benchmarks and summaries
        self._count_lock = threading.Lock()
        self.bandwidth = (BandwidthLimit(config.max_bytes_per_second)
                          if config.max_bytes_per_second else None)
        # The retry policy, declared once: every request (``_send``) and every step of a blob
        # upload (``upload_blob``) runs under a copy of it (``_retried``), never one inside
        # another.
        self.retrying = Retrying(
            stop=stop_after_attempt(config.max_retries + 1),
            retry=retry_if_exception_type(RegistryUnavailableError),
            wait=self._backoff,
            before_sleep=self._log_retry,
            reraise=True,
        )

    # -- discovery and auth -----------------------------------------------------------------

    @property
    def auth(self) -> Auth:
        """The session's authentication, built from the config (and the registry's challenge)
        on first use."""
        with self._auth_lock:
            if self._auth is None:
                self._auth = self.session.auth = self._build_auth()
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
                self.session, cfg.login, cfg.password, timeout=cfg.timeout_seconds,
                registry=self.url, realm_hosts=cfg.token_realm_hosts,
                max_answer_bytes=cfg.bounds.max_token_bytes,
            )
            if challenge:
                auth.refresh(challenge, (), fresh=False)
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
        self._send("GET", "/v2/", operation="ping").close()

    # -- listing ------------------------------------------------------------------------------

    def catalog(self, page_size: int = 1000) -> Iterator[str]:
        """Every repository, following ``Link`` pagination (``n``/``last``)."""
        pages = _Pages(self, "list catalog", None)
        path: str | None = f"/v2/_catalog?{urlencode({'n': page_size})}"
        while path:
            response = self._send("GET", path, operation="list catalog",
                                  body_bound="max_listing_bytes")
            # Entries are yielded as the registry sent them (even non-strings): the snapshot
            # reports a bad entry as that repository's problem.
            yield from self._json_list(response, "repositories", "list catalog", None)
            path = pages.next(response)

    def tags(self, repository: str) -> list[Any]:
        """Every tag of a repository (distribution 2.8 returns them in one page), as sent."""
        validate_repository(repository)
        pages = _Pages(self, "list tags", repository)
        path: str | None = f"/v2/{repository}/tags/list"
        tags: list[Any] = []
        while path:
            try:
                response = self._send("GET", path, operation="list tags", repository=repository,
                                      body_bound="max_listing_bytes")
            except NotFoundError as exc:
                if exc.code == "NAME_UNKNOWN" and not tags:
                    return []  # a repository holding blobs but no tags
                raise
            tags.extend(self._json_list(response, "tags", "list tags", repository))
            path = pages.next(response)
        return tags

    # -- manifests ------------------------------------------------------------------------------

    def head_manifest(
        self, repository: str, reference: str, *, known: Descriptor | None = None
    ) -> Descriptor | None:
        """The digest, media type and size of a tag or digest; None when it does not exist.

        ``known``: what the caller last saw there. The request is then conditional
        (``If-None-Match``): a registry whose reference still resolves to that digest answers
        304 without reading the manifest (a fifth of distribution's CPU per ``HEAD``), and
        ``known`` is returned. Any other answer is read as usual.

        A 404 from the primary (a read-only client) is confirmed by a ``GET`` before it counts
        as gone (``_gone_or_here``), since "gone on the primary" deletes on the secondary; a
        writable client is the secondary, where "absent" only ever makes us copy.
        """
        validate_repository(repository)
        validate_reference(reference)
        headers = {"Accept": mediatypes.MANIFEST_ACCEPT}
        if known is not None:
            headers["If-None-Match"] = f'"{known.digest}"'
        response = self._at("HEAD", repository, "manifests", reference, "check manifest",
                            headers=headers, ok=(200, 304, 404))
        response.close()
        if response.status_code == 304 and known is not None:
            return known
        if response.status_code == 404:
            return None if self.writable else self._gone_or_here(repository, reference)
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
        # A manifest's size is its length: a proxy that strips it costs the size, not the check.
        return Descriptor(digest, _media_type(response), _content_length(response) or 0)

    def _gone_or_here(self, repository: str, reference: str) -> Descriptor | None:
        """After a ``HEAD`` 404: None only if a ``GET`` says ``MANIFEST_UNKNOWN`` or
        ``NAME_UNKNOWN``. A HEAD has no body to tell whose 404 it is, and "gone" deletes tags:
        a proxy's 404 page (no registry error code) must never pass for it."""
        try:
            manifest = self.get_manifest(repository, reference)
        except NotFoundError as exc:
            if exc.code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"):
                return None
            raise replace(
                exc, message="not found, without the registry's error code (MANIFEST_UNKNOWN "
                "or NAME_UNKNOWN): not taken to mean it is gone",
                advice="something other than the registry answered 404 (a proxy or load "
                "balancer page?): check that the connection's URL reaches the registry itself; "
                "nothing is deleted on such an answer") from None
        return Descriptor(manifest.digest, manifest.media_type, len(manifest.raw))

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """A manifest's exact bytes, checked against the digest they were asked for or served as."""
        validate_repository(repository)
        validate_reference(reference)
        response = self._at("GET", repository, "manifests", reference, "get manifest",
                            headers={"Accept": mediatypes.MANIFEST_ACCEPT},
                            body_bound="max_manifest_bytes")
        raw = response.content
        self._count(len(raw))
        media_type = _media_type(response)
        digest = _digest_of(raw, reference if ":" in reference else "sha256:")
        expected = reference if ":" in reference else response.headers.get("Docker-Content-Digest")
        # No exception for schema 1: a signed one's digest is over its payload without the
        # signatures, which we do not verify, so its bytes are refused rather than trusted.
        if expected and digest != expected:
            schema1 = media_type in mediatypes.SCHEMA1
            raise DigestMismatchError(
                f"the manifest's bytes hash to {digest}" + (
                    " (a signed Docker schema 1 manifest, whose bytes cannot be verified "
                    "against its digest)" if schema1 else ""),
                registry=self.url, operation="get manifest", repository=repository,
                reference=expected, code="MANIFEST_UNVERIFIED" if schema1 else "DIGEST_INVALID",
            )
        try:
            # Parsed to be checked only: whoever reads it parses it again, within this bound.
            loads(raw, self.config.bounds.max_json_depth, registry=self.url,
                  operation="get manifest", repository=repository, reference=digest)
        except ValueError:
            raise RegistryError(
                "the manifest is not JSON", registry=self.url, operation="get manifest",
                repository=repository, reference=digest, code="MANIFEST_INVALID",
                advice="the registry serves something that is not a manifest under this "
                "digest: re-push the image on the registry",
            ) from None
        return Manifest(raw, media_type, digest)

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        """Push these exact bytes under a tag or digest; returns the digest the registry stored."""
        validate_repository(repository)
        validate_reference(reference)
        response = self._send(
            "PUT", f"/v2/{repository}/manifests/{reference}", operation="push manifest",
            repository=repository, reference=reference, headers={"Content-Type": media_type}, data=raw, ok=(200, 201, 202),
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
                            ok=(200, 202, 404))
        response.close()
        return response.status_code != 404

    # -- blobs ----------------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether the repository has the blob (a ``HEAD``)."""
        return self._head_blob(repository, digest).status_code != 404

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob in a repository (its ``HEAD``'s ``Content-Length``), or None when
        the repository does not have it. An answer without a length raises: an unknown size
        is never taken for a wrong one."""
        response = self._head_blob(repository, digest)
        if response.status_code == 404:
            return None
        size = _content_length(response)
        if size is None:
            raise RegistryError(
                "the registry answered the blob's HEAD without a valid Content-Length, so its "
                "size cannot be checked", registry=self.url, operation="check blob",
                repository=repository, reference=digest, status=response.status_code,
                advice="a proxy in front of the registry probably strips Content-Length from "
                "HEAD answers: configure it to pass the header on")
        return size

    def _head_blob(self, repository: str, digest: str) -> requests.Response:
        validate_repository(repository)
        validate_digest(digest)
        response = self._at("HEAD", repository, "blobs", digest, "check blob", ok=(200, 404))
        response.close()
        return response

    def _at(self, method: str, repository: str, kind: str, reference: str, operation: str,
            **send: Any) -> requests.Response:
        """``<method> /v2/<repository>/<kind>/<reference>``; the caller has validated the names."""
        return self._send(method, f"/v2/{repository}/{kind}/{reference}", operation=operation,
                          repository=repository, reference=reference, **send)

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
            repository=repository, reference=digest, headers=headers, stream=True,
            ok=(200, 206, 307, 302, 303), allow_redirects=False,
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
            # Whatever answers at the registry's address must not make us read internal
            # services (cloud metadata, admin ports): off the registry's own host:port, only
            # public addresses, unless the connection allows private storage.
            if not self.config.allow_private_redirects and not _same_origin(location, self.url):
                host = urlsplit(location).hostname or ""
                private = _non_public_address(host)
                if private is not None:
                    raise RegistryError(
                        f"refused to follow the storage redirect to {host!r} ({private}, not a "
                        "public address); nothing was sent there",
                        registry=self.url, operation="get blob", repository=repository,
                        reference=digest, status=response.status_code,
                        advice="if the registry's storage really is on a private network (MinIO, "
                        "an internal S3), set allow_private_redirects: true in the connection "
                        "extra; otherwise check the registry's storage redirect settings and "
                        "any proxy in front of it",
                    )
            response = self._send("GET", location, operation="get blob", repository=repository,
                                  reference=digest, headers=headers, stream=True,
                                  ok=(200, 206), storage=True)
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
            repository=repository, reference=digest, ok=(201, 202),
        )
        response.close()
        if response.status_code == 202:
            # The registry opened an upload instead; it expires on its own, but tidy up.
            self.cancel_upload(Upload(repository, self._location(response)))
            return False
        return True

    def start_upload(self, repository: str) -> Upload:
        """``POST``: open an upload session."""
        validate_repository(repository)
        response = self._send(
            "POST", f"/v2/{repository}/blobs/uploads/", operation="start upload",
            repository=repository, ok=(202,),
        )
        response.close()
        return Upload(repository, self._location(response))

    def push_blob(
        self, repository: str, digest: str, data: bytes | Iterable[bytes], size: int | None = None
    ) -> None:
        """Upload bytes, or a stream of ``size`` bytes read once (``upload_blob`` can resume;
        a stream that would have to be read again fails instead)."""
        if isinstance(data, bytes):
            self.upload_blob(repository, digest, len(data), lambda offset: (data[offset:],))
            return
        if size is None:
            raise ValueError("push_blob needs the size of a streamed body")
        self.upload_blob(repository, digest, size, _read_once(data, self.url, repository, digest))

    def upload_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        open_body: OpenBody,
        *,
        chunk_size: int | None = None,
        on_session: Callable[[Upload], None] | None = None,
    ) -> None:
        """Upload and commit a blob whose bytes ``open_body(offset)`` yields from ``offset`` on.

        Up to ``chunk_size`` bytes (default: any size) go up in one ``PUT ?digest=``; a larger
        blob in ``PATCH`` chunks, its last piece in the ``PUT``. Each request is a step run under
        the retry policy. After an interrupted step the next attempt asks the registry where
        the upload stands (``GET`` of its location: the ``Range`` offset) and carries on from
        there, reopening the body at that offset; a session the registry dropped is started
        over. The registry checks the digest before it commits, and a whole body read from a
        registry is checked before its last bytes go up.

        This client's policy is the only one retrying the copy: every request inside a step,
        ``open_body``'s own (the primary's download, on whichever client) included, gets one
        try, so a failure on either side spends the same budget of ``max_retries`` retries.
        The budget starts again each time the registry accepts a ``PATCH`` chunk (its offset
        moves on): it bounds the attempts without progress, and a blob sent in one ``PUT``
        gets ``max_retries`` retries in all.

        ``on_session`` is called with the session each time it is opened or moves on, so the
        caller can record it (a killed writer's sessions are cancelled by the next writer); on
        failure the session is cancelled here, with one try (the copy's retries are spent, and
        the registry purges a session left behind).
        """
        validate_repository(repository)
        validate_digest(digest)
        upload = _BlobUpload(self, repository, digest, size, chunk_size or max(size, 1),
                             _Source(open_body, size, self.url, repository, digest), on_session)
        interrupted = f"upload of {repository}@{digest} to {self.url} interrupted"
        try:
            while not upload.committed:
                self._retried(upload.step, interrupted)
        except BaseException:
            if upload.session is not None:
                with _one_try_each():
                    self.cancel_upload(upload.session)
            raise

    def _patch(self, upload: Upload, body: Body) -> Upload:
        """``PATCH`` ``body`` at ``upload.offset`` (one try); returns the advanced session."""
        response = self._send(
            "PATCH", upload.location, operation="upload chunk", repository=upload.repository,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{upload.offset}-{upload.offset + len(body) - 1}",
            },
            data=body, ok=(202,),
        )
        response.close()
        return Upload(upload.repository, self._location(response), _range_end(response))

    def _commit(self, upload: Upload, digest: str, body: Body) -> None:
        """``PUT ?digest=`` with the last bytes (one try): the registry verifies and commits."""
        sep = "&" if "?" in upload.location else "?"
        self._send(
            "PUT", f"{upload.location}{sep}{urlencode({'digest': digest})}",
            operation="commit blob", repository=upload.repository, reference=digest,
            headers={"Content-Type": "application/octet-stream"},
            data=body if len(body) else b"", ok=(201, 204),
        ).close()

    def upload_status(self, upload: Upload) -> Upload:
        """Ask where an interrupted upload stands (the offset to resume from)."""
        response = self._send(
            "GET", upload.location, operation="check upload", repository=upload.repository,
            ok=(204,),
        )
        response.close()
        return Upload(upload.repository, self._location(response), _range_end(response))

    def cancel_upload(self, upload: Upload) -> bool:
        """End an upload session (``DELETE`` needs the delete action); True once it is gone."""
        try:
            self._send(
                "DELETE", upload.location, operation="cancel upload",
                repository=upload.repository, ok=(204, 404),
            ).close()
            return True
        except RegistryError as exc:  # the registry purges it in time; not worth failing for
            log.info("could not cancel upload in %s: %s", upload.repository, exc)
            return False

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.bytes_read += n

    # -- transport ------------------------------------------------------------------------------

    @property
    def _timeout(self) -> tuple[float, float]:
        return (min(10.0, self.config.timeout_seconds), self.config.timeout_seconds)

    def _location(self, response: requests.Response) -> str:
        """An upload URL from ``Location``; refused unless it is on our own registry."""
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(
                "the registry sent no upload Location", registry=self.url,
                operation="upload", status=response.status_code,
            )
        return self._own_url(urljoin(response.url, location), "upload", None, "Location")


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
            body = loads(response.content, self.config.bounds.max_json_depth, registry=self.url,
                         operation=operation, repository=repository)
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
        repository: str | None = None,
        reference: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | Body | None = None,
        stream: bool = False,
        ok: Sequence[int] = (200,),
        allow_redirects: bool = True,
        authenticate: bool = True,
        storage: bool = False,
        body_bound: str = "max_error_bytes",
    ) -> requests.Response:
        """One request to this registry (or, ``storage``, to the storage backend it redirected a
        download to: no credentials), under the retry policy (``_retried``: one try inside an
        operation a policy already retries, such as a blob upload's step). Errors are typed,
        with advice.

        Unless ``stream``, the answer's body is read here, within the bound ``body_bound``
        names (``config.Bounds``; an error answer's within ``max_error_bytes``)."""
        if urlsplit(path).scheme:  # a URL the registry handed back, already checked
            url = path
        else:
            url = urljoin(self.url + "/", path.lstrip("/"))
        if not storage:
            url = self._own_url(url, operation, repository, "URL")
        if method not in ("GET", "HEAD") and not self.writable:
            raise PermissionError(
                f"refusing to {method} {repository or urlsplit(url).path} on {self.url}: this "
                "client is read-only (the primary is never written to)"
            )
        if authenticate and not storage:
            self.auth  # noqa: B018 - built (and attached to the session) before the first request
            auth = None  # the session's
        else:
            auth = no_auth

        def attempt() -> requests.Response:
            return self._attempt(method, url, operation, repository, reference, headers, data,
                                 stream, ok, allow_redirects, auth, storage, body_bound)

        return self._retried(attempt)

    def _attempt(
        self, method: str, url: str, operation: str, repository: str | None,
        reference: str | None, headers: dict[str, str] | None, data: bytes | Body | None,
        stream: bool, ok: Sequence[int], allow_redirects: bool, auth: Any, storage: bool,
        body_bound: str,
    ) -> requests.Response:
        """One try; redirects are followed here, only within the registry (requests would
        follow them anywhere)."""
        redirects = 0
        while True:
            try:
                # Always streamed: requests would read any body whole, however large.
                response = self.session.request(
                    method, url, headers=headers, data=data, stream=True,
                    timeout=self._timeout, allow_redirects=False, auth=auth,
                )
                if not stream or response.status_code not in ok:
                    bound = body_bound if response.status_code in ok else "max_error_bytes"
                    # Kept where ``response.content`` and ``.json()`` read it.
                    response._content = read_body(
                        response, getattr(self.config.bounds, bound), bound,
                        registry=self.url, operation=operation, repository=repository,
                        reference=reference, status=response.status_code)
            except requests.RequestException as exc:
                raise self._connection_error(exc, operation, repository, reference) from None
            if response.status_code in ok:
                return response
            if (response.is_redirect and allow_redirects and method in ("GET", "HEAD")
                    and redirects < MAX_REDIRECTS):
                location = urljoin(response.url, response.headers["Location"])
                response.close()
                url = self._own_url(location, operation, repository, "redirect")
                redirects += 1
                continue
            if storage:
                raise self._storage_error(response, repository, reference)
            raise self._error(response, operation, repository, reference)

    def _retried(self, operation: Callable[[], T], interrupted: str | None = None) -> T:
        """``operation()`` under this client's retry policy, which then owns every request made
        inside it; inside an operation another policy retries, one try (see
        ``_retried_by_outer_policy``). ``interrupted`` begins each retry's log line."""
        if _retried_by_outer_policy.get():
            return operation()
        retrying = (self.retrying.copy(before_sleep=partial(self._log_retry,
                                                            interrupted=interrupted))
                    if interrupted else self.retrying.copy())
        with _one_try_each():
            return retrying(operation)

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

    def _connection_error(
        self, exc: Exception, operation: str, repository: str | None, reference: str | None
    ) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"no answer from the registry ({type(exc).__name__})",
            registry=self.url, operation=operation, repository=repository, reference=reference,
            advice="check that the registry is running and reachable at the connection's URL; "
            "the next run retries",
        )

    def _storage_error(
        self, response: requests.Response, repository: str | None, digest: str | None
    ) -> RegistryError:
        response.close()
        status = response.status_code
        kind = RegistryUnavailableError if status in RETRY_STATUSES else RegistryError
        return kind(
            "the storage backend the registry redirected to refused the download",
            registry=self.url, operation="get blob", repository=repository, reference=digest,
            status=status,
            advice="check the registry's storage backend (its redirect URLs, credentials and "
            "clock: presigned URLs expire); the next run retries",
        )

    def _error(
        self,
        response: requests.Response,
        operation: str,
        repository: str | None,
        reference: str | None,
    ) -> RegistryError:
        status = response.status_code
        code = message = detail = None
        try:
            body = loads(response.content, self.config.bounds.max_json_depth)
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
            detail = f"the error body is not the registry's JSON error shape ({_body_shape(response)})"
        response.close()
        kwargs: dict[str, Any] = dict(
            registry=self.url, operation=operation, repository=repository, reference=reference,
            status=status, code=code, detail=detail,
        )
        if status in (401, 403):
            challenge = Challenge.parse(response.headers.get("WWW-Authenticate"))
            sent = response.request
            # Not ``self.auth``: this may be the probe that builds it.
            reason = (self._auth or Auth()).explain_refusal(
                challenge, scopes_for(sent.method or "GET", sent.url or ""),
                sent.headers.get("Authorization"))
            kwargs["code"] = code or ("DENIED" if status == 403 else "UNAUTHORIZED")
            if challenge and challenge.error:
                reason = f"{reason} [{challenge.error}]"
            return RegistryAuthError(reason, **kwargs)
        if status == 404:
            return NotFoundError(message or "not found", **kwargs)
        if status in RETRY_STATUSES:
            return RegistryUnavailableError(
                message or f"the registry answered {status}", retry_after=_retry_after(response),
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


class _Pages:
    """The pages of one listing: the next page from ``Link: <...>; rel="next"``, refused
    unless on our own registry, once already visited (a loop), or past ``max_listing_pages``."""

    def __init__(self, client: RegistryClient, operation: str, repository: str | None) -> None:
        self.client = client
        self.operation = operation
        self.repository = repository
        self.visited: set[str] = set()

    def next(self, response: requests.Response) -> str | None:
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        client, bound = self.client, self.client.config.bounds.max_listing_pages
        url = client._own_url(urljoin(response.url, link), self.operation, self.repository,
                              "Link")
        where = dict(registry=client.url, operation=self.operation, repository=self.repository)
        if url in self.visited:
            raise RegistryError(
                "the registry's Link header leads back to a page already read (a loop)",
                code="PAGINATION_LOOP", **where,
                advice="the registry or a proxy in front of it rewrites pagination links: "
                "check its http.host and any proxy; other listings are not affected")
        if len(self.visited) + 1 >= bound:
            raise LimitExceeded(f"the listing goes on past {bound} pages",
                                code="LIMIT_EXCEEDED", setting="max_listing_pages",
                                limit=bound, **where)
        self.visited.add(url)
        return url


class Body:
    """A request body of known length that can be read again, like Go's ``GetBody``: each read
    calls ``open``, so a retried or re-authenticated request sends it anew. requests sends it
    with a Content-Length."""

    def __init__(self, open_body: Callable[[], Iterable[bytes]], size: int) -> None:
        self._open = open_body
        self._size = size

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._open())

    def __len__(self) -> int:
        return self._size


class _Source:
    """A blob's bytes for upload requests: one stream read in order across chunks, reopened
    at the offset a request starts from when the stream is elsewhere (a request sent again,
    the registry holding another offset) or broke."""

    def __init__(self, open_body: OpenBody, size: int, registry: str, repository: str,
                 digest: str) -> None:
        self._open = open_body
        self._size = size
        self._where = dict(registry=registry, operation="upload blob", repository=repository,
                           reference=digest, code="SIZE_INVALID")
        self._stream: Iterator[bytes] | None = None
        self._position = 0  # of the stream's next byte
        self._pending = b""

    def body(self, offset: int, length: int) -> Body:
        return Body(lambda: self._read(offset, length), length)

    def _read(self, offset: int, length: int) -> Iterator[bytes]:
        if self._stream is None or self._position != offset:
            if self._stream is not None and hasattr(self._stream, "close"):
                self._stream.close()
            self._stream, self._position, self._pending = iter(self._open(offset)), offset, b""
        left = length
        while left:
            piece = self._pending or self._next()
            if piece is None:
                raise RegistryError(f"the blob's bytes ended at byte {self._position} of "
                                    f"{self._size}", **self._where)
            piece, self._pending = piece[:left], piece[left:]
            left -= len(piece)
            self._position += len(piece)
            if not left and self._position == self._size:
                # Read to the end before the last piece goes up: a whole blob read from a
                # registry is verified there, so a mismatch aborts the request uncommitted.
                if self._pending or self._next() is not None:
                    raise RegistryError(f"the blob has more bytes than its size {self._size}",
                                        **self._where)
            yield piece

    def _next(self) -> bytes | None:
        """The stream's next piece (skipping empty ones), None at its end."""
        assert self._stream is not None
        try:
            return next((piece for piece in self._stream if piece), None)
        except BaseException:
            # A broken stream has nothing more to give: the next attempt opens a new one,
            # even at the same offset.
            self._stream = None
            raise


@dataclass
class _BlobUpload:
    """One blob upload between the steps of ``RegistryClient.upload_blob``."""

    client: RegistryClient
    repository: str
    digest: str
    size: int
    chunk_size: int
    source: _Source
    on_session: Callable[[Upload], None] | None
    session: Upload | None = None
    interrupted: bool = False
    committed: bool = False

    def step(self) -> None:
        """One request: the next chunk, or the last piece and the commit (after an interruption,
        first ask the registry where the upload stands)."""
        try:
            if self.session is None:
                self._moved(self.client.start_upload(self.repository))
            elif self.interrupted:
                self._resume()
                if self.committed:
                    return
            self.interrupted = False
            offset = self.session.offset
            rest = self.size - offset
            if rest > self.chunk_size:
                self._moved(self.client._patch(self.session,
                                               self.source.body(offset, self.chunk_size)))
            else:
                self.client._commit(self.session, self.digest, self.source.body(offset, rest))
                self.committed = True
        except BaseException:
            self.interrupted = True
            raise

    def _resume(self) -> None:
        assert self.session is not None
        confirmed = self.session.offset
        try:
            status = self.client.upload_status(self.session)
        except RegistryError as exc:
            if exc.code not in ("BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"):
                raise
            # The registry dropped the session (distribution cancels one whose bytes do not
            # match its state, e.g. after a request cut mid-body), or the commit went through
            # before the answer was lost.
            if self.client.has_blob(self.repository, self.digest):
                self.committed = True
                return
            log.warning("upload of %s@%s interrupted at byte %d; the registry dropped the "
                        "session (%s): starting over", self.repository, self.digest, confirmed,
                        exc.code)
            self.client.cancel_upload(self.session)
            self.session = None
            self._moved(self.client.start_upload(self.repository))
            return
        log.warning("upload of %s@%s interrupted at byte %d; resuming at byte %d, the "
                    "registry's offset", self.repository, self.digest, confirmed, status.offset)
        self._moved(status)

    def _moved(self, session: Upload) -> None:
        self.session = session
        if self.on_session:
            self.on_session(session)


def _read_once(data: Iterable[bytes], registry: str, repository: str, digest: str) -> OpenBody:
    """``open_body`` for a stream that can be read only once, from its start."""
    opened = threading.Event()

    def open_body(offset: int) -> Iterable[bytes]:
        if opened.is_set() or offset:
            raise RegistryError(
                "the upload was interrupted and its body is a stream that cannot be read again",
                registry=registry, operation="upload blob", repository=repository,
                reference=digest,
                advice="rerun; to resume inside the client, call upload_blob with a function "
                "that opens the body at an offset",
            )
        opened.set()
        return data

    return open_body


def _retry_after(response: requests.Response) -> float | None:
    """``Retry-After`` in seconds (seconds or an HTTP date, parsed as urllib3 does)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return Retry().parse_retry_after(value)
    except InvalidHeader:  # an unparseable header: our own backoff
        return None


def _detect_auth(challenge: Challenge | None, config: RegistryConfig) -> str:
    if challenge is None:
        return "anonymous"
    if challenge.scheme == "basic":
        return "basic"
    return "jwt" if config.private_key else "token"


def _media_type(response: requests.Response) -> str:
    # Interned: a listing or plan of 100,000 tags holds a handful of distinct media types.
    return sys.intern((response.headers.get("Content-Type") or "").split(";", 1)[0].strip())


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


def _content_length(response: requests.Response) -> int | None:
    """The answer's ``Content-Length``; None when it is missing or not a whole number."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() else None


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
