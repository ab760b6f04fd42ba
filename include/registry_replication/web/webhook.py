"""The notification endpoint: ``POST /events`` (mounted at ``/registry-replication``).

Airflow does not authenticate plugin apps, so the shared secret checked here is the only guard:
the ``Authorization`` header must equal the ``notification_secret`` setting
(``REGISTRY_NOTIFICATION_SECRET``) exactly, as a registry's
``notifications.endpoints[].headers.Authorization`` sends it. With no secret configured every
request is refused. An event is stored before the 2xx; a refused request stores nothing.

Every authenticated envelope gets a 2xx, even one holding events out of grammar: those are
stored as rejected (shown on the status page), because a registry retries a refused envelope
forever and delivers nothing after it. 4xx is only for what is not an envelope at all.

A 503 is for a deployment that would store the event where no worker looks (a local SQLite
store on a distributed executor: ``refusal``): the registry keeps the envelope and retries it
until the setting the message names is fixed, so nothing is lost meanwhile.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable

from fastapi import APIRouter, FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from registry_replication.settings import current, variable
from registry_replication.store import Store
from registry_replication.store.queue import Event
from registry_replication.transport import secrets
from registry_replication.web.notifications import ENVELOPE_MEDIA_TYPE, InvalidNotification, parse

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MIN_SECRET_LENGTH = 32
# One writer per process: SQLite takes one at a time anyway, and writers queued on a lock are
# served in turn, where SQLite's busy handler makes them sleep and poll (a p99 of 0.6 s instead
# of 0.2 s under 20 concurrent senders: benchmarks/webhook_flood.py).
_WRITE_LOCK = threading.Lock()
ACCEPTED_TYPES = (ENVELOPE_MEDIA_TYPE, "application/json")


def events_router(
    store: Callable[[], Store],
    secret: Callable[[], str | None],
    refusal: Callable[[], str | None] = lambda: None,
) -> APIRouter:
    router = APIRouter()

    @router.post("/events", status_code=200)
    async def receive(request: Request) -> dict[str, int]:
        _authenticate(request, secret())
        if reason := refusal():
            log.error("refusing a notification (the registry will retry it): %s", reason)
            raise HTTPException(503, f"not stored: {reason}")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in ACCEPTED_TYPES:
            raise HTTPException(415, f"expected Content-Type {ENVELOPE_MEDIA_TYPE}")
        body = await _read_limited(request)
        try:
            parsed = parse(body)
        except InvalidNotification as exc:
            log.warning("refused a notification: %s", exc)
            raise HTTPException(400, str(exc)) from None
        for event in parsed.rejected:
            log.warning(
                "notification event %r (%s %r) %s. What to do: nothing is replicated "
                "from this event; rename the repository or tag on the primary to a valid "
                "one, or delete it there",
                event.id,
                event.action,
                event.repository,
                event.error,
            )
        received = parsed.kept + parsed.rejected
        # The database write blocks (SQLite fsyncs): off the event loop, which in Airflow's
        # API server also serves the UI and the REST API.
        stored = await run_in_threadpool(_add, store(), received)
        log.info(
            "notification: %d events stored (%d rejected), %d repeated, %d ignored "
            "(blob/pull/mount)",
            stored,
            len(parsed.rejected),
            len(received) - stored,
            parsed.ignored,
        )
        return {
            "stored": stored,
            "rejected": len(parsed.rejected),
            "duplicates": len(received) - stored,
            "ignored": parsed.ignored,
        }

    return router


def _add(store: Store, received: list[Event]) -> int:
    """Store, idempotently: a redelivery, even one racing the original, is skipped."""
    with _WRITE_LOCK:
        return store.queue.add(received, current().secondaries)


def _authenticate(request: Request, secret: str | None) -> None:
    if not secret:
        name = variable("notification_secret")
        log.error("refusing a notification: %s is not set", name)
        raise HTTPException(401, f"the webhook secret is not configured ({name})")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise HTTPException(401, "wrong or missing Authorization header")


async def _read_limited(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"notification larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"notification larger than {MAX_BODY_BYTES} bytes")
    return bytes(body)


def warn_if_weak(secret: str | None) -> None:
    """Warn at start-up about a notification secret short enough to guess."""
    if secret and len(secret) < MIN_SECRET_LENGTH:
        log.warning(
            "%s is %d characters long; use at least %d random characters (for example "
            "`openssl rand -hex 32`): it is the only guard on the webhook",
            variable("notification_secret"),
            len(secret),
            MIN_SECRET_LENGTH,
        )


def create_app(
    store: Store | None = None,
    secret: str | None = None,
    refusal: Callable[[], str | None] = lambda: None,
) -> FastAPI:
    """The app; by default the store and secret come from the settings, read lazily.
    ``refusal``: why events cannot be stored here now (None: they can)."""
    cached: list[Store] = [store] if store else []

    def get_store() -> Store:
        if not cached:
            cached.append(Store())
        return cached[0]

    def get_secret() -> str | None:
        value = secret if secret is not None else current().notification_secret or None
        secrets.mask(value)
        return value

    warn_if_weak(get_secret())
    # No schema or docs routes: nothing on this app is behind Airflow's login.
    app = FastAPI(title="registry-replication", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(events_router(get_store, get_secret, refusal))
    return app
