"""The pandas diff and verification checksums."""

from __future__ import annotations

import hashlib

import pandas as pd

from registry_replication.engine import diff
from registry_replication.engine.snapshot import COLUMNS
from registry_replication.outcomes import Scope, Snapshot

A, B, C = ("sha256:" + c * 64 for c in "abc")


def snap(rows) -> Snapshot:
    return Snapshot("r", pd.DataFrame(rows, columns=COLUMNS))


def test_classifies_each_tag():
    primary = snap([("x", "1", A, "m"), ("x", "2", B, "m"), ("y", "1", C, "m")])
    secondary = snap([("x", "1", A, "m"), ("x", "2", C, "m"), ("z", "old", C, "m")])
    result = diff.diff(primary, secondary)
    statuses = {(r.repository, r.tag): r.status for r in result.itertuples()}
    assert statuses == {
        ("x", "1"): "in_sync",
        ("x", "2"): "outdated",
        ("y", "1"): "missing",
        ("z", "old"): "extra",
    }
    summary = diff.summary(result)
    assert summary.loc["x"].to_dict() == {"missing": 0, "outdated": 1, "extra": 0, "in_sync": 1}


def test_100k_tags():
    rows = [(f"g/r{i % 997}", f"t{i}", f"sha256:{i:064x}", "m") for i in range(100_000)]
    primary = snap(rows)
    secondary = snap(rows[:90_000] + [(r, t, B, m) for r, t, _, m in rows[90_000:95_000]])
    counts = diff.diff(primary, secondary)["status"].value_counts().to_dict()
    assert counts == {"in_sync": 90_000, "missing": 5_000, "outdated": 5_000}


def test_verification_checksums():
    primary = snap([("x", "2", B, "m"), ("x", "1", A, "m"), ("y", "1", C, "m")])
    secondary = snap([("x", "1", A, "m"), ("x", "2", B, "m"), ("y", "1", A, "m")])
    report = diff.verify(primary, secondary).set_index("repository")
    expected = hashlib.sha256(f"1 {A}\n2 {B}\n".encode()).hexdigest()
    assert report.loc["x", "primary"] == report.loc["x", "secondary"] == expected
    assert bool(report.loc["x", "in_sync"]) and not bool(report.loc["y", "in_sync"])


def test_scope():
    scope = Scope.of(include=["group/*"], exclude=["group/private*"], tags=r"v\d+")
    assert scope.wants_repository("group/app") and scope.wants_repository("group/sub/app")
    assert not scope.wants_repository("group/private-x") and not scope.wants_repository("other")
    assert scope.wants_tag("v12") and not scope.wants_tag("v12-dev")


def test_an_empty_snapshot_verifies():
    """A scope that matches nothing: no repositories, nothing to compare, no error."""
    empty = Snapshot("http://registry", pd.DataFrame(columns=COLUMNS, dtype=str))
    report = diff.verify(empty, empty)
    assert report.empty and list(report.columns) == [
        "repository",
        "primary",
        "secondary",
        "in_sync",
    ]
    assert diff.diff(empty, empty).empty
