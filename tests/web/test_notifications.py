"""Notification envelopes, parsed: manifest pushes and deletes kept with typed names, the broken
or out-of-grammar ones rejected with their reason, pulls, mounts and blob pushes ignored, and
only a body that is no envelope at all refused (no network: the webhook's HTTP side is
``test_webhook.py``'s)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from registry_replication.outcomes import EventStatus
from registry_replication.transport.reference import Digest, Repository, Tag
from registry_replication.web.notifications import (
    MAX_EVENTS,
    InvalidNotification,
    parse,
)
from replication_harness.envelopes import event

DIGEST = "sha256:" + "a" * 64
BLOB = "application/vnd.oci.image.layer.v1.tar+gzip"


def envelope(*events: object) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def test_a_parsed_notification_hands_on_typed_names():
    parsed = parse(
        json.dumps(
            {
                "events": [
                    event(repository="group/app", tag="1.0", digest=DIGEST),
                    event(
                        action="delete",
                        repository="group/app",
                        tag=None,
                        digest=DIGEST,
                        media_type=None,
                    ),
                ]
            }
        ).encode()
    )
    push, delete = parsed.kept
    assert (type(push.repository), type(push.tag), type(push.digest)) == (Repository, Tag, Digest)
    assert type(delete.digest) is Digest and delete.tag is None
    assert not parsed.rejected


def test_a_kept_event_carries_what_the_registry_said_and_nothing_of_its_url():
    pushed = event(event_id="e-1", repository="group/app", tag="1.0", digest=DIGEST)
    (kept,) = parse(envelope(pushed)).kept
    assert (kept.id, kept.action, kept.repository, kept.tag, kept.digest, kept.media_type) == (
        "e-1",
        "push",
        "group/app",
        "1.0",
        DIGEST,
        "application/vnd.oci.image.manifest.v1+json",
    )
    assert kept.timestamp == dt.datetime(2026, 11, 28, 6, 0, 0, 123000, tzinfo=dt.UTC)
    assert kept.status == EventStatus.PENDING and kept.error is None
    assert "attacker" not in repr(kept)  # target.url is never read


def test_a_timestamp_without_a_zone_is_read_as_utc():
    (kept,) = parse(envelope(event(timestamp="2026-11-28T06:00:00"))).kept
    assert kept.timestamp == dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)


def test_pulls_mounts_and_blob_pushes_are_ignored_unvalidated():
    parsed = parse(
        envelope(
            event(action="pull", repository="Not/Valid"),
            event(action="mount", repository="group/app", tag=None, media_type=BLOB),
            event(action="push", repository="group/app", tag=None, media_type=BLOB),
            "not an event",
            {"action": "pull"},
            event(action="push", repository="group/app", tag="1.0"),
        )
    )
    assert parsed.ignored == 5
    assert [(e.action, e.tag) for e in parsed.kept] == [("push", "1.0")]
    assert parsed.rejected == []


def test_deletes_by_digest_or_by_tag_are_kept_blob_or_manifest_alike():
    """distribution 2.8 reports a blob's delete as a manifest's: processing tells them apart."""
    parsed = parse(
        envelope(
            event(action="delete", tag=None, media_type=None),
            event(action="delete", tag="1.0", digest=None, media_type=None),
            event(action="delete", tag=None, digest=None, media_type=None),  # names nothing
            event(action="push", tag=None),  # a manifest pushed by digest
        )
    )
    assert [(e.action, e.tag, e.digest) for e in parsed.kept] == [
        ("delete", None, DIGEST),
        ("delete", "1.0", None),
        ("push", None, DIGEST),
    ]
    assert parsed.ignored == 1


@pytest.mark.parametrize(
    "fields,reason",
    [
        ({"repository": "Foo/app"}, "rejected: invalid repository name 'Foo/app'"),
        ({"repository": "group/../etc"}, "rejected: invalid repository name"),
        ({"tag": ".hidden"}, "rejected: invalid tag '.hidden'"),
        ({"tag": "t" * 129}, "rejected: invalid tag"),
        ({"digest": "md5:" + "a" * 32}, "rejected: invalid digest"),
        ({"media_type": "x" * 256}, "rejected: malformed event: target.mediaType"),
        ({"timestamp": "yesterday"}, "rejected: malformed event: timestamp"),
        ({"target": "group/app"}, "rejected: malformed event: target"),
        ({"id": ""}, "rejected: malformed event: id"),
    ],
)
def test_an_event_out_of_grammar_or_broken_is_rejected_with_its_reason(fields, reason):
    good = event(event_id="good", tag="2.0")
    bad = event(event_id="bad", **{k: v for k, v in fields.items() if k != "timestamp"})
    for key in ("timestamp", "target", "id"):
        if key in fields:
            bad[key] = fields[key]
    parsed = parse(envelope(bad, good))
    assert [e.id for e in parsed.kept] == ["good"]  # one bad event never spoils the rest
    (rejected,) = parsed.rejected
    assert rejected.status == EventStatus.REJECTED
    assert rejected.error.startswith(reason), rejected.error
    assert rejected.action == "push" and len(rejected.error) <= 4000


def test_a_rejected_event_is_kept_as_it_came_clipped_with_a_stable_id():
    broken = {
        "id": {"not": "a string"},
        "timestamp": "2026-11-28T06:00:00Z",
        "action": "push",
        "target": {"repository": "R" * 1000, "tag": ["1.0"], "mediaType": "m" * 300},
    }
    first = parse(envelope(broken)).rejected[0]
    again = parse(envelope(broken)).rejected[0]
    assert first.id == again.id and first.id.startswith("rejected-")  # a redelivery repeats
    assert first.repository == "R" * 255 and first.tag == '["1.0"]'
    assert len(first.media_type) == 255
    assert first.timestamp == dt.datetime(2026, 11, 28, 6, 0, tzinfo=dt.UTC)
    nameless = parse(envelope({"action": "delete", "target": None})).rejected[0]
    assert nameless.repository == "(none)" and nameless.tag is None


@pytest.mark.parametrize(
    "body,where",
    [
        (b"not json", "not a registry notification envelope"),
        (b"[]", "not a registry notification envelope"),
        (b"{}", "events"),
        (b'{"events": {"a": 1}}', "events"),
        (envelope(*[{"action": "pull"}] * (MAX_EVENTS + 1)), "events"),
    ],
)
def test_only_a_body_that_is_no_envelope_at_all_is_refused(body, where):
    with pytest.raises(InvalidNotification, match=where):
        parse(body)


def test_an_envelope_of_the_most_events_allowed_is_read():
    parsed = parse(envelope(*[{"action": "pull"}] * MAX_EVENTS))
    assert parsed.ignored == MAX_EVENTS and parsed.kept == parsed.rejected == []
