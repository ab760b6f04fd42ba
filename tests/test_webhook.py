"""The notification endpoint: authentication, validation, filtering, idempotent storage."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from replication_harness import images
from replication_harness.registry import Notifications
from replication_harness.servers import serve_on_loopback
from registry_replication.notifications import ENVELOPE_MEDIA_TYPE
from registry_replication.store import Store
from registry_replication.webhook import create_app

SECRET = "Geo_s3cret-token"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST = "sha256:" + "a" * 64


def event(action="push", media_type=MANIFEST, tag="1.0", repository="group/app", digest=DIGEST,
          **extra):
    target = {"mediaType": media_type, "repository": repository, "digest": digest,
              "url": "http://attacker.example/v2/x", **extra}
    if tag is not None:
        target["tag"] = tag
    return {"id": str(uuid.uuid4()), "timestamp": "2026-11-28T06:00:00.123Z", "action": action,
            "target": target}


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'events.db'}")


@pytest.fixture
def client(store):
    return TestClient(create_app(store, secret=SECRET))


def post(client, body, *, auth=SECRET, media_type=ENVELOPE_MEDIA_TYPE):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": media_type}
    if auth is not None:
        headers["Authorization"] = auth
    return client.post("/events", content=data, headers=headers)


@pytest.mark.parametrize("auth", [None, "", "wrong", SECRET + "x", "Bearer " + SECRET])
def test_missing_or_wrong_secret_is_401(client, store, auth):
    response = post(client, {"events": [event()]}, auth=auth)
    assert response.status_code == 401
    assert store.queue.events() == []


def test_no_secret_configured_refuses_everything(store, monkeypatch):
    monkeypatch.delenv("REGISTRY_NOTIFICATION_SECRET", raising=False)
    unconfigured = TestClient(create_app(store))
    response = post(unconfigured, {"events": [event()]}, auth="")
    assert response.status_code == 401 and "not configured" in response.json()["detail"]
    assert store.queue.events() == []


@pytest.mark.parametrize("body,media_type,status", [
    (b"x" * (1 << 20 + 1), ENVELOPE_MEDIA_TYPE, 413),
    (b"{not json", ENVELOPE_MEDIA_TYPE, 400),
    ({"nope": []}, ENVELOPE_MEDIA_TYPE, 400),
    ({"events": {"not": "a list"}}, ENVELOPE_MEDIA_TYPE, 400),
    ([event()], ENVELOPE_MEDIA_TYPE, 400),
    ({"events": [0] * 10_001}, ENVELOPE_MEDIA_TYPE, 400),  # more events than allowed
    ({"events": [event()]}, "text/plain", 415),
])
def test_bad_input_is_4xx_and_stores_nothing(client, store, body, media_type, status):
    response = post(client, body, media_type=media_type)
    assert response.status_code == status, response.text
    assert store.queue.events() == []


def test_duplicate_delivery_is_stored_once(client, store):
    envelope = {"events": [event(), event(tag="2.0")]}
    assert post(client, envelope).json() == {"stored": 2, "rejected": 0, "duplicates": 0,
                                             "ignored": 0}
    assert post(client, envelope).json() == {"stored": 0, "rejected": 0, "duplicates": 2,
                                             "ignored": 0}
    assert len(store.queue.events()) == 2


def test_blob_pull_and_mount_events_are_ignored(client, store):
    envelope = {"events": [
        event(media_type="application/octet-stream", tag=None),  # blob push
        event(action="pull"),
        event(action="mount", media_type="application/octet-stream", tag=None),
        event(action="delete", media_type=None, tag=None),  # manifest (or blob) delete
        event(),
    ]}
    assert post(client, envelope).json() == {"stored": 2, "rejected": 0, "duplicates": 0,
                                             "ignored": 3}
    stored = sorted((e["action"], e["tag"]) for e in store.queue.events())
    assert stored == [("delete", None), ("push", "1.0")]


@pytest.fixture
def served_webhook(store):
    """The app behind a real uvicorn server on loopback."""
    with serve_on_loopback(create_app(store, secret=SECRET)) as url:
        yield f"{url}/events"


def test_real_registry_notifications_are_stored(start_registry, keys, token_service,
                                                served_webhook, store):
    from registry_replication.client import RegistryClient

    primary = start_registry("notifying", keys=keys, token_realm=token_service.realm,
                             notifications=Notifications(served_webhook, SECRET))
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
        ("push", "group/app", img.digest)]
    # The children were pushed by digest: kept (manifest pushes), blobs dropped.
    by_digest = {e["digest"] for e in store.queue.events() if e["tag"] is None}
    assert by_digest == {child.digest for child in img.children}
