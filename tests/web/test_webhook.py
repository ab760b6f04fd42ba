"""The notification endpoint: authentication, validation, filtering, idempotent storage."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from registry_replication.web.notifications import ENVELOPE_MEDIA_TYPE
from registry_replication.web.webhook import create_app
from replication_harness import images
from replication_harness.envelopes import SECRET, event, post
from replication_harness.registry import Notifications


@pytest.mark.parametrize("auth", [None, "", "wrong", SECRET + "x", "Bearer " + SECRET])
def test_missing_or_wrong_secret_is_401(webhook, store, auth):
    response = post(webhook, {"events": [event()]}, auth=auth)
    assert response.status_code == 401
    assert store.queue.events() == []


def test_no_secret_configured_refuses_everything(store, monkeypatch):
    monkeypatch.delenv("REGISTRY_NOTIFICATION_SECRET", raising=False)
    unconfigured = TestClient(create_app(store))
    response = post(unconfigured, {"events": [event()]}, auth="")
    assert response.status_code == 401 and "not configured" in response.json()["detail"]
    assert store.queue.events() == []


@pytest.mark.parametrize(
    "body,media_type,status",
    [
        (b"x" * (1 << 20 + 1), ENVELOPE_MEDIA_TYPE, 413),
        (b"{not json", ENVELOPE_MEDIA_TYPE, 400),
        ({"nope": []}, ENVELOPE_MEDIA_TYPE, 400),
        ({"events": {"not": "a list"}}, ENVELOPE_MEDIA_TYPE, 400),
        ([event()], ENVELOPE_MEDIA_TYPE, 400),
        ({"events": [0] * 10_001}, ENVELOPE_MEDIA_TYPE, 400),  # more events than allowed
        ({"events": [event()]}, "text/plain", 415),
    ],
)
def test_bad_input_is_4xx_and_stores_nothing(webhook, store, body, media_type, status):
    response = post(webhook, body, media_type=media_type)
    assert response.status_code == status, response.text
    assert store.queue.events() == []


def test_duplicate_delivery_is_stored_once(webhook, store):
    envelope = {"events": [event(), event(tag="2.0")]}
    assert post(webhook, envelope).json() == {
        "stored": 2,
        "rejected": 0,
        "duplicates": 0,
        "ignored": 0,
    }
    assert post(webhook, envelope).json() == {
        "stored": 0,
        "rejected": 0,
        "duplicates": 2,
        "ignored": 0,
    }
    assert len(store.queue.events()) == 2


def test_blob_pull_and_mount_events_are_ignored(webhook, store):
    envelope = {
        "events": [
            event(media_type="application/octet-stream", tag=None),  # blob push
            event(action="pull"),
            event(action="mount", media_type="application/octet-stream", tag=None),
            event(action="delete", media_type=None, tag=None),  # manifest (or blob) delete
            event(),
        ]
    }
    assert post(webhook, envelope).json() == {
        "stored": 2,
        "rejected": 0,
        "duplicates": 0,
        "ignored": 3,
    }
    stored = sorted((e["action"], e["tag"]) for e in store.queue.events())
    assert stored == [("delete", None), ("push", "1.0")]


def test_real_registry_notifications_are_stored(
    start_registry, keys, token_service, webhook_url, store
):
    from registry_replication.transport.client import RegistryClient

    primary = start_registry(
        "notifying",
        keys=keys,
        token_realm=token_service.realm,
        notifications=Notifications(webhook_url, SECRET),
    )
    img = images.ImageFactory().multi_arch()
    with RegistryClient(primary.client_config(), writable=True) as writer:
        images.push(writer, "group/app", img, ["1.0"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tagged = [e for e in store.queue.events() if e["tag"] == "1.0"]
        if tagged:
            break
        time.sleep(0.2)
    assert [(e["action"], e["repository"], e["digest"]) for e in tagged] == [
        ("push", "group/app", img.digest)
    ]
    # The children were pushed by digest: kept (manifest pushes), blobs dropped.
    by_digest = {e["digest"] for e in store.queue.events() if e["tag"] is None}
    assert by_digest == {child.digest for child in img.children}
