"""Registry notification envelopes: parse, validate and keep the manifest pushes and deletes.

Format: distribution's ``application/vnd.docker.distribution.events.v1+json``. As GitLab does,
manifest ``push`` and ``delete`` events are kept; blob, pull and mount events are dropped.
``target.url`` is ignored: the replicator builds every URL from its configured connection, so
whoever can post an event cannot point it anywhere.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry_replication import mediatypes as mt
from registry_replication.reference import (
    InvalidReference,
    validate_digest,
    validate_repository,
    validate_tag,
)
from registry_replication.store import Event

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
MANIFEST_TYPES = mt.SUPPORTED | mt.SCHEMA1


class InvalidNotification(ValueError):
    """An envelope that is not JSON, does not fit the schema, or names invalid references."""


class Target(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    media_type: str | None = Field(default=None, alias="mediaType")
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
    model_config = ConfigDict(extra="ignore")

    events: list[RawEvent] = Field(max_length=10_000)


def parse(body: bytes) -> tuple[list[Event], int]:
    """The events worth keeping, and how many were dropped; raises ``InvalidNotification``."""
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidNotification(f"not a registry notification envelope: {where}: {first['msg']}")
    kept: list[Event] = []
    for raw in envelope.events:
        target = raw.target
        try:
            validate_repository(target.repository)
            if target.tag is not None:
                validate_tag(target.tag)
            if target.digest is not None:
                validate_digest(target.digest)
        except InvalidReference as exc:
            raise InvalidNotification(f"event {raw.id}: {exc}") from None
        if _is_manifest_event(raw):
            timestamp = raw.timestamp if raw.timestamp.tzinfo else raw.timestamp.replace(
                tzinfo=dt.timezone.utc)
            kept.append(Event(raw.id, raw.action, target.repository, target.tag, target.digest,
                              target.media_type, timestamp))
    return kept, len(envelope.events) - len(kept)


def _is_manifest_event(raw: RawEvent) -> bool:
    target = raw.target
    if raw.action == "push":
        return target.media_type in MANIFEST_TYPES or target.tag is not None
    if raw.action == "delete":
        # distribution 2.8 reports manifest and blob deletes alike (repository and digest):
        # keep both; processing asks the primary whether a manifest really went away.
        return target.digest is not None or target.tag is not None
    return False  # pull, mount
