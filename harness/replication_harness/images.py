"""Synthetic images: random layers, Docker and OCI manifests, multi-arch indexes, artifacts.

Layers are random bytes (registries never look inside them); configs and manifests are real
JSON of the right media types, so digests, sizes and references are all exactly as a build
tool would produce them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urljoin

import requests

from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.tokens import JwtAuth
from replication_harness.registry import GITLAB_ISSUER, GITLAB_SERVICE, LocalRegistry


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str = mt.OCI_LAYER

    @cached_property
    def digest(self) -> str:
        # Hashed once: a corpus of thousands of images asks for each blob's digest many times.
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Image:
    """A manifest's exact bytes plus everything it references."""

    raw: bytes
    media_type: str
    blobs: tuple[Blob, ...] = ()
    children: tuple[Image, ...] = ()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.raw), **extra}

    def all_blobs(self) -> Iterator[Blob]:
        yield from self.blobs
        for child in self.children:
            yield from child.all_blobs()


def random_layer(size: int, *, docker: bool = False) -> Blob:
    return Blob(os.urandom(size), mt.DOCKER_LAYER if docker else mt.OCI_LAYER)


def image(
    layers: Iterable[Blob],
    *,
    docker: bool = False,
    architecture: str = "amd64",
    label: str = "",
    config: Blob | None = None,
) -> Image:
    """A single-platform image manifest (Docker v2 schema 2 or OCI) with a real config blob
    (``config``: one shared by many manifests, as a benchmark of many tags over few blobs
    wants; by default one made for these layers)."""
    layers = tuple(layers)
    config = config or Blob(
        json.dumps(
            {
                "architecture": architecture,
                "os": "linux",
                "config": {"Labels": {"label": label}} if label else {},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
            },
            sort_keys=True,
        ).encode(),
        mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
    )
    media_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return Image(_dump(manifest), media_type, (config, *layers))


def shared_config(label: str, architecture: str = "amd64", *, docker: bool = False) -> Blob:
    """A config blob to share between many manifests (its ``rootfs`` names no layers)."""
    return Blob(
        json.dumps(
            {
                "architecture": architecture,
                "os": "linux",
                "config": {"Labels": {"label": label}},
                "rootfs": {"type": "layers", "diff_ids": []},
            },
            sort_keys=True,
        ).encode(),
        mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
    )


def index(images: Iterable[Image], *, docker: bool = False) -> Image:
    """A multi-arch index (OCI) or manifest list (Docker) over the given images."""
    images = tuple(images)
    media_type = mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX
    manifests = []
    for child in images:
        arch = json.loads(child.blobs[0].data)["architecture"]
        manifests.append(child.descriptor(platform={"architecture": arch, "os": "linux"}))
    return Image(
        _dump({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}),
        media_type,
        children=images,
    )


def artifact(subject: Image, artifact_type: str, payload: bytes) -> Image:
    """An OCI artifact (signature, SBOM, attestation) referring to ``subject``."""
    empty = Blob(b"{}", mt.OCI_EMPTY)
    layer = Blob(payload, f"{artifact_type}.payload")
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [layer.descriptor()],
        "subject": subject.descriptor(),
    }
    return Image(_dump(manifest), mt.OCI_MANIFEST, (empty, layer))


def zero_layer_artifact(artifact_type: str, annotations: dict[str, str]) -> Image:
    """An OCI manifest with no layers at all (the spec's empty-config artifact)."""
    empty = Blob(b"{}", mt.OCI_EMPTY)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [],
        "annotations": annotations,
    }
    return Image(_dump(manifest), mt.OCI_MANIFEST, (empty,))


def push(client: RegistryClient, repository: str, img: Image, tags: Iterable[str] = ()) -> str:
    """Push blobs, then children by digest, then the manifest under each tag (or its digest)."""
    for blob in img.blobs:
        if not client.has_blob(repository, blob.digest):
            client.push_blob(repository, blob.digest, blob.data, blob.size)
    for child in img.children:
        push(client, repository, child)
    tags = list(tags) or [img.digest]
    for tag in tags:
        client.put_manifest(repository, tag, img.raw, img.media_type)
    return img.digest


def push_unchecked(registry: LocalRegistry, repository: str, img: Image, tag: str) -> str:
    """Push as a careless client would, with no reference checks: for names the registry
    accepts but the grammar refuses (``Foo/app``: distribution reads ``Foo`` as a hostname).

    A single-manifest image only; token auth (``registry.keys``) or none.
    """
    headers = {}
    if registry.keys:
        auth = JwtAuth(registry.keys.private_key_pem, service=GITLAB_SERVICE, issuer=GITLAB_ISSUER)
        headers["Authorization"] = auth.header([f"repository:{repository}:pull,push"]) or ""
    base = f"{registry.url}/v2/{repository}"
    for blob in img.blobs:
        started = requests.post(f"{base}/blobs/uploads/", headers=headers, timeout=30)
        started.raise_for_status()
        location = urljoin(registry.url, started.headers["Location"])
        sep = "&" if "?" in location else "?"
        requests.put(
            f"{location}{sep}digest={blob.digest}",
            data=blob.data,
            timeout=30,
            headers={**headers, "Content-Type": "application/octet-stream"},
        ).raise_for_status()
    requests.put(
        f"{base}/manifests/{tag}",
        data=img.raw,
        timeout=30,
        headers={**headers, "Content-Type": img.media_type},
    ).raise_for_status()
    return img.digest


@dataclass
class ImageFactory:
    """Builds related images: shared base layers plus unique top layers."""

    layer_size: int = 2048
    base_layers: int = 2
    docker: bool = False
    _base: tuple[Blob, ...] = field(default=(), init=False)

    @property
    def base(self) -> tuple[Blob, ...]:
        if not self._base:
            self._base = tuple(
                random_layer(self.layer_size, docker=self.docker) for _ in range(self.base_layers)
            )
        return self._base

    def make(self, unique_layers: int = 1, *, architecture: str = "amd64") -> Image:
        top = [random_layer(self.layer_size, docker=self.docker) for _ in range(unique_layers)]
        return image([*self.base, *top], docker=self.docker, architecture=architecture)

    def multi_arch(self, architectures: Iterable[str] = ("amd64", "arm64")) -> Image:
        return index([self.make(architecture=a) for a in architectures], docker=self.docker)


def _dump(manifest: dict[str, object]) -> bytes:
    # Indented like the tools that build images, so tests see that bytes, not JSON, are copied.
    return json.dumps(manifest, indent=3).encode()
