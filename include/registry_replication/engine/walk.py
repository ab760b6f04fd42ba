"""One image's manifests walked, children first, within the registry's bounds (``Walk``), each
fetched once per plan (``ManifestCache``): what planning reads on the primary and deep
verification on the secondary.
"""

from __future__ import annotations

import json
import threading
import time

from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import Manifest, RegistryClient
from registry_replication.transport.errors import LimitExceeded
from registry_replication.transport.reference import Digest


class UnsupportedError(Exception):
    """A manifest of a kind the replicator does not copy (schema 1, an unknown media type)."""

    def __init__(self, message: str, media_type: str) -> None:
        super().__init__(message)
        self.media_type = media_type


class Walk:
    """One image's manifests, children first, within the bounds of the registry read (the
    primary when planning, the secondary when verifying): index depth,
    children per index, distinct manifests and a wall-clock budget. A child listed twice (at
    any depth) is walked once, its height remembered so that a deeper path to it still counts
    against ``max_index_depth``; each manifest is fetched once per plan (``ManifestCache``)."""

    def __init__(self, registry: RegistryClient, repository: str, cache: ManifestCache) -> None:
        self.registry = registry
        self.bounds = registry.config.bounds
        self.repository = repository
        self.cache = cache
        self.deadline = time.monotonic() + self.bounds.image_plan_seconds
        self.children: list[str] = []  # digests, in push order
        self.sizes: dict[str, int] = {}
        self.walked: set[str] = set()
        self.heights: dict[str, int] = {}  # levels of indexes from a walked manifest down
        self.media_type = ""

    def fetch(self, digest: str) -> Manifest:
        if len(self.walked) >= self.bounds.max_manifests_per_image:
            raise self._exceeded(
                f"the image holds more than {len(self.walked)} manifests",
                "max_manifests_per_image",
                digest,
            )
        if time.monotonic() > self.deadline:
            raise self._exceeded(
                f"reading the image's manifests took over {self.bounds.image_plan_seconds:.0f}s",
                "image_plan_seconds",
                digest,
            )
        self.walked.add(digest)
        manifest = self.cache.get(self.registry, self.repository, digest)
        self.media_type = self.media_type or manifest.media_type
        return manifest

    def collect(self, manifest: Manifest, depth: int) -> None:
        """Walk a manifest at ``depth`` indexes below the image's top: children (depth first,
        so they are pushed before their index) and blobs."""
        self.heights[manifest.digest] = self._collect(manifest, depth)

    def _collect(self, manifest: Manifest, depth: int) -> int:
        if manifest.media_type in mt.SCHEMA1:
            raise UnsupportedError(
                "Docker schema 1 manifests are not supported (deprecated, signed per registry); "
                "rebuild and push the image with a current client",
                manifest.media_type,
            )
        # Parsed here and dropped: the plan keeps every manifest's bytes, and a parsed copy of
        # each (``manifest.json`` caches it) would multiply a large plan's memory.
        body = json.loads(manifest.raw)
        if not isinstance(body, dict):
            raise ValueError("the manifest is not a JSON object")
        if manifest.media_type in mt.INDEXES:
            return self._collect_index(manifest, body, depth)
        if manifest.media_type not in mt.IMAGE_MANIFESTS:
            raise UnsupportedError(
                f"unsupported manifest media type {manifest.media_type!r}", manifest.media_type
            )
        descriptors = _blob_descriptors(body)
        if len(descriptors) > self.bounds.max_descriptors:
            raise self._exceeded(
                f"the manifest lists {len(descriptors)} blobs", "max_descriptors", manifest.digest
            )
        for descriptor in descriptors:
            if descriptor.get("urls"):
                continue  # foreign, non-distributable layer: lives outside the registry
            digest = _descriptor_digest(descriptor, self.cache.digests)
            self.sizes[digest] = _descriptor_size(descriptor)
        return 0

    def _collect_index(self, manifest: Manifest, body: dict, depth: int) -> int:
        listed = body.get("manifests") or []
        if not isinstance(listed, list):
            raise ValueError("the index's 'manifests' is not a list")
        if depth + 1 > self.bounds.max_index_depth:
            raise self._exceeded(
                f"indexes nest more than {self.bounds.max_index_depth} deep",
                "max_index_depth",
                manifest.digest,
            )
        if len(listed) > self.bounds.max_index_children:
            raise self._exceeded(
                f"the index lists {len(listed)} manifests", "max_index_children", manifest.digest
            )
        height = 0
        for child in listed:
            child_digest = _descriptor_digest(child, self.cache.digests)
            if child_digest not in self.walked:
                self.collect(self.fetch(child_digest), depth + 1)
                self.children.append(child_digest)
            # Listed twice (a diamond): walked once, but as deep as its deepest path.
            height = max(height, self.heights[child_digest])
            if depth + 1 + height > self.bounds.max_index_depth:
                raise self._exceeded(
                    f"indexes nest more than {self.bounds.max_index_depth} deep",
                    "max_index_depth",
                    child_digest,
                )
        return height + 1

    def _exceeded(self, what: str, setting: str, digest: str) -> LimitExceeded:
        return LimitExceeded(
            what,
            registry=self.registry.url,
            operation="plan image",
            repository=self.repository,
            reference=digest,
            code="LIMIT_EXCEEDED",
            setting=setting,
            limit=getattr(self.bounds, setting),
        )


