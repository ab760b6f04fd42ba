"""The event path's engine: coalescing, and replication against real registries."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_replication.engine.prune import prune
from registry_replication.engine.realtime import coalesce, replicate_events
from registry_replication.outcomes import PermanentFailure, PruneOutcome
from registry_replication.store.queue import Event
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.reference import Repository, Tag
from replication_harness import images
from replication_harness.servers import Fault, FaultProxy


@pytest.fixture
def replicate(primary_reader, secondary_writer, leases) -> Callable[..., dict[str, str | None]]:
    """The event path from the test's primary to its secondary, with the test's leases:
    ``replicate(*events, **options)`` returns each event's outcome."""

    def replicate(*events: Event, **options: Any) -> dict[str, str | None]:
        return replicate_events(
            primary_reader, secondary_writer, list(events), leases=leases, **options
        )

    return replicate


def test_coalesce_latest_push_per_tag_and_delete_after_push_wins(ev):
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    work = coalesce(
        [
            ev(3, "delete", "app", digest=b),
            ev(1, "push", "app", "v1", a),
            ev(2, "push", "app", "v2", b),
            ev(4, "push", "app", "v1", a),
            ev(5, "push", "app", None, a),  # by digest only
        ]
    )["app"]
    assert work.tags == {"v1": ["e1", "e4"]}
    assert work.deleted == {b: ["e3", "e2"]}
    assert work.noop == ["e5"]


def test_push_and_delete_events_replicate(ev, primary_writer, secondary_reader, replicate):
    factory = images.ImageFactory()
    first = factory.multi_arch()
    images.push(primary_writer, "group/app", first, ["1.0", "keep"])
    outcomes = replicate(ev(1, "push", "group/app", "1.0", first.digest))
    assert outcomes == {"e1": None}
    assert secondary_reader.head_manifest("group/app", "1.0").digest == first.digest
    assert secondary_reader.head_manifest("group/app", "keep") is None  # only what was pushed

    images.push(primary_writer, "group/app", first, ["keep"])
    replicate(ev(2, "push", "group/app", "keep"))
    # "1.0" is untagged on the primary (delete by digest, then "keep" pushed again).
    primary_writer.delete_manifest("group/app", first.digest)
    images.push(primary_writer, "group/app", first, ["keep"])
    outcomes = replicate(ev(3, "delete", "group/app", digest=first.digest))
    assert outcomes == {"e3": None}
    # The manifest is back on the primary (re-pushed), so nothing is deleted on the secondary.
    assert secondary_reader.head_manifest("group/app", "1.0").digest == first.digest

    primary_writer.delete_manifest("group/app", first.digest)
    # Both of the secondary's tags: all of it, above the default mass-deletion guard.
    outcomes = replicate(ev(4, "delete", "group/app", digest=first.digest), max_prune_fraction=1.0)
    assert outcomes == {"e4": None}
    assert secondary_reader.tags("group/app") == []


def test_failed_copy_is_reported_per_event(ev, primary, primary_writer, replicate):
    img = images.ImageFactory().make()
    images.push(primary_writer, "app", img, ["v1"])
    primary.blob_path(img.blobs[-1].digest).write_bytes(b"\0" * img.blobs[-1].size)
    outcomes = replicate(ev(1, "push", "app", "v1"))
    assert img.blobs[-1].digest in outcomes["e1"]


def test_events_are_typed_once_and_a_row_out_of_grammar_fails_alone(
    ev, primary_reader, monkeypatch, replicate
):
    """Events come back from the store as text: typed once for the whole path, and a row the
    webhook did not write (out of grammar) fails for good, before any request."""
    asked = []
    head = primary_reader.head_manifest

    def recording(repository, reference, **kwargs):
        asked.append((type(repository), type(reference), repository))
        return head(repository, reference, **kwargs)

    monkeypatch.setattr(primary_reader, "head_manifest", recording)
    outcomes = replicate(
        ev(1, "push", "Foo/app", "v1"),
        ev(2, "push", "app", "v1"),
        ev(3, "delete", "app", digest="sha256:zz"),
    )
    assert isinstance(outcomes["e1"], PermanentFailure)
    assert "invalid repository name 'Foo/app'" in outcomes["e1"]
    assert isinstance(outcomes["e3"], PermanentFailure) and "invalid digest" in outcomes["e3"]
    assert outcomes["e2"] is None  # not on the primary: nothing to copy
    assert asked == [(Repository, Tag, "app")]


