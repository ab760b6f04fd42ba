"""A client for the Distribution API v2 / OCI distribution spec: catalog, tags, manifests and
blobs, one method per endpoint, on a ``Transport`` (``transport.py``: authentication, the retry
policy, URL confinement; ``upload.py``: resumable blob uploads).

One ``RegistryClient`` per registry, shared by a thread pool. Names, tags and digests are
typed (``reference.py``): each method takes them so, and validates plain text (once) before it
reaches a URL; manifests are checked against their digest and bounded in size and depth; blob
bytes are hashed as they stream, so a digest mismatch is an error and never a committed blob.
Every failure surfaces as a typed ``RegistryError``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

import urllib3

from registry_replication.transport import mediatypes
from registry_replication.transport import upload as uploads
from registry_replication.transport.auth import Auth
from registry_replication.transport.bandwidth import BandwidthLimit
from registry_replication.transport.bounded import loads
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import (
    DigestMismatchError,
    NotFoundError,
    RegistryError,
)
from registry_replication.transport.reference import (
    Digest,
    InvalidReference,
    Reference,
    Repository,
    reference_of,
)
from registry_replication.transport.responses import (
    Pages,
    connection_error,
    content_length,
    media_type,
)
from registry_replication.transport.transport import Request, Transport
from registry_replication.transport.upload import OpenBody, Upload
from registry_replication.transport.wire import Response

CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class Descriptor:
    """What ``HEAD`` of a manifest tells: its digest, media type and size (None: not known, a
    descriptor recalled from a record rather than read from a registry)."""

    digest: Digest
    media_type: str
    size: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes as the registry served them, and their digest."""

    raw: bytes
    media_type: str
    digest: Digest

    @cached_property
    def json(self) -> dict[str, Any]:
        import json

        return json.loads(self.raw)


