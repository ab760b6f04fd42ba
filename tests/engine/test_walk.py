"""One digest's walk, from ``POST /events`` to the blob ``PUT``, passes through each function once.

A notifying primary (distribution 2.8) posts the push of a one-layer image to the webhook; the
event is claimed and replicated as ``replicate_events`` does. Every function of the walk that
ARCHITECTURE.md describes is wrapped with a counter: the event-level steps run once for the
event, and the blob-level steps once for the layer's digest (and the registries are asked about
that digest once per request kind).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_replication.engine import plan, realtime
from registry_replication.engine.copy import Copier
from registry_replication.engine.walk import ManifestCache
from registry_replication.store.queue import EventQueue
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.transport import Request, Transport
from registry_replication.web import webhook
from replication_harness import images
from replication_harness.registry import Notifications
from replication_harness.servers import serve_on_loopback

ARCHITECTURE = Path(__file__).resolve().parents[2] / "ARCHITECTURE.md"
SECRET = "walk_Notification-Secret"

# The walk, step by step: (owner, attribute). Event steps are counted per call; digest steps
# only when an argument is (or carries, or names) the layer's digest.
EVENT_STEPS = [
    (webhook, "_authenticate"),
    (webhook, "_read_limited"),
    (webhook, "parse"),
    (webhook, "_add"),
    (EventQueue, "add"),
    (EventQueue, "claim"),
    (realtime, "coalesce"),
    (realtime, "_copy_tags"),
    (realtime, "build_plan"),
    (plan, "_image_task"),
    (ManifestCache, "get"),
    (Copier, "copy_blobs"),
    (Copier, "push_images"),
    (Copier, "_push_tag"),
    (RegistryClient, "put_manifest"),
]
DIGEST_STEPS = [
    (plan, "_has_blob"),
    (RegistryClient, "has_blob"),
    (Copier, "copy_blob"),
    (Copier, "_mount_or_copy"),
    (Copier, "_transfer"),
    (RegistryClient, "upload_blob"),
    (RegistryClient, "read_blob"),
]


def _mentions(value: Any, digest: str) -> bool:
    if isinstance(value, str):
        return digest in value
    if getattr(value, "digest", None) == digest:
        return True
    if isinstance(value, (list, tuple)):
        return any(_mentions(v, digest) for v in value)
    return False


class Walk:
    """Counts calls of the walk's functions, from any thread (uvicorn's, the copier's pools)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, digest: str) -> None:
        self.digest, self.calls, self.sent = digest, Counter(), Counter()
        self._lock = threading.Lock()
        for owner, name in EVENT_STEPS:
            self._wrap(monkeypatch, owner, name, per_digest=False)
        for owner, name in DIGEST_STEPS:
            self._wrap(monkeypatch, owner, name, per_digest=True)
        send = Transport.send

        def counted_send(transport: Transport, request: Request) -> Any:
            path = request.path
            if digest in path or request.reference == digest:  # the PUT's is url-encoded
                with self._lock:
                    self.sent[
                        (transport.url, request.method, path.split("?")[0].rsplit("/", 2)[-2])
                    ] += 1
            return send(transport, request)

        monkeypatch.setattr(Transport, "send", counted_send)

    def _wrap(
        self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, *, per_digest: bool
    ) -> None:
        original = inspect.getattr_static(owner, name)
        key = f"{getattr(owner, '__name__', owner)}.{name}".split(".")[-2:]
        label = ".".join(key)

        def counts(args: tuple, kwargs: dict) -> bool:
            return not per_digest or _mentions([*args, *kwargs.values()], self.digest)

        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                self._count(label, counts(args, kwargs))
                return await original(*args, **kwargs)
        else:

            @functools.wraps(original)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                self._count(label, counts(args, kwargs))
                return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    def forget_pushing(self) -> None:
        """Forget the test's own push to the primary (the client calls it made)."""
        with self._lock:
            for label in [label for label in self.calls if label.startswith("RegistryClient.")]:
                del self.calls[label]
            self.sent.clear()

    def _count(self, label: str, counted: bool) -> None:
        if counted:
            with self._lock:
                self.calls[label] += 1


@pytest.fixture
def notifying_primary(start_registry, keys, token_service, store) -> Iterator[Any]:
    with serve_on_loopback(webhook.create_app(store, secret=SECRET)) as url:
        yield start_registry(
            "notifying",
            keys=keys,
            token_realm=token_service.realm,
            notifications=Notifications(f"{url}/events", SECRET, backoff="200ms"),
        )


def test_one_digest_passes_each_step_of_the_walk_once(
    notifying_primary, secondary, store, leases, monkeypatch
):
    image = images.ImageFactory(base_layers=0).make()  # a config and one layer
    layer = json.loads(image.raw)["layers"][0]["digest"]
    data = next(blob.data for blob in image.blobs if blob.digest == layer)
    walk = Walk(monkeypatch, layer)
    with RegistryClient(
        RegistryConfig.from_connection(notifying_primary.connection()), writable=True
    ) as writer:
        images.push(writer, "group/walk", image, ["1.0"])
    deadline = time.monotonic() + 30
    while store.queue.ready_counts(["registry_secondary"])["registry_secondary"] == 0:
        assert time.monotonic() < deadline, "the push's notification never arrived"
        time.sleep(0.1)
    walk.forget_pushing()

    owner, events = store.queue.claim("registry_secondary", owner=leases.owner)
    assert [(e.action, e.repository, e.tag) for e in events] == [("push", "group/walk", "1.0")]
    with (
        RegistryClient(RegistryConfig.from_connection(notifying_primary.connection())) as primary,
        RegistryClient(
            RegistryConfig.from_connection(secondary.connection()), writable=True
        ) as target,
    ):
        outcomes = realtime.replicate_events(primary, target, events, leases=leases)
    assert outcomes == {events[0].id: None}
    store.queue.complete("registry_secondary", owner, [events[0].id])
    calls, sent = dict(walk.calls), dict(walk.sent)

    # The layer is on the secondary, byte for byte.
    with RegistryClient(RegistryConfig.from_connection(secondary.connection())) as reader:
        assert b"".join(reader.read_blob("group/walk", layer)) == data
        assert reader.head_manifest("group/walk", "1.0").digest == image.digest

    expected = {
        ".".join(f"{getattr(o, '__name__', o)}.{n}".split(".")[-2:]): 1
        for o, n in EVENT_STEPS + DIGEST_STEPS
    }
    assert calls == expected
    # Asked about the layer once per request kind: HEAD on the secondary, GET on the primary,
    # and the PUT that commits it.
    assert sorted(sent.items()) == sorted(
        {
            (secondary.url, "HEAD", "blobs"): 1,
            (notifying_primary.url, "GET", "blobs"): 1,
            (secondary.url, "PUT", "uploads"): 1,
        }.items()
    )


def test_architecture_md_describes_every_step_of_the_walk():
    text = ARCHITECTURE.read_text()
    walk = text[text.index("## One notification") : text.index("## Write protocol")]
    named = set(re.findall(r"`([^`]+)`", walk))
    mentioned = {
        name
        for _, name in EVENT_STEPS + DIGEST_STEPS
        if any(re.search(rf"\b{re.escape(name)}\b", n) for n in named)
    }
    assert mentioned == {name for _, name in EVENT_STEPS + DIGEST_STEPS}
