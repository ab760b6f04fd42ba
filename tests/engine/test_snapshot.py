"""Snapshots: a registry listed batch by batch, each repository's or tag's trouble its own
problem, and conditional ``HEAD``s from what the caller last saw, against real registries
(distribution 2.8) and, for the typed doors, a listing client of the test's own."""

from __future__ import annotations

import threading

from registry_replication.engine.snapshot import stream_snapshot, take_snapshot
from registry_replication.transport.client import Descriptor, RegistryClient
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.reference import Digest, Repository, Tag
from replication_harness import images
from replication_harness.servers import Fault, FaultProxy

DIGEST = "sha256:" + "a" * 64


def through(proxy: FaultProxy, registry) -> RegistryClient:
    """The replicator's read-only view of ``registry``, through ``proxy``."""
    return RegistryClient(
        RegistryConfig.from_connection({**registry.connection(), "host": proxy.url})
    )


class ListingClient:
    """A registry that lists a catalog with one odd entry, two tags per repository."""

    url = "https://registry.example"

    def __init__(self):
        self.asked: list[tuple[type, type]] = []

    def catalog(self):
        yield from ["group/app", "Odd/name", "other"]

    def tags(self, repository):
        self.asked.append((type(repository), type(None)))
        return ["1.0", "bad tag", "2.0"]

    def head_manifest(self, repository, tag, known=None):
        self.asked.append((type(repository), type(tag)))
        return Descriptor(Digest(DIGEST), "application/vnd.oci.image.manifest.v1+json", 1)


def test_a_listing_hands_on_typed_names_and_reports_the_odd_ones():
    client, rows = ListingClient(), []
    listing = stream_snapshot(client, rows.extend)
    assert sorted(r[:2] for r in rows) == [
        ("group/app", "1.0"),
        ("group/app", "2.0"),
        ("other", "1.0"),
        ("other", "2.0"),
    ]
    assert {tuple(map(type, r[:3])) for r in rows} == {(Repository, Tag, Digest)}
    assert set(client.asked) == {(Repository, type(None)), (Repository, Tag)}
    assert {(p["repository"], p["tag"]) for p in listing.problems} == {
        ("Odd/name", None),
        ("group/app", "bad tag"),
        ("other", "bad tag"),
    }


def test_repositories_given_instead_of_the_catalog_pass_the_same_door():
    client, rows = ListingClient(), []
    listing = stream_snapshot(client, rows.extend, repositories=["group/app", "../etc"])
    assert {type(r[0]) for r in rows} == {Repository}
    assert [p["repository"] for p in listing.problems if p["tag"] is None] == ["../etc"]


def test_a_record_that_cannot_be_read_only_makes_the_heads_unconditional(
    primary,
    primary_writer,
    caplog,
):
    factory = images.ImageFactory()
    pushed = images.push(primary_writer, "app", factory.make(), ["v1"])

    def unreadable(repositories):
        raise RuntimeError("the store is down")

    with RegistryClient(primary.client_config()) as source:
        listed = take_snapshot(source, known=unreadable)
    assert dict(zip(listed.tags["tag"], listed.tags["digest"])) == {"v1": pushed}
    assert listed.complete
    assert (
        "without conditional HEADs, the record of the secondary's tags being unreadable "
        "(RuntimeError: the store is down; repositories app)"
    ) in caplog.text


def test_a_repository_whose_tags_cannot_be_listed_is_its_problem_and_the_others_are_listed(
    primary, primary_writer
):
    factory = images.ImageFactory()
    listed = {
        name: images.push(primary_writer, name, factory.make(), ["v1"])
        for name in ("group/a", "group/denied", "group/z")
    }
    with FaultProxy(primary.url) as proxy, through(proxy, primary) as source:
        proxy.inject(
            *[Fault(status=403, code="DENIED", path_contains="/group/denied/tags/list")] * 3
        )
        snap = take_snapshot(source)
    assert snap.errors == []  # the catalog was read: the snapshot still drives copies
    assert dict(zip(snap.tags["repository"], snap.tags["digest"])) == {
        "group/a": listed["group/a"],
        "group/z": listed["group/z"],
    }
    (problem,) = snap.problems
    assert (problem["repository"], problem["tag"]) == ("group/denied", None)
    assert "403" in problem["reason"] and "DENIED" in problem["reason"]
    assert problem["advice"]  # what to do, from the registry's code
    assert snap.problem_repositories == {"group/denied"} and not snap.complete