class RegistryClient:
    """Talks to one registry. Read-only unless ``writable`` (the primary is never written)."""

    def __init__(
        self, config: RegistryConfig, *, writable: bool = False, auth: Auth | None = None
    ) -> None:
        self.config = config
        self.url = config.url
        self.writable = writable
        self.transport = Transport(config, writable=writable, auth=auth)
        self.bytes_read = 0  # blob and manifest bytes received, for benchmarks and summaries
        self._count_lock = threading.Lock()
        self.bandwidth = (BandwidthLimit(config.max_bytes_per_second)
                          if config.max_bytes_per_second else None)

    def ping(self) -> None:
        """``GET /v2/`` with credentials: raises unless the registry accepts us."""
        self.transport.send(Request("GET", "/v2/", "ping")).close()

    # -- listing ------------------------------------------------------------------------------

    def catalog(self, page_size: int = 1000) -> Iterator[str]:
        """Every repository, following ``Link`` pagination (``n``/``last``)."""
        pages = Pages(self.transport, "list catalog", None)
        path: str | None = f"/v2/_catalog?{urlencode({'n': page_size})}"
        while path:
            response = self.transport.send(Request("GET", path, "list catalog",
                                                   body_bound="max_listing_bytes"))
            # Entries are yielded as the registry sent them (even non-strings): the snapshot
            # reports a bad entry as that repository's problem.
            yield from pages.entries(response, "repositories")
            path = pages.next(response)

    def tags(self, repository: Repository) -> list[Any]:
        """Every tag of a repository (distribution 2.8 returns them in one page), as sent."""
        repository = Repository.of(repository)
        pages = Pages(self.transport, "list tags", repository)
        path: str | None = f"/v2/{repository}/tags/list"
        tags: list[Any] = []
        while path:
            try:
                response = self.transport.send(Request("GET", path, "list tags", repository,
                                                       body_bound="max_listing_bytes"))
            except NotFoundError as exc:
                if exc.code == "NAME_UNKNOWN" and not tags:
                    return []  # a repository holding blobs but no tags
                raise
            tags.extend(pages.entries(response, "tags"))
            path = pages.next(response)
        return tags

    # -- manifests ------------------------------------------------------------------------------

    def head_manifest(
        self, repository: Repository, reference: Reference, *, known: Descriptor | None = None
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
        repository, reference = Repository.of(repository), reference_of(reference)
        headers = {"Accept": mediatypes.MANIFEST_ACCEPT}
        if known is not None:
            headers["If-None-Match"] = f'"{known.digest}"'
        response = self._at("HEAD", repository, "manifests", reference, "check manifest",
                            headers=headers, ok=(200, 304, 404))
        response.close()
        if response.status == 304 and known is not None:
            return known
        if response.status == 404:
            return None if self.writable else self._gone_or_here(repository, reference)
        digest = _served_digest(response, registry=self.url, operation="check manifest",
                                repository=repository, reference=reference)
        if not digest:
            # Registries that omit the header on HEAD: fall back to fetching the bytes.
            manifest = self.get_manifest(repository, reference)
            return Descriptor(manifest.digest, manifest.media_type, len(manifest.raw))
        # A manifest's size is its length: a proxy that strips it costs the size, not the check.
        return Descriptor(digest, media_type(response), content_length(response) or 0)

    def _gone_or_here(self, repository: Repository, reference: Reference) -> Descriptor | None:
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

    def get_manifest(self, repository: Repository, reference: Reference) -> Manifest:
        """A manifest's exact bytes, checked against the digest they were asked for or served as."""
        repository, reference = Repository.of(repository), reference_of(reference)
        response = self._at("GET", repository, "manifests", reference, "get manifest",
                            headers={"Accept": mediatypes.MANIFEST_ACCEPT},
                            body_bound="max_manifest_bytes")
        self._count(len(response.content))
        return _checked_manifest(response, reference, self.config.bounds.max_json_depth,
                                 registry=self.url, operation="get manifest",
                                 repository=repository)

    def put_manifest(self, repository: Repository, reference: Reference, raw: bytes,
                     media_type: str) -> Digest:
        """Push these exact bytes under a tag or digest; returns the digest the registry stored."""
        repository, reference = Repository.of(repository), reference_of(reference)
        response = self._at("PUT", repository, "manifests", reference, "push manifest",
                            headers={"Content-Type": media_type}, data=raw, ok=(200, 201, 202))
        response.close()
        digest = _digest_of(raw)
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError(
                f"the registry stored the manifest as {stored}, not as {digest}",
                registry=self.url, operation="push manifest", repository=repository,
                reference=reference, code="DIGEST_INVALID",
                advice="the registry rewrote the manifest; it cannot hold an exact replica",
            )
        return digest

    def delete_manifest(self, repository: Repository, digest: Digest) -> bool:
        """Delete by digest (untagging every tag on it); False when it was already gone."""
        repository, digest = Repository.of(repository), Digest.of(digest)
        response = self._at("DELETE", repository, "manifests", digest, "delete manifest",
                            ok=(200, 202, 404))
        response.close()
        return response.status != 404

    # -- blobs ----------------------------------------------------------------------------------

    def has_blob(self, repository: Repository, digest: Digest) -> bool:
        """Whether the repository has the blob (a ``HEAD``)."""
        return self._head_blob(repository, digest).status != 404

    def blob_size(self, repository: Repository, digest: Digest) -> int | None:
        """The size of a blob in a repository (its ``HEAD``'s ``Content-Length``), or None when
        the repository does not have it. An answer without a length raises: an unknown size
        is never taken for a wrong one."""
        response = self._head_blob(repository, digest)
        if response.status == 404:
            return None
        size = content_length(response)
        if size is None:
            raise RegistryError(
                "the registry answered the blob's HEAD without a valid Content-Length, so its "
                "size cannot be checked", registry=self.url, operation="check blob",
                repository=repository, reference=digest, status=response.status,
                advice="a proxy in front of the registry probably strips Content-Length from "
                "HEAD answers: configure it to pass the header on")
        return size

    def _head_blob(self, repository: Repository, digest: Digest) -> Response:
        repository, digest = Repository.of(repository), Digest.of(digest)
        response = self._at("HEAD", repository, "blobs", digest, "check blob", ok=(200, 404))
        response.close()
        return response

    def _at(self, method: str, repository: Repository, kind: str, reference: Reference,
            operation: str, **fields: Any) -> Response:
        """``<method> /v2/<repository>/<kind>/<reference>`` (the other ``Request`` fields:
        ``fields``)."""
        return self.transport.send(Request(method, f"/v2/{repository}/{kind}/{reference}",
                                           operation, repository, reference, **fields))

    def read_blob(
        self,
        repository: Repository,
        digest: Digest,
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
        repository, digest = Repository.of(repository), Digest.of(digest)
        partial = bool(offset) or length is not None
        headers = {}
        if partial:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = self._at("GET", repository, "blobs", digest, "get blob", headers=headers,
                            stream=True, ok=(200, 206, 307, 302, 303), allow_redirects=False)
        if response.redirect:
            response.close()
            # Storage backends (S3, GCS) get a presigned URL, never the registry's token.
            location = self.transport.storage_url(response, repository, digest)
            response = self.transport.send(Request(
                "GET", location, "get blob", repository, digest, headers=headers, stream=True,
                ok=(200, 206), storage=True))
        if partial and response.status != 206:
            response.close()
            raise RegistryError(
                f"the registry ignored the Range request {headers['Range']}",
                registry=self.url, operation="get blob", repository=repository, reference=digest,
                status=response.status,
            )
        return _chunks(response, chunk_size, digest if not partial else None, self._received,
                       registry=self.url, operation="get blob", repository=repository,
                       reference=digest)

    # -- uploads (``upload.py``) ----------------------------------------------------------------

    def mount_blob(self, repository: Repository, digest: Digest,
                   from_repository: Repository) -> bool:
        """Cross-repository mount on this registry; False when it could not mount."""
        repository, digest = Repository.of(repository), Digest.of(digest)
        from_repository = Repository.of(from_repository)
        return uploads.mount(self.transport, repository, digest, from_repository)

    def cancel_upload(self, upload: Upload) -> bool:
        """End an upload session (``DELETE`` needs the delete action); True once it is gone."""
        return uploads.cancel(self.transport, upload)

    def push_blob(
        self, repository: Repository, digest: Digest, data: bytes | Iterable[bytes],
        size: int | None = None
    ) -> None:
        """Upload bytes, or a stream of ``size`` bytes read once (``upload_blob`` can resume;
        a stream that would have to be read again fails instead)."""
        if isinstance(data, bytes):
            self.upload_blob(repository, digest, len(data), lambda offset: (data[offset:],))
            return
        if size is None:
            raise ValueError("push_blob needs the size of a streamed body")
        self.upload_blob(repository, digest, size,
                         uploads.read_once(data, self.url, repository, digest))

    def upload_blob(
        self,
        repository: Repository,
        digest: Digest,
        size: int,
        open_body: OpenBody,
        *,
        chunk_size: int | None = None,
        on_session: Callable[[Upload], None] | None = None,
    ) -> None:
        """Upload and commit a blob whose bytes ``open_body(offset)`` yields from ``offset`` on:
        ``PATCH`` chunks of ``chunk_size`` (default: one ``PUT``), the last piece in the
        ``PUT ?digest=`` that commits it, each step under this client's retry policy and resumed
        from the registry's offset after an interruption (``upload.upload_blob``).
        ``on_session`` is called with the session each time it is opened or moves on."""
        repository, digest = Repository.of(repository), Digest.of(digest)
        uploads.upload_blob(self.transport, repository, digest, size, open_body,
                            exists=lambda: self.has_blob(repository, digest),
                            chunk_size=chunk_size, on_session=on_session)

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.bytes_read += n

    def _received(self, n: int) -> None:
        """``n`` more bytes of a blob: counted, and paced by the bandwidth limit."""
        self._count(n)
        if self.bandwidth:
            self.bandwidth.consume(n)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r}, writable={self.writable})"


