"""Blob reads (the Distribution spec's "pulling blobs"): whether a repository has a blob, its
size, and its bytes, one request per function as ``RegistryClient`` runs them (uploads:
``upload.py``).

Each function sends its request through a ``Transport`` (the caller has validated the names).
A download a registry redirects to its storage backend is fetched there without credentials
(``Confinement.storage_url``); a whole blob is hashed as it streams, so a digest mismatch is an
error before the caller can commit the bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import urllib3

from registry_replication.transport.errors import DigestMismatchError, RegistryError, where
from registry_replication.transport.reference import Digest, Repository
from registry_replication.transport.responses import connection_error, content_length
from registry_replication.transport.transport import Request, Transport
from registry_replication.transport.wire import Response

CHUNK_SIZE = 1 << 20


def head(transport: Transport, repository: Repository, digest: Digest) -> Response:
    """The answer to the blob's ``HEAD`` (200, or 404 when the repository does not have it)."""
    response = transport.send(
        Request.at("HEAD", repository, "blobs", digest, "check blob", ok=(200, 404))
    )
    response.close()
    return response


def size(transport: Transport, repository: Repository, digest: Digest) -> int | None:
    """The size of a blob in a repository (its ``HEAD``'s ``Content-Length``), or None when
    the repository does not have it. An answer without a length raises: an unknown size
    is never taken for a wrong one."""
    response = head(transport, repository, digest)
    if response.status == 404:
        return None
    length = content_length(response)
    if length is None:
        raise RegistryError(
            "the registry answered the blob's HEAD without a valid Content-Length, so its "
            "size cannot be checked",
            **where(transport.url, "check blob", repository, digest),
            status=response.status,
            advice="a proxy in front of the registry probably strips Content-Length from "
            "HEAD answers: configure it to pass the header on",
        )
    return length


def read(
    transport: Transport,
    repository: Repository,
    digest: Digest,
    *,
    offset: int,
    length: int | None,
    chunk_size: int,
    received: Callable[[int], None],
) -> Iterator[bytes]:
    """A blob's bytes (``length`` of them from ``offset``; None: to the end), following
    a redirect to the registry's storage backend; each chunk's size goes to ``received``.

    A whole blob is hashed as it passes and a mismatch with ``digest`` raises
    ``DigestMismatchError`` after the last chunk, before the caller can commit it.
    """
    partial = bool(offset) or length is not None
    headers = {}
    if partial:
        end = "" if length is None else str(offset + length - 1)
        headers["Range"] = f"bytes={offset}-{end}"
    response = transport.send(
        Request.at(
            "GET",
            repository,
            "blobs",
            digest,
            "get blob",
            headers=headers,
            stream=True,
            ok=(200, 206, 307, 302, 303),
            allow_redirects=False,
        )
    )
    if response.redirect:
        response.close()
        # Storage backends (S3, GCS) get a presigned URL, never the registry's token.
        location = transport.confinement.storage_url(response, repository, digest)
        response = transport.send(
            Request(
                "GET",
                location,
                "get blob",
                repository,
                digest,
                headers=headers,
                stream=True,
                ok=(200, 206),
                storage=True,
            )
        )
    if partial and response.status != 206:
        response.close()
        raise RegistryError(
            f"the registry ignored the Range request {headers['Range']}",
            **where(transport.url, "get blob", repository, digest),
            status=response.status,
        )
    return _chunks(
        response,
        chunk_size,
        digest if not partial else None,
        received,
        **where(transport.url, "get blob", repository, digest),
    )


def _chunks(
    response: Response,
    chunk_size: int,
    verify: str | None,
    received: Callable[[int], None],
    **where: Any,
) -> Iterator[bytes]:
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
        raise DigestMismatchError(
            f"the blob's bytes hash to {hasher.name}:{hasher.hexdigest()}",
            code="DIGEST_INVALID",
            **where,
        )
