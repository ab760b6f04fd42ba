"""Manifests (the Distribution spec's manifest endpoints): one request per function, as
``RegistryClient`` runs them, and what a manifest read is (``Descriptor``, ``Manifest``).

Each function sends its request through a ``Transport`` (the caller has validated the names).
A manifest's bytes are checked against the digest they were asked for or served as, and parsed
once within the connection's ``max_json_depth``; a manifest pushed must be stored under the
digest of its exact bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from registry_replication.transport import mediatypes
from registry_replication.transport.bounded import loads
from registry_replication.transport.errors import (
    DigestMismatchError,
    NotFoundError,
    RegistryError,
    where,
)
from registry_replication.transport.reference import (
    Digest,
    InvalidReference,
    Reference,
    Repository,
)
from registry_replication.transport.responses import content_length, media_type
from registry_replication.transport.transport import Request, Transport
from registry_replication.transport.wire import Response

# Told the size of each manifest read (``RegistryClient.bytes_read``).
Count = Callable[[int], None]


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


def head(
    transport: Transport,
    repository: Repository,
    reference: Reference,
    known: Descriptor | None,
    count: Count,
) -> Descriptor | None:
    """The digest, media type and size of a tag or digest; None when it does not exist.

    ``known``: what the caller last saw there. The request is then conditional
    (``If-None-Match``): a registry whose reference still resolves to that digest answers
    304 without reading the manifest (a fifth of distribution's CPU per ``HEAD``), and
    ``known`` is returned. Any other answer is read as usual.

    A 404 from the primary (a read-only transport) is confirmed by a ``GET`` before it counts
    as gone (``_gone_or_here``), since "gone on the primary" deletes on the secondary; on a
    writable transport, the secondary, "absent" only ever makes us copy.
    """
    headers = {"Accept": mediatypes.MANIFEST_ACCEPT}
    if known is not None:
        headers["If-None-Match"] = f'"{known.digest}"'
    response = transport.send(
        Request.at(
            "HEAD",
            repository,
            "manifests",
            reference,
            "check manifest",
            headers=headers,
            ok=(200, 304, 404),
        )
    )
    response.close()
    if response.status == 304 and known is not None:
        return known
    if response.status == 404:
        if transport.writable:
            return None
        return _gone_or_here(transport, repository, reference, count)
    digest = _served_digest(
        response,
        **where(transport.url, "check manifest", repository, reference),
    )
    if not digest:
        # Registries that omit the header on HEAD: fall back to fetching the bytes.
        manifest = get(transport, repository, reference, count)
        return Descriptor(manifest.digest, manifest.media_type, len(manifest.raw))
    # A manifest's size is its length: a proxy that strips it costs the size, not the check.
    return Descriptor(digest, media_type(response), content_length(response) or 0)


def _gone_or_here(
    transport: Transport, repository: Repository, reference: Reference, count: Count
) -> Descriptor | None:
    """After a ``HEAD`` 404: None only if a ``GET`` says ``MANIFEST_UNKNOWN`` or
    ``NAME_UNKNOWN``. A HEAD has no body to tell whose 404 it is, and "gone" deletes tags:
    a proxy's 404 page (no registry error code) must never pass for it."""
    try:
        manifest = get(transport, repository, reference, count)
    except NotFoundError as exc:
        if exc.code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"):
            return None
        raise replace(
            exc,
            message="not found, without the registry's error code (MANIFEST_UNKNOWN "
            "or NAME_UNKNOWN): not taken to mean it is gone",
            advice="something other than the registry answered 404 (a proxy or load "
            "balancer page?): check that the connection's URL reaches the registry itself; "
            "nothing is deleted on such an answer",
        ) from None
    return Descriptor(manifest.digest, manifest.media_type, len(manifest.raw))


def get(
    transport: Transport, repository: Repository, reference: Reference, count: Count
) -> Manifest:
    """A manifest's exact bytes, checked against the digest they were asked for or served as."""
    response = transport.send(
        Request.at(
            "GET",
            repository,
            "manifests",
            reference,
            "get manifest",
            headers={"Accept": mediatypes.MANIFEST_ACCEPT},
            body_bound="max_manifest_bytes",
        )
    )
    count(len(response.content))
    return _checked_manifest(
        response,
        reference,
        transport.config.bounds.max_json_depth,
        **where(transport.url, "get manifest", repository),
    )


def put(
    transport: Transport, repository: Repository, reference: Reference, raw: bytes, media_type: str
) -> Digest:
    """Push these exact bytes under a tag or digest; returns the digest the registry stored."""
    response = transport.send(
        Request.at(
            "PUT",
            repository,
            "manifests",
            reference,
            "push manifest",
            headers={"Content-Type": media_type},
            data=raw,
            ok=(200, 201, 202),
        )
    )
    response.close()
    digest = _digest_of(raw)
    stored = response.headers.get("Docker-Content-Digest")
    if stored and stored != digest:
        raise DigestMismatchError(
            f"the registry stored the manifest as {stored}, not as {digest}",
            **where(transport.url, "push manifest", repository, reference),
            code="DIGEST_INVALID",
            advice="the registry rewrote the manifest; it cannot hold an exact replica",
        )
    return digest


def delete(transport: Transport, repository: Repository, digest: Digest) -> bool:
    """Delete by digest (untagging every tag on it); False when it was already gone."""
    response = transport.send(
        Request.at("DELETE", repository, "manifests", digest, "delete manifest", ok=(200, 202, 404))
    )
    response.close()
    return response.status != 404


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
                status=response.status,
                code="DIGEST_INVALID",
                **where,
                advice="the registry (or a proxy in front of it) sends a broken digest header "
                "for this manifest: check the registry's version and any proxy, or re-push the "
                "tag; other repositories are not affected",
            ) from None
    return None


def _checked_manifest(
    response: Response, reference: Reference, max_json_depth: int, **where: Any
) -> Manifest:
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
            f"the manifest's bytes hash to {digest}"
            + (
                " (a signed Docker schema 1 manifest, whose bytes cannot be verified "
                "against its digest)"
                if schema1
                else ""
            ),
            reference=expected,
            code="MANIFEST_UNVERIFIED" if schema1 else "DIGEST_INVALID",
            **where,
        )
    try:
        # Parsed to be checked only: whoever reads it parses it again, within this bound.
        loads(raw, max_json_depth, reference=digest, **where)
    except ValueError:
        raise RegistryError(
            "the manifest is not JSON",
            reference=digest,
            code="MANIFEST_INVALID",
            **where,
            advice="the registry serves something that is not a manifest under this "
            "digest: re-push the image on the registry",
        ) from None
    return Manifest(raw, kind, digest)