FIELD = st.one_of(
    st.none(), st.text(max_size=12), st.integers(), st.binary(max_size=4), st.just("app")
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from(["push", "delete"]), FIELD, FIELD, FIELD), max_size=4)
)
def test_any_claimed_row_is_its_own_events_outcome(ev, rows, replicate):
    """Whatever a claimed row holds (text out of grammar, no text at all, nothing), the drain
    answers for every event and never raises: a row is one event's problem alone."""
    events = [
        dataclasses.replace(ev(i, action), repository=r, tag=t, digest=d)
        for i, (action, r, t, d) in enumerate(rows)
    ]
    outcomes = replicate(*events)
    assert set(outcomes) == {e.id for e in events}


def test_coalesce_tag_deletes_against_pushes(ev):
    a = "sha256:" + "a" * 64
    work = coalesce(
        [
            ev(1, "push", "app", "v1", a),
            ev(2, "delete", "app", "v1"),  # distribution's per-tag event for a delete by digest
            ev(3, "delete", "app", "v2"),
            ev(4, "push", "app", "v2", a),  # pushed again afterwards: the push wins
        ]
    )["app"]
    assert work.untagged == {"v1": ["e1", "e2"]}
    assert work.tags == {"v2": ["e3", "e4"]}


def test_a_moved_then_deleted_tag_is_removed(ev, primary_writer, secondary_reader, replicate):
    """t on A (replicated), moved to B, B deleted: the secondary must not keep t on A."""
    factory = images.ImageFactory()
    old, new = factory.make(), factory.make()
    images.push(primary_writer, "app", old, ["t", "other"])
    replicate(ev(1, "push", "app", "t", old.digest))
    images.push(primary_writer, "app", new, ["t"])
    primary_writer.delete_manifest("app", new.digest)
    outcomes = replicate(
        ev(2, "push", "app", "t", new.digest),
        ev(3, "delete", "app", digest=new.digest),
        ev(4, "delete", "app", "t"),
        max_prune_fraction=1.0,
    )  # "t" is all the secondary holds
    assert outcomes == {"e2": None, "e3": None, "e4": None}
    assert secondary_reader.head_manifest("app", "t") is None
    assert secondary_reader.head_manifest("app", old.digest) is not None  # "other" is on it


def test_events_over_many_repositories_replicate_together(
    ev, primary_writer, secondary_reader, replicate
):
    factory = images.ImageFactory(layer_size=16 * 1024)
    pushed = {}
    for i in range(12):
        img = factory.multi_arch() if i % 4 == 0 else factory.make()
        repository = f"burst/r{i % 6}"
        images.push(primary_writer, repository, img, [f"t{i}"])
        pushed[(repository, f"t{i}")] = img
    events = [
        ev(i, "push", repository, tag, img.digest)
        for i, ((repository, tag), img) in enumerate(pushed.items())
    ]
    outcomes = replicate(*events, repositories_at_once=4)
    assert outcomes == {e.id: None for e in events}
    for (repository, tag), img in pushed.items():
        assert secondary_reader.get_manifest(repository, tag).raw == img.raw