def test_an_unreadable_catalog_is_an_error_of_the_whole_snapshot(open_registry):
    with RegistryClient(open_registry.client_config(max_retries=0)) as source:
        open_registry.stop()
        try:
            rows: list = []
            listing = stream_snapshot(source, rows.extend)
        finally:
            open_registry.start()
    assert rows == [] and listing.tags == 0 and len(listing.errors) == 1
    assert listing.problems == []


def test_a_tag_deleted_between_its_listing_and_its_head_is_simply_absent(primary, primary_writer):
    factory = images.ImageFactory()
    kept = images.push(primary_writer, "app", factory.make(), ["kept"])
    gone = images.push(primary_writer, "app", factory.make(), ["gone"])
    with FaultProxy(primary.url) as proxy, through(proxy, primary) as source:
        held = proxy.hold("HEAD", "/manifests/gone")

        def delete_meanwhile() -> None:
            assert held.arrived.wait(60)  # listed, and its HEAD on the way
            primary_writer.delete_manifest("app", gone)
            held.release()

        deleter = threading.Thread(target=delete_meanwhile)
        deleter.start()
        try:
            snap = take_snapshot(source)
        finally:
            held.release()
            deleter.join()
        asked = [(m, p.rsplit("/", 1)[1], s) for m, p, s in proxy.log if "/manifests/" in p]
    assert dict(zip(snap.tags["tag"], snap.tags["digest"])) == {"kept": kept}
    assert snap.complete  # gone is no problem: the registry said MANIFEST_UNKNOWN
    assert ("HEAD", "gone", 404) in asked and ("GET", "gone", 404) in asked


def test_each_batch_of_repositories_reaches_the_sink_with_its_own_rows(primary, primary_writer):
    factory = images.ImageFactory()
    names = [f"group/app{i}" for i in range(5)]
    for name in names:
        images.push(primary_writer, name, factory.make(), ["v1", "v2"])
    batches: list[set[str]] = []
    asked: list[list[str]] = []

    def known(repositories):
        asked.append(list(repositories))
        return {}

    with RegistryClient(primary.client_config()) as source:
        listing = stream_snapshot(
            source,
            lambda rows: batches.append({f"{r}:{t}" for r, t, _, _ in rows}),
            batch=2,
            known=known,
        )
    assert asked == [names[0:2], names[2:4], names[4:]]  # known: asked batch by batch
    assert batches == [
        {f"{name}:{tag}" for name in chunk for tag in ("v1", "v2")} for chunk in asked
    ]
    assert listing.tags == 10 and listing.errors == listing.problems == []


def test_known_tags_are_confirmed_conditionally_and_the_rows_are_what_the_registry_holds(
    primary, primary_writer
):
    factory = images.ImageFactory()
    image = factory.make()
    same = images.push(primary_writer, "app", image, ["same", "moved"])
    moved = images.push(primary_writer, "app", factory.make(), ["moved"])
    fresh = images.push(primary_writer, "app", factory.make(), ["fresh"])
    seen = Descriptor(Digest(same), image.media_type, len(image.raw))
    with FaultProxy(primary.url) as proxy, through(proxy, primary) as source:
        snap = take_snapshot(
            source, known=lambda repositories: {("app", "same"): seen, ("app", "moved"): seen}
        )
        asked = {p.rsplit("/", 1)[1]: s for m, p, s in proxy.log if "/manifests/" in p}
    assert dict(zip(snap.tags["tag"], snap.tags["digest"])) == {
        "same": same,
        "moved": moved,  # what the registry holds now, not what was known
        "fresh": fresh,
    }
    assert asked == {"same": 304, "moved": 200, "fresh": 200}


def test_manifests_are_read_whole_for_the_tags_no_known_head_confirms(primary, primary_writer):
    factory = images.ImageFactory()
    image = factory.make()
    known_digest = images.push(primary_writer, "app", image, ["known"])
    new = factory.make()
    images.push(primary_writer, "app", new, ["new"])
    read: dict = {}
    seen = Descriptor(Digest(known_digest), image.media_type, len(image.raw))
    with FaultProxy(primary.url) as proxy, through(proxy, primary) as source:
        snap = take_snapshot(
            source, known=lambda repositories: {("app", "known"): seen}, manifests=read
        )
        asked = sorted((m, p.rsplit("/", 1)[1], s) for m, p, s in proxy.log if "/manifests/" in p)
    assert set(snap.tags["tag"]) == {"known", "new"}
    assert asked == [("GET", "new", 200), ("HEAD", "known", 304)]
    assert {key: m.raw for key, m in read.items()} == {("app", new.digest): new.raw}
