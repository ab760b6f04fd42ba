"""Registry notification envelopes: parse, validate and keep the manifest pushes and deletes.

Format: distribution's ``application/vnd.docker.distribution.events.v1+json``. As GitLab does,
manifest ``push`` and ``delete`` events are kept; blob, pull and mount events are dropped
without being validated. ``target.url`` is ignored: the replicator builds every URL from its
configured connection, so whoever can post an event cannot point it anywhere.

Only an envelope that is not one at all (not JSON, no ``events`` list, too many events) is
refused. A kept event that is broken or names a repository, tag or digest outside the
reference grammar is *rejected*: stored with its reason and never processed. A registry's
notification queue is serial and retries a refused envelope forever, so refusing the envelope
for one bad event would stop every later notification.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry_replication.outcomes import EventStatus
from registry_replication.store.queue import Event
from registry_replication.transport import mediatypes as mt
from registry_replication.transport.reference import Digest, InvalidReference, Repository, Tag

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
MANIFEST_TYPES = mt.SUPPORTED | mt.SCHEMA1
MAX_EVENTS = 10_000
KEPT_ACTIONS = ("push", "delete")


class InvalidNotification(ValueError):
    """A body that is not a notification envelope at all (not JSON, no events list)."""


@dataclass
class Parsed:
    """What an envelope held: events to process, events rejected, and how many were dropped."""

    kept: list[Event] = field(default_factory=list)
    rejected: list[Event] = field(default_factory=list)
    ignored: int = 0


class Target(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    media_type: str | None = Field(default=None, alias="mediaType", max_length=255)
    digest: str | None = None
    repository: str
    tag: str | None = None
    size: int | None = None


class RawEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=255)
    timestamp: dt.datetime
    action: str
    target: Target


class Envelope(BaseModel):
    """Only the outer shape: each event is checked on its own, so one cannot spoil the rest."""

    model_config = ConfigDict(extra="ignore")

    events: list[Any] = Field(max_length=MAX_EVENTS)


def parse(body: bytes) -> Parsed:
    """Split an envelope into kept, rejected and ignored events; raises ``InvalidNotification``."""
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidNotification(
            f"not a registry notification envelope: {where}: {first['msg']}"
        ) from exc
    parsed = Parsed()
    for item in envelope.events:
        if not _is_manifest_event(item):
            parsed.ignored += 1
            continue
        try:
            parsed.kept.append(_event(RawEvent.model_validate(item)))
        except (ValidationError, InvalidReference) as exc:
            parsed.rejected.append(_rejected(item, _reason(exc)))
    return parsed


def _is_manifest_event(item: Any) -> bool:
    """Whether an event is a manifest push or delete, read leniently from the raw JSON."""
    if not isinstance(item, dict) or item.get("action") not in KEPT_ACTIONS:
        return False  # pull, mount, or not an event at all
    target = item.get("target")
    if not isinstance(target, dict):
        return True  # a push or delete without a target: broken, so rejected, not dropped
    if item["action"] == "push":
        return target.get("mediaType") in MANIFEST_TYPES or target.get("tag") is not None
    # distribution 2.8 reports manifest and blob deletes alike (repository and digest): keep
    # both; processing asks the primary whether a manifest really went away.
    return target.get("digest") is not None or target.get("tag") is not None


def _event(raw: RawEvent) -> Event:
    """A kept event, its names typed (``InvalidReference`` for one out of grammar)."""
    target = raw.target
    repository = Repository(target.repository)
    tag = None if target.tag is None else Tag(target.tag)
    digest = None if target.digest is None else Digest(target.digest)
    timestamp = raw.timestamp if raw.timestamp.tzinfo else raw.timestamp.replace(tzinfo=dt.UTC)
    return Event(raw.id, raw.action, repository, tag, digest, target.media_type, timestamp)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"malformed event: {where}: {first['msg']}"
    return str(exc)


def _rejected(item: dict[str, Any], reason: str) -> Event:
    """A rejected event as it came, clipped to the store's columns; its id stays stable.

    An id that is not a short string is replaced by a hash of the whole event, so a
    redelivery of the same envelope is still recognised as a repeat.
    """
    target = item.get("target") if isinstance(item.get("target"), dict) else {}
    event_id = item.get("id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 200:
        canonical = json.dumps(item, sort_keys=True, default=str).encode()
        event_id = "rejected-" + hashlib.sha256(canonical).hexdigest()
    return Event(
        event_id,
        item["action"],
        _text(target.get("repository"), 255) or "(none)",
        _text(target.get("tag"), 128),
        _text(target.get("digest"), 160),
        _text(target.get("mediaType"), 255),
        _timestamp(item.get("timestamp")),
        status=EventStatus.REJECTED,
        error=f"rejected: {reason}"[:4000],
    )


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


def _timestamp(value: Any) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        return dt.datetime.now(dt.UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
