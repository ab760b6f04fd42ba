"""Hostile and odd notifications: the webhook answers 2xx to every authenticated envelope, keeps
what it can, stores the rest as rejected, and never lets one event block the next."""

from __future__ import annotations

import logging

import pytest

from registry_replication.outcomes import EventStatus
from registry_replication.web.webhook import create_app
from replication_harness.envelopes import SECRET, event, post


@pytest.mark.parametrize(
    "repository",
    [
        "a" * 255,  # the longest name
        "a__b",
        "a.b",
        "a-b",
        "a---b",
        "a_b.c-d__e",  # every separator
        "one/two/three/four/five",  # nested five deep
        "x0/" * 4 + "x" * (255 - 12),  # five deep and 255 characters
    ],
)
@pytest.mark.parametrize("tag", ["t" * 128, "_x", "V1.0-rc_1"])
def test_names_at_the_grammars_limits_are_kept(webhook, store, repository, tag):
    assert len(repository) <= 255
    response = post(webhook, events=[event(repository=repository, tag=tag)])
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 1 and response.json()["rejected"] == 0
    (row,) = store.queue.events()
    assert (row["status"], row["repository"], row["tag"]) == (EventStatus.PENDING, repository, tag)


HOSTILE = [
    ("uppercase first component", dict(repository="Foo/app"), "invalid repository name"),
    ("path traversal", dict(repository="../../etc/passwd"), "invalid repository name"),
    ("query in name", dict(repository="group/app?x=1"), "invalid repository name"),
    ("256 characters", dict(repository="a" * 256), "invalid repository name"),
    ("triple underscore", dict(repository="a___b"), "invalid repository name"),
    ("leading dot", dict(repository=".a"), "invalid repository name"),
    ("trailing dash", dict(repository="a-"), "invalid repository name"),
    ("double dot", dict(repository="a..b"), "invalid repository name"),
    ("empty component", dict(repository="a//b"), "invalid repository name"),
    ("huge name", dict(repository="x" * 100_000), "invalid repository name"),
    ("tag of 129", dict(tag="t" * 129), "invalid tag"),
    ("tag with space", dict(tag="bad tag"), "invalid tag"),
    ("tag starting with dot", dict(tag=".hidden"), "invalid tag"),
    ("bad digest", dict(digest="sha256:zz"), "invalid digest"),
    ("uppercase digest", dict(digest="sha256:" + "B" * 64), "invalid digest"),
    ("digest of a non-string", dict(digest=["sha256:" + "b" * 64]), "target.digest"),
    ("repository of a number", dict(repository=12), "target.repository"),
    ("media type of 300", dict(media_type="application/" + "x" * 300), "target.mediaType"),
    (
        "delete out of grammar",
        dict(action="delete", repository="Foo/app", tag=None, media_type=None),
        "invalid repository name",
    ),
]


@pytest.mark.parametrize("case,fields,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_an_event_out_of_grammar_is_rejected_and_the_rest_kept(
    webhook, store, case, fields, reason
):
    bad = event(**fields)
    good = event(tag="after")
    response = post(webhook, events=[bad, good])
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 2, "rejected": 1, "duplicates": 0, "ignored": 0}
    rows = {row["id"]: row for row in store.queue.events()}
    assert rows[good["id"]]["status"] == EventStatus.PENDING
    rejected = rows[bad["id"]]
    assert rejected["status"] == EventStatus.REJECTED and reason in rejected["last_error"]
    assert len(rejected["repository"]) <= 255
    if isinstance(fields.get("repository"), str):
        assert rejected["repository"] == fields["repository"][:255]  # what the operator sees
    # Never claimable: only the good event comes out of the queue.
    _, claimed = store.queue.claim("registry_secondary")
    assert [e.id for e in claimed] == [good["id"]]
    assert store.queue.stats()["counts"][EventStatus.REJECTED] == 1


@pytest.mark.parametrize(
    "broken",
    [
        {"action": "push", "id": "no-target", "timestamp": "2026-11-28T06:00:00Z"},
        {
            "action": "push",
            "id": "target-a-string",
            "timestamp": "2026-11-28T06:00:00Z",
            "target": "group/app:1.0",
        },
        event(event_id="x" * 10_000),  # an id far beyond the column
        {**event(), "id": ""},
        {**event(), "id": 12345},
        {**event(), "timestamp": "yesterday"},
        {k: v for k, v in event().items() if k != "timestamp"},
    ],
    ids=[
        "no target",
        "target not an object",
        "10k id",
        "empty id",
        "numeric id",
        "bad timestamp",
        "no timestamp",
    ],
)
def test_broken_kept_events_are_rejected_with_a_stable_id(webhook, store, broken):
    good = event(tag="after")
    for _ in range(2):  # the registry redelivers: still stored once
        response = post(webhook, events=[broken, good])
        assert response.status_code == 200, response.text
    rows = store.queue.events()
    assert sorted(r["status"] for r in rows) == [EventStatus.PENDING, EventStatus.REJECTED]
    rejected = next(r for r in rows if r["status"] == EventStatus.REJECTED)
    assert 0 < len(rejected["id"]) <= 255 and rejected["last_error"].startswith("rejected: ")


def test_blob_pull_and_mount_events_are_not_validated(webhook, store):
    garbage = dict(repository="Foo/../x", digest="not-a-digest", tag=None)
    response = post(
        webhook,
        events=[
            event(media_type="application/octet-stream", **garbage),  # blob push
            event(action="pull", repository="Foo/app", tag="bad tag"),
            event(action="mount", media_type="application/octet-stream", **garbage),
            "not even an object",
            42,
            None,
            event(tag="ok"),
        ],
    )
    assert response.json() == {"stored": 1, "rejected": 0, "duplicates": 0, "ignored": 6}
    assert [(r["status"], r["tag"]) for r in store.queue.events()] == [(EventStatus.PENDING, "ok")]


def test_one_bad_event_never_blocks_the_next_envelopes(webhook, store):
    """distribution retries a refused envelope forever: every envelope must get a 2xx."""
    for i in range(20):
        events = [event(repository="Foo/app", tag=f"v{i}"), event(tag=f"v{i}")]
        assert post(webhook, events=events).status_code == 200
    counts = store.queue.stats()["counts"]
    assert (counts[EventStatus.PENDING], counts[EventStatus.REJECTED]) == (20, 20)


def test_no_schema_or_docs_routes(webhook):
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert webhook.get(path).status_code == 404, path


def test_short_secret_warns_at_start_up(store, caplog):
    with caplog.at_level(logging.WARNING, logger="registry_replication.web.webhook"):
        create_app(store, secret="short-secret")
    assert "REGISTRY_NOTIFICATION_SECRET is 12 characters long" in caplog.text
    assert "short-secret" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="registry_replication.web.webhook"):
        create_app(store, secret=SECRET)
    assert caplog.text == ""


def test_rejected_events_are_counted_and_shown_on_the_status_page(webhook, store):
    from registry_replication.airflow.status_render import render
    from registry_replication.web.status import status

    post(webhook, events=[event(repository="Foo/app", tag="1.0"), event(tag="1.0")])
    s = status(store)
    assert s["queue"]["counts"][EventStatus.REJECTED] == 1 and s["queue"]["depth"] == 1
    (shown,) = s["rejected_events"]
    assert shown["repository"] == "Foo/app" and "invalid repository name" in shown["last_error"]
    page = render(s)
    assert 'class="rejected-event" data-repository="Foo/app"' in page
    assert "1 rejected" in page
