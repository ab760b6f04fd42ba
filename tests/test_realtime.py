"""The event path's engine: coalescing, and replication against real registries."""

from __future__ import annotations

import datetime as dt

from replication_harness import images
from registry_replication.realtime import coalesce, replicate_events
from registry_replication.store import Event

T0 = dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.timezone.utc)


def ev(i, action, repository, tag=None, digest=None):
    return Event(f"e{i}", action, repository, tag, digest, None, T0 + dt.timedelta(seconds=i))


def test_coalesce_latest_push_per_tag_and_delete_after_push_wins():
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    work = coalesce([
        ev(3, "delete", "app", digest=b),
        ev(1, "push", "app", "v1", a),
        ev(2, "push", "app", "v2", b),
        ev(4, "push", "app", "v1", a),
        ev(5, "push", "app", None, a),  # by digest only
    ])["app"]
    assert work.tags == {"v1": ["e1", "e4"]}
    assert work.deleted == {b: ["e3", "e2"]}
    assert work.noop == ["e5"]


def test_push_and_delete_events_replicate(primary_writer, primary_reader, secondary_writer,
                                          secondary_reader, leases):
    factory = images.ImageFactory()
    first = factory.multi_arch()
    images.push(primary_writer, "group/app", first, ["1.0", "keep"])
    outcomes = replicate_events(primary_reader, secondary_writer,
                                [ev(1, "push", "group/app", "1.0", first.digest)], leases=leases)
    assert outcomes == {"e1": None}
    assert secondary_reader.head_manifest("group/app", "1.0").digest == first.digest
    assert secondary_reader.head_manifest("group/app", "keep") is None  # only what was pushed

    images.push(primary_writer, "group/app", first, ["keep"])
    replicate_events(primary_reader, secondary_writer, [ev(2, "push", "group/app", "keep")],
                     leases=leases)
    # "1.0" is untagged on the primary (delete by digest, then "keep" pushed again).
    primary_writer.delete_manifest("group/app", first.digest)
    images.push(primary_writer, "group/app", first, ["keep"])
    outcomes = replicate_events(primary_reader, secondary_writer,
                                [ev(3, "delete", "group/app", digest=first.digest)], leases=leases)
    assert outcomes == {"e3": None}
    # The manifest is back on the primary (re-pushed), so nothing is deleted on the secondary.
    assert secondary_reader.head_manifest("group/app", "1.0").digest == first.digest

    primary_writer.delete_manifest("group/app", first.digest)
    outcomes = replicate_events(primary_reader, secondary_writer,
                                [ev(4, "delete", "group/app", digest=first.digest)], leases=leases)
    assert outcomes == {"e4": None}
    assert secondary_reader.tags("group/app") == []


def test_failed_copy_is_reported_per_event(primary, primary_writer, primary_reader,
                                           secondary_writer, leases):
    img = images.ImageFactory().make()
    images.push(primary_writer, "app", img, ["v1"])
    primary.blob_path(img.blobs[-1].digest).write_bytes(b"\0" * img.blobs[-1].size)
    outcomes = replicate_events(primary_reader, secondary_writer, [ev(1, "push", "app", "v1")],
                                leases=leases)
    assert img.blobs[-1].digest in outcomes["e1"]


def test_coalesce_tag_deletes_against_pushes():
    a = "sha256:" + "a" * 64
    work = coalesce([
        ev(1, "push", "app", "v1", a),
        ev(2, "delete", "app", "v1"),  # distribution's per-tag event for a delete by digest
        ev(3, "delete", "app", "v2"),
        ev(4, "push", "app", "v2", a),  # pushed again afterwards: the push wins
    ])["app"]
    assert work.untagged == {"v1": ["e1", "e2"]}
    assert work.tags == {"v2": ["e3", "e4"]}


