"""The per-registry bandwidth limit (connection extra ``max_bytes_per_second``)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import ConfigError
from replication_harness import images

MiB = 1 << 20


def read_concurrently(client: RegistryClient, blobs: list[images.Blob]) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(len(blobs)) as pool:
        bodies = list(pool.map(lambda b: b"".join(client.read_blob("app", b.digest)), blobs))
    assert bodies == [b.data for b in blobs]
    return time.monotonic() - started


def test_limit_is_shared_by_all_threads_of_a_client(primary, primary_writer):
    blobs = [images.random_layer(3 * MiB) for _ in range(3)]
    for blob in blobs:
        primary_writer.push_blob("app", blob.digest, blob.data, blob.size)
    unlimited = read_concurrently(RegistryClient(primary.client_config()), blobs)
    limited = RegistryClient(primary.client_config(max_bytes_per_second=2 * MiB))
    elapsed = read_concurrently(limited, blobs)
    # 9 MiB at 2 MiB/s after a one-second (2 MiB) burst: at least 3.5 s, whatever the threads.
    print(
        f"9 MiB in 3 threads: unlimited {unlimited:.2f}s, limited to 2 MiB/s {elapsed:.2f}s "
        f"({9 / elapsed:.2f} MiB/s)"
    )
    assert elapsed >= 3.4 and unlimited < 3.4


def test_limit_must_be_positive(primary):
    with pytest.raises(ConfigError, match="max_bytes_per_second"):
        primary.client_config(max_bytes_per_second=-5)
