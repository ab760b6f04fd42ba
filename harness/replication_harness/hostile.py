"""Manifests that distribution 2.8 accepts and no build tool makes: deep JSON, long index
chains, index "diamonds" (a child listed twice at every level).

Each is pushed bottom up, by digest, and tagged at the top, as anyone with push rights could.
"""

from __future__ import annotations

import json

from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.images import Image


def deep_json(depth: int, factory: images.ImageFactory | None = None) -> Image:
    """An OCI image manifest, valid but for an unknown field nested ``depth`` levels deep."""
    base = (factory or images.ImageFactory()).make()
    body = json.loads(base.raw)
    raw = json.dumps(body)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    return Image(raw.encode(), base.media_type, base.blobs)


def index_of(children: list[Image]) -> Image:
    """An OCI index listing ``children`` in that order (repeats kept)."""
    body = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [child.descriptor() for child in children],
    }
    unique = tuple({child.digest: child for child in children}.values())
    return Image(json.dumps(body).encode(), mt.OCI_INDEX, (), unique)


def chain(length: int, leaf: Image) -> list[Image]:
    """``length`` indexes, each listing the one before; the first lists ``leaf``."""
    made = [leaf]
    for _ in range(length):
        made.append(index_of([made[-1]]))
    return made[1:]


def diamond(depth: int, leaf: Image) -> list[Image]:
    """``depth`` indexes, each listing the one before twice: 2^depth paths, depth+1 manifests."""
    made = [leaf]
    for _ in range(depth):
        made.append(index_of([made[-1], made[-1]]))
    return made[1:]


def push_stack(
    client: RegistryClient, repository: str, leaf: Image, stack: list[Image], tag: str
) -> str:
    """Push ``leaf``, then each index of ``stack`` by digest (no recursion: chains run deep),
    and tag the last one; returns its digest."""
    images.push(client, repository, leaf)
    for index in stack[:-1]:
        client.put_manifest(repository, index.digest, index.raw, index.media_type)
    top = stack[-1]
    client.put_manifest(repository, tag, top.raw, top.media_type)
    return top.digest