def test_a_moved_then_deleted_tag_is_removed(primary_writer, primary_reader, secondary_writer,
                                             secondary_reader, leases):
    """t on A (replicated), moved to B, B deleted: the secondary must not keep t on A."""
    factory = images.ImageFactory()
    old, new = factory.make(), factory.make()
    images.push(primary_writer, "app", old, ["t", "other"])
    replicate_events(primary_reader, secondary_writer, [ev(1, "push", "app", "t", old.digest)],
                     leases=leases)
    images.push(primary_writer, "app", new, ["t"])
    primary_writer.delete_manifest("app", new.digest)
    outcomes = replicate_events(primary_reader, secondary_writer, [
        ev(2, "push", "app", "t", new.digest),
        ev(3, "delete", "app", digest=new.digest),
        ev(4, "delete", "app", "t"),
    ], leases=leases)
    assert outcomes == {"e2": None, "e3": None, "e4": None}
    assert secondary_reader.head_manifest("app", "t") is None
    assert secondary_reader.head_manifest("app", old.digest) is not None  # "other" is on it


def test_events_over_many_repositories_replicate_together(primary_writer, primary_reader,
                                                          secondary_writer, secondary_reader,
                                                          leases):
    factory = images.ImageFactory(layer_size=16 * 1024)
    pushed = {}
    for i in range(12):
        img = factory.multi_arch() if i % 4 == 0 else factory.make()
        repository = f"burst/r{i % 6}"
        images.push(primary_writer, repository, img, [f"t{i}"])
        pushed[(repository, f"t{i}")] = img
    events = [ev(i, "push", repository, tag, img.digest)
              for i, ((repository, tag), img) in enumerate(pushed.items())]
    outcomes = replicate_events(primary_reader, secondary_writer, events, leases=leases,
                                repositories_at_once=4)
    assert outcomes == {e.id: None for e in events}
    for (repository, tag), img in pushed.items():
        assert secondary_reader.get_manifest(repository, tag).raw == img.raw


def test_one_push_event_sends_each_read_once(primary_writer, primary_reader, secondary_writer,
                                             secondary_reader, leases):
    """From the event to the blob PUT, no HEAD or GET is repeated; the only second look is the
    compare-and-set HEAD of the tag on the primary right before the tag is written."""
    image = images.ImageFactory().multi_arch()
    images.push(primary_writer, "group/once", image, ["1.0"])
    sent: dict[str, list[tuple[str, str]]] = {"primary": [], "secondary": []}

    def recorder(side):
        def record(response, *args, **kwargs):
            request = response.request
            if request.method in ("HEAD", "GET") and "/v2/" in request.path_url:
                sent[side].append((request.method, request.path_url.split("?")[0]))
        return record

    def pooled(side, head):  # manifest HEADs go straight on the urllib3 pool, past the hooks
        def record(path, **kwargs):
            answer, retried = head(path, **kwargs)
            if answer is not None:
                sent[side].append(("HEAD", path))
            return answer, retried
        return record

    hooks = {"primary": recorder("primary"), "secondary": recorder("secondary")}
    primary_reader.session.hooks["response"].append(hooks["primary"])
    secondary_writer.session.hooks["response"].append(hooks["secondary"])
    primary_reader._pooled_head = pooled("primary", primary_reader._pooled_head)
    secondary_writer._pooled_head = pooled("secondary", secondary_writer._pooled_head)
    try:
        outcomes = replicate_events(primary_reader, secondary_writer,
                                    [ev(1, "push", "group/once", "1.0", image.digest)],
                                    leases=leases)
    finally:
        primary_reader.session.hooks["response"].remove(hooks["primary"])
        secondary_writer.session.hooks["response"].remove(hooks["secondary"])
        del primary_reader._pooled_head, secondary_writer._pooled_head
    assert outcomes == {"e1": None}
    assert secondary_reader.head_manifest("group/once", "1.0").digest == image.digest
    repeated = {side: sorted({r for r in requests if requests.count(r) > 1})
                for side, requests in sent.items()}
    assert repeated == {"primary": [("HEAD", "/v2/group/once/manifests/1.0")], "secondary": []}
    assert any(path.startswith("/v2/group/once/blobs/") for _, path in sent["primary"])
