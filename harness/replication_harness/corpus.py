"""A corpus with every image format the replicator must carry, for tests and the demo.

Docker v2 schema 2 and manifest lists, OCI manifests and indexes, OCI artifacts (signature
tags ``sha256-<hex>.sig`` with a ``subject``, a zero-layer artifact), a foreign layer, nested
repository paths, tags with ``.``, ``_`` and ``-``, two tags on one digest, and base layers
shared across repositories.
"""

from __future__ import annotations

import json

from registry_replication.transport import mediatypes as mt
from registry_replication.transport.client import RegistryClient
from replication_harness import images


def push_every_kind(writer: RegistryClient, layer_size: int = 4096) -> dict[tuple[str, str], str]:
    """Push the corpus; returns {(repository, tag): digest}."""
    oci = images.ImageFactory(layer_size=layer_size)
    docker = images.ImageFactory(layer_size=layer_size, docker=True)
    pushed: dict[tuple[str, str], str] = {}

    def push(repository: str, img: images.Image, *tags: str) -> images.Image:
        images.push(writer, repository, img, tags)
        pushed.update({(repository, tag): img.digest for tag in tags})
        return img

    app = push("group/sub/app", oci.make(2), "1.0", "latest")  # two tags, one digest
    push("group/sub/app", oci.make(), "1.0.1_rc-2")
    push("group/sub/app", oci.multi_arch(("amd64", "arm64", "ppc64le")), "multi-arch")
    push("group/sub/tool", oci.make(), "v2")  # same base layers: shared blobs
    push("docker/legacy", docker.make(), "schema2")
    push("docker/legacy", docker.multi_arch(), "manifest-list")
    signature = images.artifact(app, "application/vnd.dev.cosign.artifact.sig.v1+json", b"sig")
    push("group/sub/app", signature, f"sha256-{app.digest.split(':')[1]}.sig")
    sbom = images.artifact(app, "application/spdx+json", json.dumps({"spdx": 1}).encode())
    push("group/sub/app", sbom, f"sha256-{app.digest.split(':')[1]}.att")
    push(
        "group/sub/app",
        images.zero_layer_artifact(
            "application/vnd.example.config", {"org.example": "zero layers"}
        ),
        "config-only",
    )
    push("windows/base", foreign_layer_image(docker), "ltsc2022")
    return pushed


def foreign_layer_image(factory: images.ImageFactory) -> images.Image:
    """A Docker image with a non-distributable layer that lives at a URL, not in the registry."""
    local = images.random_layer(factory.layer_size, docker=True)
    base = factory.make()
    manifest = json.loads(base.raw)
    manifest["layers"] = [
        {
            "mediaType": mt.DOCKER_FOREIGN_LAYER,
            "digest": "sha256:" + "f" * 64,
            "size": 1024,
            "urls": ["https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:" + "f" * 64],
        },
        local.descriptor(),
    ]
    return images.Image(
        json.dumps(manifest, indent=3).encode(), mt.DOCKER_MANIFEST, (base.blobs[0], local)
    )