def test_one_push_event_sends_each_read_once(
    ev, primary_writer, primary_reader, secondary_writer, secondary_reader, monkeypatch, replicate
):
    """From the event to the blob PUT, no HEAD or GET is repeated; the only second look is the
    compare-and-set HEAD of the tag on the primary right before the tag is written."""
    image = images.ImageFactory().multi_arch()
    images.push(primary_writer, "group/once", image, ["1.0"])
    sent: dict[str, list[tuple[str, str]]] = {"primary": [], "secondary": []}

    def recorder(side, urlopen):
        def record(method, url, *args, **kwargs):
            if method in ("HEAD", "GET") and "/v2/" in url:
                sent[side].append((method, urlsplit(url).path))
            return urlopen(method, url, *args, **kwargs)

        return record

    with monkeypatch.context() as patch:
        for side, client in (("primary", primary_reader), ("secondary", secondary_writer)):
            patch.setattr(
                client.transport.pool, "urlopen", recorder(side, client.transport.pool.urlopen)
            )
        outcomes = replicate(ev(1, "push", "group/once", "1.0", image.digest))
    assert outcomes == {"e1": None}
    assert secondary_reader.head_manifest("group/once", "1.0").digest == image.digest
    repeated = {
        side: sorted({r for r in requests if requests.count(r) > 1})
        for side, requests in sent.items()
    }
    assert repeated == {"primary": [("HEAD", "/v2/group/once/manifests/1.0")], "secondary": []}
    assert any(path.startswith("/v2/group/once/blobs/") for _, path in sent["primary"])


def test_the_event_path_repeats_no_request(
    ev, primary, secondary, primary_writer, secondary_reader, leases
):
    """One batch of events, counted at both registries: each blob and each secondary tag is
    asked about once, each manifest read once; the primary's tag is HEADed twice (the plan,
    then the compare-and-set just before the tag write, which is the protocol)."""
    factory = images.ImageFactory()
    app, other = factory.multi_arch(), factory.make()
    images.push(primary_writer, "group/app", app, ["1.0", "latest"])
    images.push(primary_writer, "group/other", other, ["v1"])
    batch = [
        ev(1, "push", "group/app", "1.0", app.digest),
        ev(2, "push", "group/app", "latest", app.digest),
        ev(3, "push", "group/other", "v1", other.digest),
        ev(4, "push", "group/app", "1.0", app.digest),
    ]  # a repeated push: coalesced
    with FaultProxy(primary.url) as at_primary, FaultProxy(secondary.url) as at_secondary:

        def through(registry, proxy, **kwargs):
            config = RegistryConfig.from_connection({**registry.connection(), "host": proxy.url})
            return RegistryClient(config, **kwargs)

        with (
            through(primary, at_primary) as source,
            through(secondary, at_secondary, writable=True) as target,
        ):
            outcomes = replicate_events(source, target, batch, leases=leases)
        primary_log, secondary_log = list(at_primary.log), list(at_secondary.log)
    assert outcomes == {"e1": None, "e2": None, "e3": None, "e4": None}
    for repository, image, tags in (
        ("group/app", app, ["1.0", "latest"]),
        ("group/other", other, ["v1"]),
    ):
        assert [secondary_reader.head_manifest(repository, t).digest for t in tags] == [
            image.digest
        ] * len(tags)

    def reads(log):
        return Counter((m, p) for m, p, _ in log if m in ("GET", "HEAD"))

    tag_heads = {
        ("HEAD", f"/v2/{r}/manifests/{t}")
        for r, t in (("group/app", "1.0"), ("group/app", "latest"), ("group/other", "v1"))
    }
    at_primary_reads, at_secondary_reads = reads(primary_log), reads(secondary_log)
    assert {k: at_primary_reads[k] for k in tag_heads} == dict.fromkeys(tag_heads, 2)
    assert {k: n for k, n in at_primary_reads.items() if n > 1 and k not in tag_heads} == {}
    assert {k: n for k, n in at_secondary_reads.items() if n > 1} == {}
    # Every blob of each repository was asked about on the secondary, once.
    needed = {
        (r, b.digest)
        for r, image in (("group/app", app), ("group/other", other))
        for b in image.all_blobs()
    }
    asked = {
        (p.split("/blobs/")[0].removeprefix("/v2/"), p.split("/blobs/")[1])
        for m, p, _ in secondary_log
        if m == "HEAD" and "/blobs/" in p
    }
    assert asked == needed
    manifest_puts = Counter(p for m, p, _ in secondary_log if m == "PUT" and "/manifests/" in p)
    assert set(manifest_puts.values()) == {1}


