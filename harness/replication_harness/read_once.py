"""Each manifest read once: the images a full run replicates, and what it may ask of the
primary's manifests, for the engine's and the DAGs' tests alike."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from registry_replication.transport.client import RegistryClient
from replication_harness import images

TAGS = ("v1", "v2", "multi")


class Pushed(NamedTuple):
    """``v1`` and ``v2`` on one single-platform image (its digest), ``multi`` on an index."""

    single: str
    multi: images.Image


def push_tags(writer: RegistryClient) -> Pushed:
    """Push ``app``'s three tags to the primary."""
    factory = images.ImageFactory()
    single = images.push(writer, "app", factory.make(), ["v1", "v2"])
    multi = factory.multi_arch()
    images.push(writer, "app", multi, ["multi"])
    return Pushed(single, multi)


def assert_read_once(
    pushed: Pushed, log: list[tuple[str, str, int | str]], secondary_reader: RegistryClient
) -> None:
    """The primary's manifests, in a proxy's log, were read once each: one GET per tag and
    per index child, and the compare-and-set before each write a conditional HEAD answered
    304; the secondary serves every tag."""
    manifests = Counter(
        (method, path.rsplit("/", 1)[1], status)
        for method, path, status in log
        if "/manifests/" in path
    )
    assert manifests == Counter(
        {
            **{("GET", tag, 200): 1 for tag in TAGS},
            **{("GET", child.digest, 200): 1 for child in pushed.multi.children},
            **{("HEAD", tag, 304): 1 for tag in TAGS},
        }
    ), log
    assert {t: secondary_reader.head_manifest("app", t).digest for t in TAGS} == {
        "v1": pushed.single,
        "v2": pushed.single,
        "multi": pushed.multi.digest,
    }
