"""Damage made behind the replicator's back on a secondary, and the check that an image pulls."""

from __future__ import annotations

from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.registry import LocalRegistry


def damage(
    secondary: LocalRegistry, writer: RegistryClient, imgs: dict[str, images.Image]
) -> dict[str, images.Blob]:
    """In repository ``app``: image ``a``'s last layer's data file deleted, ``b``'s truncated
    by 100 bytes, ``c``'s with a byte flipped (same size); tag ``d`` deleted through the API,
    tag ``e`` moved to an image the primary never had. Returns the three layers by name."""
    hit = {name: imgs[name].blobs[-1] for name in ("a", "b", "c")}
    secondary.blob_path(hit["a"].digest).unlink()
    path = secondary.blob_path(hit["b"].digest)
    path.write_bytes(path.read_bytes()[:-100])
    path = secondary.blob_path(hit["c"].digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    writer.delete_manifest("app", imgs["d"].digest)
    images.push(writer, "app", images.ImageFactory().make(), ["e"])
    return hit


def pulls_exactly(client: RegistryClient, repository: str, img: images.Image) -> None:
    """Every blob of the image reads back with its bytes (``read_blob`` also hashes them)."""
    for blob in img.all_blobs():
        assert b"".join(client.read_blob(repository, blob.digest)) == blob.data, blob.digest
