"""The replica watcher used by the crash, fault and soak checks does see each violation."""

from __future__ import annotations

import time

from registry_replication.engine.prune import untag
from replication_harness import images
from replication_harness.watch import PrimaryHistory, ReplicaWatcher


def wait_samples(watch: ReplicaWatcher, more: int = 2) -> None:
    target = watch.samples + more
    deadline = time.monotonic() + 30
    while watch.samples < target:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_watcher_reports_each_kind_of_violation(secondary_writer, secondary_reader):
    factory = images.ImageFactory()
    old, new, stranger = factory.make(), factory.make(), factory.make()
    multi = factory.multi_arch()
    history = PrimaryHistory()
    for tag, img in (("moving", old), ("moving", new), ("kept", old), ("multi", multi)):
        history.pushing("app", tag, img.digest)

    images.push(secondary_writer, "app", new, ["moving"])
    images.push(secondary_writer, "app", old, ["kept"])
    images.push(secondary_writer, "app", multi, ["multi"])
    with ReplicaWatcher(secondary_reader, history) as watch:
        wait_samples(watch)
        assert watch.violations == []
        images.push(secondary_writer, "app", old, ["moving"])  # back to the older digest
        images.push(secondary_writer, "app", stranger, ["kept"])  # never the primary's
        wait_samples(watch)
        untag(secondary_writer, "app", "kept")  # gone while the primary has it
        secondary_writer.delete_manifest("app", multi.children[0].digest)  # index incomplete
        wait_samples(watch)
    found = "\n".join(watch.violations)
    assert f"app:moving moved back to {old.digest}" in found
    assert f"app:kept on {stranger.digest}, never the primary's" in found
    assert "app:kept deleted from the secondary while the primary had it" in found
    assert f"app:multi ({multi.digest}) incomplete: ['{multi.children[0].digest}'" in found