def _digest_of(raw: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}")


def _served_digest(response: Response, **where: Any) -> Digest | None:
    """The answer's ``Docker-Content-Digest`` (None without one), refused unless valid."""
    digest = response.headers.get("Docker-Content-Digest")
    if digest:
        try:
            return Digest(digest)
        except InvalidReference:
            raise RegistryError(
                f"the registry answered with an invalid Docker-Content-Digest {digest[:100]!r}",
                status=response.status, code="DIGEST_INVALID", **where,
                advice="the registry (or a proxy in front of it) sends a broken digest header "
                "for this manifest: check the registry's version and any proxy, or re-push the "
                "tag; other repositories are not affected",
            ) from None
    return None


def _checked_manifest(response: Response, reference: Reference, max_json_depth: int,
                      **where: Any) -> Manifest:
    """The manifest an answer holds, checked against the digest it was asked for (or served
    as) and parsed once within ``max_json_depth``; ``where`` names it in errors."""
    raw = response.content
    kind = media_type(response)
    by_digest = isinstance(reference, Digest)
    digest = _digest_of(raw, reference.algorithm) if by_digest else _digest_of(raw)
    expected = reference if by_digest else response.headers.get("Docker-Content-Digest")
    # No exception for schema 1: a signed one's digest is over its payload without the
    # signatures, which we do not verify, so its bytes are refused rather than trusted.
    if expected and digest != expected:
        schema1 = kind in mediatypes.SCHEMA1
        raise DigestMismatchError(
            f"the manifest's bytes hash to {digest}" + (
                " (a signed Docker schema 1 manifest, whose bytes cannot be verified "
                "against its digest)" if schema1 else ""),
            reference=expected, code="MANIFEST_UNVERIFIED" if schema1 else "DIGEST_INVALID",
            **where,
        )
    try:
        # Parsed to be checked only: whoever reads it parses it again, within this bound.
        loads(raw, max_json_depth, reference=digest, **where)
    except ValueError:
        raise RegistryError(
            "the manifest is not JSON", reference=digest, code="MANIFEST_INVALID", **where,
            advice="the registry serves something that is not a manifest under this "
            "digest: re-push the image on the registry",
        ) from None
    return Manifest(raw, kind, digest)


def _chunks(response: Response, chunk_size: int, verify: str | None,
            received: Callable[[int], None], **where: Any) -> Iterator[bytes]:
    """A blob's bytes as they stream, each chunk passed to ``received``; hashed on the way
    when ``verify`` is the whole blob's digest, a mismatch raising after the last chunk."""
    hasher = hashlib.new(verify.split(":", 1)[0]) if verify else None
    try:
        for chunk in response.stream(chunk_size):
            received(len(chunk))
            if hasher:
                hasher.update(chunk)
            yield chunk
    except urllib3.exceptions.HTTPError as exc:
        raise connection_error(exc, **where) from None
    finally:
        response.close()
    if hasher and f"{hasher.name}:{hasher.hexdigest()}" != verify:
        raise DigestMismatchError(f"the blob's bytes hash to {hasher.name}:{hasher.hexdigest()}",
                                  code="DIGEST_INVALID", **where)