class ManifestCache:
    """The manifests a plan read, each fetched from the primary once however many images (or
    threads) ask for it; they stay in ``manifests`` for the copy to push."""

    def __init__(self, manifests: dict[tuple[str, str], Manifest]) -> None:
        self.manifests = manifests
        self._failed: dict[tuple[str, str], Exception] = {}  # asked once, failed: not again
        self._lock = threading.Lock()
        self._fetching: dict[tuple[str, str], threading.Lock] = {}
        # One object per digest read from the plan's manifests: images share blobs, and a plan
        # holds every image's list of them (``_descriptor_digest``).
        self.digests: dict[str, Digest] = {}

    def get(self, primary: RegistryClient, repository: str, digest: str) -> Manifest:
        key = (repository, digest)
        found = self.manifests.get(key)  # one dict read (atomic): most manifests are here
        if found is not None:
            return found
        with self._lock:
            fetching = self._fetching.setdefault(key, threading.Lock())
        with fetching:  # another thread fetching the same manifest: wait for its answer
            with self._lock:
                found, failed = self.manifests.get(key), self._failed.get(key)
            if failed is not None:
                raise failed
            if found is not None:
                return found
            try:
                found = primary.get_manifest(repository, digest)
                with self._lock:
                    self.manifests[key] = found
                return found
            except Exception as exc:
                with self._lock:
                    self._failed[key] = exc
                raise
            finally:
                with self._lock:  # one lock per manifest being fetched, not per manifest read
                    self._fetching.pop(key, None)


def _descriptor_digest(descriptor: object, seen: dict[str, Digest]) -> Digest:
    """A descriptor's digest, validated the first time the plan reads it and the same object
    from then on (``seen``)."""
    if not isinstance(descriptor, dict):
        raise ValueError(f"a descriptor is not a JSON object ({str(descriptor)[:80]!r})")
    text = descriptor.get("digest")
    found = seen.get(text) if isinstance(text, str) else None
    return found if found is not None else seen.setdefault(text, Digest(text))


def _descriptor_size(descriptor: dict) -> int:
    """The descriptor's size: a whole number of bytes a registry can hold (JSON allows ``1e400``,
    ``-1``, ``true`` and 5,000-digit integers)."""
    size = descriptor.get("size")
    if type(size) is not int or not 0 <= size < 1 << 63:
        raise ValueError(f"blob {descriptor.get('digest')} has an invalid size {str(size)[:40]!r}")
    return size


def _blob_descriptors(body: dict) -> list:
    layers = body.get("layers") or []
    if not isinstance(layers, list):
        raise ValueError("the manifest's 'layers' is not a list")
    return [body["config"], *layers] if body.get("config") else layers
