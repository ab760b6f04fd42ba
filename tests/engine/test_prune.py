"""Mirroring deletions: the guards (an incomplete listing, a repository with a problem, the
mass-deletion fraction, the event path's shared budget), and the removal itself against real
registries (distribution 2.8): only the doomed tag goes, a tag pushed again meanwhile stays, a
dry run deletes nothing. Concurrency and crashes are ``test_consistency.py``'s and
``test_crash.py``'s."""

from __future__ import annotations

import pandas as pd
import pytest

from registry_replication.engine import diff as diffs
from registry_replication.engine.prune import (
    DeleteBudget,
    PruneRefused,
    mirror_tag_deletes,
    prunable,
    prune,
)
from registry_replication.engine.snapshot import COLUMNS, take_snapshot
from registry_replication.outcomes import PruneOutcome, Snapshot
from registry_replication.store.record import TagRecord
from registry_replication.transport import mediatypes as mt
from replication_harness import images

DIGEST = "sha256:" + "c" * 64


def snap(rows, problems=(), errors=()):
    return Snapshot("r", pd.DataFrame(rows, columns=COLUMNS), list(errors), list(problems))


def tags(repository, *names):
    return [(repository, name, DIGEST, mt.OCI_MANIFEST) for name in names]


def doomed(*rows):
    return pd.DataFrame(list(rows), columns=["repository", "tag", "digest"])


def test_prune_skips_only_the_repositories_with_problems():
    def snap(rows, problems=()):
        return Snapshot("r", pd.DataFrame(rows, columns=COLUMNS), [], list(problems))

    primary = snap(
        [("other/app", "keep", DIGEST, mt.OCI_MANIFEST)],
        [{"repository": "odd/app", "tag": None, "reason": "r", "advice": "a"}],
    )
    secondary = snap(
        [
            ("other/app", "keep", DIGEST, mt.OCI_MANIFEST),
            ("other/app", "gone", DIGEST, mt.OCI_MANIFEST),
            ("odd/app", "1.0", DIGEST, mt.OCI_MANIFEST),
            ("odd/app", "2.0", DIGEST, mt.OCI_MANIFEST),
        ]
    )
    doomed = prunable(diffs.diff(primary, secondary), primary, secondary, max_fraction=1.0)
    assert list(zip(doomed["repository"], doomed["tag"])) == [("other/app", "gone")]


def test_a_mass_deletion_is_refused_unless_forced():
    primary = snap(tags("app", "keep"))
    secondary = snap(tags("app", "keep", "a", "b"))
    differences = diffs.diff(primary, secondary)
    with pytest.raises(PruneRefused, match=r"2 of the secondary's 3 tags \(67%\).*force_prune"):
        prunable(differences, primary, secondary)
    assert list(prunable(differences, primary, secondary, max_fraction=0.7)["tag"]) == ["a", "b"]
    forced = prunable(differences, primary, secondary, force=True)
    assert forced.to_dict("records") == [
        {"repository": "app", "tag": t, "digest": DIGEST} for t in ("a", "b")
    ]


@pytest.mark.parametrize("side", ["primary", "secondary"])
def test_an_incomplete_listing_on_either_side_refuses_every_deletion(side):
    complete = {"primary": snap(tags("app", "keep")), "secondary": snap(tags("app", "keep", "x"))}
    cut = snap(complete[side].tags.values.tolist(), errors=["catalog: HTTP 503"])
    sides = {**complete, side: cut}
    with pytest.raises(PruneRefused, match=f"the {side}'s listing was incomplete"):
        prunable(
            diffs.diff(sides["primary"], sides["secondary"]),
            sides["primary"],
            sides["secondary"],
            force=True,  # forcing overrides the fraction, never an incomplete listing
        )


@pytest.fixture
def pruned_repository(primary_writer, secondary_writer):
    """app on the secondary: keep, old and again on one digest, gone on another; the primary
    has only keep."""
    factory = images.ImageFactory()
    shared = factory.make()
    images.push(primary_writer, "app", shared, ["keep"])
    images.push(secondary_writer, "app", shared, ["keep", "old", "again"])
    images.push(secondary_writer, "app", factory.make(), ["gone"])
    return shared


def secondary_tags(reader):
    listed = take_snapshot(reader, repositories=["app"]).tags
    return dict(zip(listed["tag"], listed["digest"]))


