"""Names a real registry accepts, at and beyond the grammar's limits, against distribution 2.8.

``Foo/app`` is refused by the reference grammar, but distribution reads ``Foo`` as a hostname and
stores the repository: it shows in the catalog. It must be reported, and nothing else held up.
"""

from __future__ import annotations

import json

from registry_replication.cli import main
from registry_replication.engine.sync import SyncOptions, run_sync
from replication_harness import images
from replication_harness.skopeo import skopeo_raw


def test_the_real_registry_stores_an_odd_name_and_the_cli_replicates_everything_else(
    primary,
    secondary,
    odd_repository,
    image_factory,
    primary_writer,
    secondary_writer,
    monkeypatch,
    capsys,
):
    wanted = {
        ("group/a", "1.0"): images.push(primary_writer, "group/a", image_factory.make(), ["1.0"]),
        ("group/b", "2.0"): images.push(
            primary_writer, "group/b", image_factory.multi_arch(), ["2.0"]
        ),
    }
    # A tag the primary no longer has: pruning must still happen outside the odd repository.
    images.push(secondary_writer, "group/a", image_factory.make(), ["stale"])
    assert odd_repository in list(primary_writer.catalog())

    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_PRIMARY", json.dumps(primary.connection()))
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_SECONDARY", json.dumps(secondary.connection()))
    # (A one-tag secondary would trip the mass-deletion guard.)
    assert main(["sync", "--max-prune-fraction", "1"]) == 1  # finished; needs an operator
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if odd_repository in line)
    assert "invalid repository name 'Foo/app'" in line and "What to do:" in line
    for (repository, tag), digest in wanted.items():
        assert secondary_writer.head_manifest(repository, tag).digest == digest
        assert skopeo_raw(secondary, repository, tag) == skopeo_raw(primary, repository, tag)
    assert secondary_writer.head_manifest("group/a", "stale") is None  # pruned
    assert odd_repository not in list(secondary_writer.catalog())

    assert main(["sync", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert [p["repository"] for p in result["problems"]] == [odd_repository]
    assert result["counts"]["manifests pushed"] == 0  # everything else was already there


LIMITS = [
    "a" * 255,
    "x0/" * 4 + "x" * (255 - 12),  # five deep, 255 characters
    "one/two/three/four/five",
    "a__b/c.d/e-f/g---h/i_j",
]


def test_names_and_tags_at_the_grammars_limits_replicate(
    primary_writer, secondary_writer, primary_reader
):
    factory = images.ImageFactory()
    longest_tag = "T" + "a" * 126 + "9"
    pushed = {}
    for name in LIMITS:
        assert len(name) <= 255
        pushed[name] = images.push(primary_writer, name, factory.make(), [longest_tag, "_x"])
    report = run_sync(primary_reader, secondary_writer, SyncOptions())
    assert not report.failed and report.primary.problems == []
    for name, digest in pushed.items():
        for tag in (longest_tag, "_x"):
            assert secondary_writer.head_manifest(name, tag).digest == digest
    assert report.verification["in_sync"].all()
