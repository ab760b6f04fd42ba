"""Registry faults in the middle of a run: retried, or left for the next run, never half applied."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from registry_replication.engine.leases import Leases
from registry_replication.engine.sync import SyncOptions, run_sync
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import RegistryUnavailableError
from replication_harness import corpus, images
from replication_harness.servers import Fault, FaultProxy
from replication_harness.skopeo import skopeo_blob, skopeo_raw
from replication_harness.watch import PrimaryHistory, ReplicaWatcher, tags_of


def test_secondary_restarting_mid_run_is_retried(
    primary, secondary, store, primary_writer, primary_reader, secondary_writer, secondary_reader
):
    corpus.push_every_kind(primary_writer)
    history = PrimaryHistory.of(primary_reader)
    with FaultProxy(primary.url) as proxy, RegistryClient(secondary.client_config()) as watching:
        source = RegistryClient(
            RegistryConfig.from_connection({**primary.connection(), "host": proxy.url})
        )
        held = proxy.hold("GET", "/blobs/")  # the run's first blob read waits here...

        def restart() -> None:
            assert held.arrived.wait(60)
            secondary.stop()  # ...while the secondary goes down,
            held.release()  # the run's writes meet a closed port,
            time.sleep(1.5)
            secondary.start()  # and the secondary comes back on the same port and storage.

        restarter = threading.Thread(target=restart)
        restarter.start()
        with ReplicaWatcher(watching, history) as watch:
            report = run_sync(source, secondary_writer, leases=Leases(store, "registry_secondary"))
        restarter.join()
    assert not report.failed, report.counts()
    assert tags_of(secondary_reader) == tags_of(primary_reader)
    assert watch.violations == []


def test_secondary_down_for_the_whole_run_fails_cleanly_then_completes(
    primary,
    secondary,
    store,
    primary_writer,
    primary_reader,
    secondary_reader,
):
    images.push(primary_writer, "app", images.ImageFactory().multi_arch(), ["1.0"])
    with RegistryClient(
        secondary.client_config(max_retries=1, backoff_seconds=0.05), writable=True
    ) as impatient:
        run_sync(
            primary_reader, impatient, leases=Leases(store, "registry_secondary")
        )  # app:1.0 is there
        update = images.push(primary_writer, "app", images.ImageFactory().multi_arch(), ["1.0"])
        images.push(primary_writer, "other", images.ImageFactory().make(), ["1.0"])
        secondary.stop()
        with pytest.raises(
            RegistryUnavailableError,
            match="no answer from the registry.*What to do: check that the registry",
        ):
            run_sync(primary_reader, impatient, leases=Leases(store, "registry_secondary"))
        secondary.start()
        assert secondary_reader.head_manifest("app", "1.0").digest != update  # the old, whole
        assert secondary_reader.tags("other") == []
        again = run_sync(primary_reader, impatient, leases=Leases(store, "registry_secondary"))
    assert not again.failed
    assert tags_of(secondary_reader) == tags_of(primary_reader)


def test_primary_errors_and_cut_connections_are_retried(
    primary, store, primary_writer, secondary_writer, secondary_reader, primary_reader
):
    pushed = corpus.push_every_kind(primary_writer)
    with FaultProxy(primary.url) as proxy:
        proxy.inject(
            Fault(status=503, path_contains="/tags/list"),
            Fault(status=500, path_contains="/manifests/"),
            Fault(cut=True, path_contains="/manifests/"),
            Fault(status=429, headers={"Retry-After": "1"}, path_contains="/blobs/"),
            Fault(cut=True, path_contains="/blobs/"),
            Fault(status=503, path_contains="/blobs/"),
        )
        with RegistryClient(
            RegistryConfig.from_connection({**primary.connection(), "host": proxy.url})
        ) as source:
            report = run_sync(
                source, secondary_writer, SyncOptions(), leases=Leases(store, "registry_secondary")
            )
        injected = [outcome for _, _, outcome in proxy.log if outcome in (500, 503, 429, "cut")]
    assert sorted(map(str, injected)) == ["429", "500", "503", "503", "cut", "cut"]
    assert not report.failed
    for (repository, tag), digest in pushed.items():
        assert secondary_reader.head_manifest(repository, tag).digest == digest


def test_a_layer_the_primary_fails_to_serve_max_retries_times_is_replicated_intact(
    primary, secondary, store, primary_writer, tmp_path
):
    """A 503, a cut connection and a download cut mid-stream, all on one layer: the copy's one
    policy spends its three retries and the fourth GET brings the layer, whole."""
    layer = images.random_layer(3 * (1 << 20) // 2)
    image = images.image([layer])
    images.push(primary_writer, "app", image, ["1.0"])
    where = f"/blobs/{layer.digest}"
    with FaultProxy(primary.url) as proxy:
        proxy.inject(
            Fault(status=503, method="GET", path_contains=where),
            Fault(cut=True, method="GET", path_contains=where),
            Fault(cut_after_bytes=(1 << 20) + 1024, method="GET", path_contains=where),
        )
        patient = {"max_retries": 3, "backoff_seconds": 0.01}
        with (
            RegistryClient(
                RegistryConfig.from_connection({**primary.connection(**patient), "host": proxy.url})
            ) as source,
            RegistryClient(secondary.client_config(**patient), writable=True) as target,
        ):
            report = run_sync(source, target, leases=Leases(store, "registry_secondary"))
        gets = [
            outcome
            for method, path, outcome in proxy.log
            if method == "GET" and layer.digest in path
        ]
    assert not report.failed, report.counts()
    assert gets == [503, "cut", "cut mid-body", 200]
    assert skopeo_raw(secondary, "app", "1.0") == image.raw
    copied = skopeo_blob(secondary, "app", "1.0", layer.digest, tmp_path / "pulled")
    assert copied == layer.data
    assert "sha256:" + hashlib.sha256(copied).hexdigest() == layer.digest