def test_the_guard_refuses_on_real_listings_and_nothing_is_deleted(
    pruned_repository, primary_reader, secondary_reader
):
    before = secondary_tags(secondary_reader)
    primary, secondary = take_snapshot(primary_reader), take_snapshot(secondary_reader)
    with pytest.raises(PruneRefused, match="3 of the secondary's 4 tags"):
        prunable(diffs.diff(primary, secondary), primary, secondary)
    assert secondary_tags(secondary_reader) == before and len(before) == 4


def test_only_the_doomed_tags_go_and_a_tag_pushed_again_meanwhile_stays(
    pruned_repository, primary_writer, primary_reader, secondary_writer, secondary_reader, leases
):
    before = secondary_tags(secondary_reader)
    primary, secondary = take_snapshot(primary_reader), take_snapshot(secondary_reader)
    rows = prunable(diffs.diff(primary, secondary), primary, secondary, force=True)
    assert sorted(rows["tag"]) == ["again", "gone", "old"]
    images.push(primary_writer, "app", pruned_repository, ["again"])  # pushed again since
    results = prune(primary_reader, secondary_writer, rows, leases=leases)
    assert {r.tag: r.outcome for r in results} == {
        "again": PruneOutcome.KEPT,
        "gone": PruneOutcome.DELETED,
        "old": PruneOutcome.DELETED,
    }
    assert "the primary has it again" in next(r.error for r in results if r.tag == "again")
    # keep and again, on the digest old shared with them, are untouched.
    assert secondary_tags(secondary_reader) == {t: before[t] for t in ("keep", "again")}
    # The record of the secondary's tags says what was removed.
    record = TagRecord(leases.store, "registry_secondary")
    assert record.tag_count() == 2


def test_a_tag_moved_on_the_secondary_since_the_plan_is_not_deleted(
    pruned_repository, primary_reader, secondary_writer, secondary_reader, leases
):
    planned = secondary_tags(secondary_reader)["old"]
    images.push(secondary_writer, "app", images.ImageFactory().make(), ["old"])  # moved since
    moved = secondary_tags(secondary_reader)["old"]
    results = prune(
        primary_reader, secondary_writer, doomed(("app", "old", planned)), leases=leases
    )
    assert results == []
    assert secondary_tags(secondary_reader)["old"] == moved != planned


def test_a_dry_run_deletes_nothing_and_says_what_it_would(
    pruned_repository, primary_reader, secondary_writer, secondary_reader, leases
):
    before = secondary_tags(secondary_reader)
    rows = doomed(
        ("app", "gone", before["gone"]),
        ("app", "old", before["old"]),
        ("app", "keep", DIGEST),  # no longer as planned: not reported
    )
    results = prune(primary_reader, secondary_writer, rows, leases=leases, dry_run=True)
    assert [(r.tag, r.outcome) for r in results] == [
        ("gone", PruneOutcome.WOULD_DELETE),
        ("old", PruneOutcome.WOULD_DELETE),
    ]
    assert secondary_tags(secondary_reader) == before


def test_nothing_doomed_asks_nothing(primary_reader, secondary_writer, leases):
    assert prune(primary_reader, secondary_writer, doomed(), leases=leases) == []


def test_the_event_paths_budget_refuses_past_the_fraction_and_deletes_nothing(
    pruned_repository, primary_reader, secondary_writer, secondary_reader, leases
):
    before = secondary_tags(secondary_reader)
    budget = DeleteBudget(TagRecord(leases.store, "registry_secondary"), max_fraction=0.5)
    # The listing under the lease records the secondary's 4 tags: 3 would be 75%.
    refused = mirror_tag_deletes(
        primary_reader,
        secondary_writer,
        "app",
        ["old", "gone", "again"],
        leases=leases,
        budget=budget,
    )
    assert {r.tag: r.outcome for r in refused} == dict.fromkeys(
        ("again", "gone", "old"), PruneOutcome.FAILED
    )
    assert all("max_prune_fraction (50%)" in r.error for r in refused)
    assert secondary_tags(secondary_reader) == before
    # Two of four fit the budget; then a third is past it.
    results = mirror_tag_deletes(
        primary_reader, secondary_writer, "app", ["old", "gone"], leases=leases, budget=budget
    )
    assert {r.tag: r.outcome for r in results} == {
        "old": PruneOutcome.DELETED,
        "gone": PruneOutcome.DELETED,
    }
    with pytest.raises(PruneRefused, match="3 of the secondary's 4 recorded tags"):
        budget.take("app", ["again"])
