"""A client for the Distribution API v2 / OCI distribution spec: catalog, tags, manifests and
blobs, one method per endpoint, on a ``Transport`` (``transport.py``: authentication, the retry
policy, URL confinement). The endpoints' requests and answers are read in ``manifests.py``,
``blobs.py`` (downloads) and ``upload.py`` (resumable blob uploads); the listings here.

One ``RegistryClient`` per registry, shared by a thread pool. Names, tags and digests are
typed (``reference.py``): each method takes them so, and validates plain text (once) before it
reaches a URL; manifests are checked against their digest and bounded in size and depth; blob
bytes are hashed as they stream, so a digest mismatch is an error and never a committed blob.
Every failure surfaces as a typed ``RegistryError``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

from registry_replication.transport import blobs, manifests
from registry_replication.transport import upload as uploads
from registry_replication.transport.auth import Auth
from registry_replication.transport.bandwidth import BandwidthLimit
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import NotFoundError
from registry_replication.transport.manifests import Descriptor, Manifest
from registry_replication.transport.reference import Digest, Reference, Repository, reference_of
from registry_replication.transport.responses import Pages
from registry_replication.transport.transport import Request, Transport
from registry_replication.transport.upload import OpenBody, Upload


class RegistryClient:
    """Talks to one registry. Read-only unless ``writable`` (the primary is never written)."""

    def __init__(
        self, config: RegistryConfig, *, writable: bool = False, auth: Auth | None = None
    ) -> None:
        self.transport = Transport(config, writable=writable, auth=auth)
        self.bytes_read = 0  # blob and manifest bytes received, for benchmarks and summaries
        self._count_lock = threading.Lock()
        self.bandwidth = (
            BandwidthLimit(config.max_bytes_per_second) if config.max_bytes_per_second else None
        )

    # The registry's config, URL and whether it may be written: its transport's.

    @property
    def config(self) -> RegistryConfig:
        return self.transport.config

    @property
    def url(self) -> str:
        return self.transport.url

    @property
    def writable(self) -> bool:
        return self.transport.writable

    def ping(self) -> None:
        """``GET /v2/`` with credentials: raises unless the registry accepts us."""
        self.transport.send(Request("GET", "/v2/", "ping")).close()

    # -- listing ------------------------------------------------------------------------------

    def catalog(self, page_size: int = 1000) -> Iterator[str]:
        """Every repository, following ``Link`` pagination (``n``/``last``)."""
        pages = Pages(self.transport, "list catalog", None)
        path: str | None = f"/v2/_catalog?{urlencode({'n': page_size})}"
        while path:
            response = self.transport.send(
                Request("GET", path, "list catalog", body_bound="max_listing_bytes")
            )
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
                response = self.transport.send(
                    Request("GET", path, "list tags", repository, body_bound="max_listing_bytes")
                )
            except NotFoundError as exc:
                if exc.code == "NAME_UNKNOWN" and not tags:
                    return []  # a repository holding blobs but no tags
                raise
            tags.extend(pages.entries(response, "tags"))
            path = pages.next(response)
        return tags

    # -- manifests (``manifests.py``) ------------------------------------------------------------

    def head_manifest(
        self, repository: Repository, reference: Reference, *, known: Descriptor | None = None
    ) -> Descriptor | None:
        """The digest, media type and size of a tag or digest; None when it does not exist.

        ``known``: what the caller last saw there; the request is then conditional, and a 304
        returns it. A 404 from the primary (a read-only client) is confirmed by a ``GET`` before
        it counts as gone (``manifests.head``).
        """
        repository, reference = Repository.of(repository), reference_of(reference)
        return manifests.head(self.transport, repository, reference, known, self._count)

    def get_manifest(self, repository: Repository, reference: Reference) -> Manifest:
        """A manifest's exact bytes, checked against the digest they were asked for or served as."""
        repository, reference = Repository.of(repository), reference_of(reference)
        return manifests.get(self.transport, repository, reference, self._count)

    def put_manifest(
        self, repository: Repository, reference: Reference, raw: bytes, media_type: str
    ) -> Digest:
        """Push these exact bytes under a tag or digest; returns the digest the registry stored."""
        repository, reference = Repository.of(repository), reference_of(reference)
        return manifests.put(self.transport, repository, reference, raw, media_type)

    def delete_manifest(self, repository: Repository, digest: Digest) -> bool:
        """Delete by digest (untagging every tag on it); False when it was already gone."""
        repository, digest = Repository.of(repository), Digest.of(digest)
        return manifests.delete(self.transport, repository, digest)

    # -- blobs (``blobs.py``) --------------------------------------------------------------------

    def has_blob(self, repository: Repository, digest: Digest) -> bool:
        """Whether the repository has the blob (a ``HEAD``)."""
        repository, digest = Repository.of(repository), Digest.of(digest)
        return blobs.head(self.transport, repository, digest).status != 404

    def blob_size(self, repository: Repository, digest: Digest) -> int | None:
        """The size of a blob in a repository (its ``HEAD``'s ``Content-Length``), or None when
        the repository does not have it; an answer without a length raises."""
        repository, digest = Repository.of(repository), Digest.of(digest)
        return blobs.size(self.transport, repository, digest)

    def read_blob(
        self,
        repository: Repository,
        digest: Digest,
        *,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = blobs.CHUNK_SIZE,
    ) -> Iterator[bytes]:
        """Stream a blob's bytes (``length`` of them from ``offset``; default: all), following
        redirects to storage backends, counted and paced by the bandwidth limit.

        A whole blob is hashed as it passes and a mismatch with ``digest`` raises
        ``DigestMismatchError`` after the last chunk, before the caller can commit it.
        """
        repository, digest = Repository.of(repository), Digest.of(digest)
        return blobs.read(
            self.transport,
            repository,
            digest,
            offset=offset,
            length=length,
            chunk_size=chunk_size,
            received=self._received,
        )

    # -- uploads (``upload.py``) ----------------------------------------------------------------

    def mount_blob(
        self, repository: Repository, digest: Digest, from_repository: Repository
    ) -> bool:
        """Cross-repository mount on this registry; False when it could not mount."""
        repository, digest = Repository.of(repository), Digest.of(digest)
        from_repository = Repository.of(from_repository)
        return uploads.mount(self.transport, repository, digest, from_repository)

    def cancel_upload(self, upload: Upload) -> bool:
        """End an upload session (``DELETE`` needs the delete action); True once it is gone."""
        return uploads.cancel(self.transport, upload)

    def push_blob(
        self,
        repository: Repository,
        digest: Digest,
        data: bytes | Iterable[bytes],
        size: int | None = None,
    ) -> None:
        """Upload bytes, or a stream of ``size`` bytes read once (``upload_blob`` can resume;
        a stream that would have to be read again fails instead)."""
        if isinstance(data, bytes):
            self.upload_blob(repository, digest, len(data), lambda offset: (data[offset:],))
            return
        if size is None:
            raise ValueError("push_blob needs the size of a streamed body")
        self.upload_blob(
            repository, digest, size, uploads.read_once(data, self.url, repository, digest)
        )

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
        uploads.upload_blob(
            self.transport,
            repository,
            digest,
            size,
            open_body,
            exists=lambda: self.has_blob(repository, digest),
            chunk_size=chunk_size,
            on_session=on_session,
        )

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
