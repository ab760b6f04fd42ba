"""The registry-replication command, against real registries."""

from __future__ import annotations

import json

import pytest

from registry_replication.cli import main
from replication_harness import images


def test_plan_sync_verify(
    primary, secondary, primary_writer, secondary_writer, monkeypatch, capsys
):
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_PRIMARY", json.dumps(primary.connection()))
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRY_SECONDARY", json.dumps(secondary.connection()))
    img = images.ImageFactory().make()
    images.push(primary_writer, "group/app", img, ["1.0"])

    assert main(["verify"]) == 1
    assert "group/app" in capsys.readouterr().out

    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "1 images to push" in out and "group/app" in out
    assert list(secondary_writer.catalog()) == []

    assert main(["sync", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["counts"]["images pushed"] == 1
    assert result["bytes_read_from_primary"] >= sum(b.size for b in img.blobs)
    assert secondary_writer.head_manifest("group/app", "1.0").digest == img.digest

    assert main(["verify"]) == 0
    assert "all repositories in sync" in capsys.readouterr().out


def test_bad_connection_is_a_clear_error(capsys, caplog):
    assert main(["plan", "--primary", '{"host": "ftp://x"}', "--secondary", "nope"]) == 2
    assert "must look like https://host[:port]" in caplog.text


def test_a_repository_out_of_grammar_is_refused_before_any_request(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "plan",
                "--primary",
                '{"host": "https://unreachable.invalid"}',
                "--repository",
                "group/app",
                "--repository",
                "../etc",
            ]
        )
    assert exit_.value.code == 2
    assert "argument --repository: invalid repository name '../etc'" in capsys.readouterr().err
