"""Notification envelopes as distribution POSTs them, for the webhook's tests.

Plain functions rather than fixtures: the tests build events in ``parametrize`` lists, which are
made before any fixture exists. The fixtures that use them (the webhook's ``TestClient``, its
secret, one served on loopback) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from registry_replication.web.notifications import ENVELOPE_MEDIA_TYPE

# Long enough not to be warned about (the webhook warns about a short one).
SECRET = "webhook-test-secret-0123456789abcdef"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST = "sha256:" + "a" * 64


def event(
    action: str = "push",
    repository: str = "group/app",
    tag: str | None = "1.0",
    digest: str | None = DIGEST,
    media_type: str | None = MANIFEST,
    event_id: str | None = None,
    **top: Any,
) -> dict[str, Any]:
    """One event of an envelope (``top``: more top-level fields). Its target carries a ``url``
    the webhook must never follow."""
    target = {
        "mediaType": media_type,
        "repository": repository,
        "digest": digest,
        "url": "http://attacker.example/v2/x",
    }
    if tag is not None:
        target["tag"] = tag
    return {
        "id": event_id or str(uuid.uuid4()),
        "timestamp": "2026-11-28T06:00:00.123Z",
        "action": action,
        "target": target,
        **top,
    }


def post(
    client: Any,
    body: Any = None,
    *,
    events: list[Any] | None = None,
    auth: str | None = SECRET,
    media_type: str = ENVELOPE_MEDIA_TYPE,
) -> Any:
    """POST an envelope (``events``) or any ``body`` (bytes as they are, anything else as JSON)
    to the webhook behind ``client``, with ``auth`` as the shared secret (None: no header)."""
    if events is not None:
        body = {"events": events}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": media_type}
    if auth is not None:
        headers["Authorization"] = auth
    return client.post("/events", content=data, headers=headers)
