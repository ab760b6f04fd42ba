"""One pass serving several secondaries: the primary read once, each site its own unit of
failure, every site exact (checked with skopeo)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from registry_replication.cli import main
from registry_replication.engine.leases import Leases
from registry_replication.engine.sites import Site
from registry_replication.engine.sync import run_sync_many
from registry_replication.store import Store
from registry_replication.transport.client import RegistryClient
from replication_harness import corpus, images
from replication_harness.registry import LocalRegistry
from replication_harness.skopeo import skopeo_raw
from replication_harness.sync_cli import named_secondaries

NAMES = ("site_a", "site_b", "site_c")


@pytest.fixture
def sites(start_registry) -> dict[str, LocalRegistry]:
    """Three empty secondaries, by the names their rows are kept under."""
    return {name: start_registry(name) for name in NAMES}


@pytest.fixture
def serve(
    primary: LocalRegistry, store: Store
) -> Iterator[Callable[[dict[str, LocalRegistry]], object]]:
    """``serve(sites)``: one ``run_sync_many`` from the primary to ``sites``."""
    with ExitStack() as stack:
        source = stack.enter_context(RegistryClient(primary.client_config()))

        def serve(targets: dict[str, LocalRegistry], **extra: object):
            return run_sync_many(
                source,
                [
                    Site.writing(
                        stack.enter_context(
                            RegistryClient(registry.client_config(**extra), writable=True)
                        ),
                        stack.enter_context(Leases(store, name)),
                    )
                    for name, registry in targets.items()
                ],
            )

        yield serve


def assert_exact(primary: LocalRegistry, secondary: LocalRegistry, pushed) -> None:
    for repository, tag in pushed:
        assert skopeo_raw(secondary, repository, tag) == skopeo_raw(primary, repository, tag), (
            secondary.name,
            repository,
            tag,
        )


def push_corpus(primary_writer: RegistryClient) -> dict[tuple[str, str], str]:
    """Every kind of image, and one with a layer large enough to be teed, not buffered."""
    pushed = corpus.push_every_kind(primary_writer)
    large = images.ImageFactory(layer_size=5 * (1 << 20) + 7).make()
    images.push(primary_writer, "large", large, ["v1"])
    return {**pushed, ("large", "v1"): large.digest}


def test_one_run_serves_three_secondaries_reading_each_blob_once(
    primary, primary_writer, sites, serve
):
    pushed = push_corpus(primary_writer)
    served = primary.served_bytes()
    run = serve(sites)
    assert not run.failed and not run.errors and set(run.reports) == set(NAMES)
    for registry in sites.values():
        assert_exact(primary, registry, pushed)
    # The bytes every site needed, each digest counted once: what a single site would read.
    unique = {
        task.digest: task.size
        for report in run.reports.values()
        for task in report.plan.blobs
        if task.mount_from is None
    }
    read = primary.served_bytes() - served
    assert sum(unique.values()) > 5 << 20
    assert sum(unique.values()) <= read <= 1.2 * sum(unique.values()), (read, unique)
    assert run.primary_bytes == read
    for report in run.reports.values():
        assert report.verification["in_sync"].all()

    again = serve(sites)
    for name, report in again.reports.items():
        assert report.counts() == {"manifests pushed": 0, "bytes copied": 0, "tags pruned": 0}, name


def test_a_secondary_that_is_down_fails_alone_and_catches_up(
    primary, primary_writer, sites, serve, store
):
    pushed = push_corpus(primary_writer)
    sites["site_b"].stop()
    run = serve(sites, max_retries=0)
    assert run.failed and set(run.errors) == {"site_b"}
    assert "site_b" not in run.reports
    assert set(run.reports) == {"site_a", "site_c"}
    assert not any(report.failed for report in run.reports.values())
    for name in ("site_a", "site_c"):
        assert_exact(primary, sites[name], pushed)

    sites["site_b"].start()
    again = serve(sites)
    assert not again.failed
    assert again.reports["site_b"].counts()["manifests pushed"] > 0
    for registry in sites.values():
        assert_exact(primary, registry, pushed)


def test_the_cli_syncs_several_secondaries_named_on_its_command_line(
    primary, primary_writer, sites, capsys
):
    pushed = push_corpus(primary_writer)
    code = main(
        [
            "sync",
            "--primary",
            json.dumps(primary.connection()),
            *(
                f"--secondary={named}"
                for named in named_secondaries({n: r.connection() for n, r in sites.items()})
            ),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert set(out["secondaries"]) == set(NAMES) and not out["failed"]
    assert all(report["counts"]["manifests pushed"] > 0 for report in out["secondaries"].values())
    for registry in sites.values():
        assert_exact(primary, registry, pushed)


def test_the_cli_refuses_two_unnamed_connections(primary, sites):
    unnamed = [f"--secondary={json.dumps(r.connection())}" for r in sites.values()][:2]
    assert main(["sync", "--primary", json.dumps(primary.connection()), *unnamed]) == 2


def test_the_cli_refuses_an_unnamed_connection_when_several_secondaries_are_configured(
    primary, sites, monkeypatch
):
    """Its leases and record would be filed under another secondary's name."""
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS", ",".join(NAMES))
    unnamed = f"--secondary={json.dumps(sites['site_b'].connection())}"
    assert main(["sync", "--primary", json.dumps(primary.connection()), unnamed]) == 2