PROXY_PAGE = Fault(
    404,
    {"Content-Type": "text/html"},
    body=b"<html><h1>404 Not Found</h1><hr>nginx</html>",
    path_contains="/manifests/",
)


@pytest.mark.parametrize("path", ["tag delete event", "digest delete event", "prune"])
def test_a_proxys_404_page_never_deletes_a_tag(
    ev, path, primary, primary_writer, secondary_writer, secondary_reader, leases, replicate
):
    """A 404 means gone only with the registry's MANIFEST_UNKNOWN or NAME_UNKNOWN: a HEAD has
    no body, so a GET asks; a proxy's page in front of the primary never causes a delete."""
    image = images.ImageFactory().make()
    tags = ["v1", "v2", "v3"]
    images.push(primary_writer, "app", image, tags)
    assert replicate(*(ev(i, "push", "app", t, image.digest) for i, t in enumerate(tags))) == {
        f"e{i}": None for i in range(3)
    }
    with (
        FaultProxy(primary.url) as proxy,
        RegistryClient(
            RegistryConfig.from_connection({**primary.connection(), "host": proxy.url})
        ) as through_proxy,
    ):
        proxy.inject(*[PROXY_PAGE] * 4)  # every HEAD and GET of a manifest: the page
        if path == "prune":
            (result,) = prune(
                through_proxy,
                secondary_writer,
                pd.DataFrame(
                    [("app", "v1", image.digest)], columns=["repository", "tag", "digest"]
                ),
                leases=leases,
            )
            assert result.outcome == PruneOutcome.FAILED
            error = result.error
        else:
            event = (
                ev(9, "delete", "app", "v1")
                if path == "tag delete event"
                else ev(9, "delete", "app", digest=image.digest)
            )
            error = replicate_events(through_proxy, secondary_writer, [event], leases=leases)["e9"]
        asked = [(m, outcome) for m, p, outcome in proxy.log if "/manifests/" in p]
    assert sorted(secondary_reader.tags("app")) == tags
    assert error is not None and "without the registry's error code" in error
    assert asked == [("HEAD", 404), ("GET", 404)]


def test_the_event_paths_deletes_stop_at_the_mass_deletion_guard(
    ev, primary_writer, secondary_reader, replicate
):
    """As prune's: one batch of events removes at most max_prune_fraction of the secondary's
    tags; the refused events come back with why, and the tags stay."""
    factory = images.ImageFactory()
    kept, doomed = factory.make(), factory.make()
    images.push(primary_writer, "app", kept, ["keep"])
    images.push(primary_writer, "app", doomed, ["a", "b", "c"])
    pushed = [ev(i, "push", "app", t) for i, t in enumerate(["keep", "a", "b", "c"])]
    assert set(replicate(*pushed).values()) == {None}
    primary_writer.delete_manifest("app", doomed.digest)  # 3 of the 4 tags
    deletes = [
        ev(10, "delete", "app", digest=doomed.digest),
        *(ev(11 + i, "delete", "app", t) for i, t in enumerate("abc")),
    ]
    outcomes = replicate(*deletes)
    assert set(outcomes) == {"e10", "e11", "e12", "e13"}
    assert all(
        error
        and "3 of the secondary's 4 recorded tags" in error
        and "max_prune_fraction (50%)" in error
        for error in outcomes.values()
    ), outcomes
    assert sorted(secondary_reader.tags("app")) == ["a", "b", "c", "keep"]
    # The operator's way through: a higher fraction (or the reconcile's force_prune).
    assert set(replicate(*deletes, max_prune_fraction=0.75).values()) == {None}
    assert secondary_reader.tags("app") == ["keep"]
