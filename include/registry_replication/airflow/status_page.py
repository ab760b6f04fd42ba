"""The replication status page in Airflow's API server, behind Airflow's own login.

``GET /registry-replication/status`` (HTML) and ``GET /registry-replication/api/status`` (the
same data as JSON) sit in the plugin app next to the webhook. Airflow does not authenticate
plugin apps, so both routes declare Airflow's own dependency,
``airflow.api_fastapi.core_api.security.requires_access_dag``: it resolves the user the way the
REST API does (``Authorization: Bearer <JWT>``, else the UI's ``_token`` cookie, validated by
the auth manager's ``get_user_from_token``) and asks the auth manager whether that user may
read the runs of the replication DAGs. Without a valid login the JSON answers 401; the page
redirects to Airflow's login and comes back, as the Airflow UI itself does. ``POST /events``
keeps its own shared-secret check and needs no login. Both take ``?secondary=<conn id>``: the
repositories, failed layers and dead letters of that secondary alone (the summary row of each
secondary is always there).

Operating it: ``GET /metrics`` is Prometheus' text format, outside Airflow's login (Prometheus
cannot log in) and behind its own Bearer token (``REGISTRY_REPLICATION_METRICS_TOKEN``; unset:
404). ``POST /dead-letters/retry`` (put a failed event back in the queue) and ``POST /sync-now``
(trigger ``registry_sync`` for one repository through Airflow's REST API, as the logged-in user)
change state (each for one secondary, which the form posts), so besides Airflow's login they need a CSRF token that the page embeds in its
forms: an HMAC keyed by the user's own JWT, which a cross-site page cannot read. A request
authenticated by an ``Authorization`` header (not a cookie) cannot be forged cross-site and
needs no such token. A cross-origin ``Origin`` header is refused outright.

Airflow loads plugins in every component (scheduler, DAG processor, task runners), and its API
security module takes seconds to import, so the app is built on its first request, which only
the API server ever receives.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import requests
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST

from registry_replication.airflow import deployment
from registry_replication.airflow.status_render import render
from registry_replication.outcomes import VerifyLevel
from registry_replication.settings import (
    EVENTS_DAG_ID,
    RECONCILE_DAG_ID,
    SYNC_DAG_ID,
    current,
    variable,
)
from registry_replication.store import Store
from registry_replication.web import metrics, webhook
from registry_replication.web.status import run_url, status

log = logging.getLogger("registry_replication.airflow")

# Reading the page needs read access to the runs of these DAGs: it shows what they recorded.
DAG_IDS = (RECONCILE_DAG_ID, EVENTS_DAG_ID)
JWT_COOKIE = "_token"  # the Airflow UI's session cookie


class LazyApp:
    """An ASGI app that builds the real one (``factory()``) when its first request arrives."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            self.app = self.factory()  # no await in between: built once
        await self.app(scope, receive, send)


def plugin_app() -> LazyApp:
    """What the plugin mounts at ``/registry-replication``."""
    return LazyApp(create_app)


def create_app(store: Store | None = None) -> FastAPI:
    """The webhook app plus the status routes; call it inside Airflow's API server."""
    from airflow.api_fastapi.app import API_BASE_URL, API_ROOT_PATH
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    store = store or Store()
    app = webhook.create_app(store=store, refusal=deployment.refusal)
    access = [
        Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=dag_id))
        for dag_id in DAG_IDS
    ]
    # Where the Airflow UI sends a browser that is not logged in (it validates ``next``).
    login_url = f"{API_ROOT_PATH.rstrip('/')}/api/v2/auth/login"
    # What this deployment leaves unshared goes first: it explains anything odd below.
    app.include_router(
        status_router(
            lambda secondary: {
                "misconfiguration": deployment.problems(),
                **status(store, ui_url=API_BASE_URL, secondary=secondary),
            },
            access,
            login_url,
        )
    )
    app.include_router(metrics_router(store, metrics.configured_token))
    # Retrying an event starts work in registry_events; "sync now" starts a registry_sync run.
    app.include_router(
        actions_router(
            store,
            retry_access=[
                Depends(
                    requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=EVENTS_DAG_ID)
                )
            ],
            sync_access=[
                Depends(requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=SYNC_DAG_ID))
            ],
            api_url=_api_url(),
            ui_url=API_BASE_URL,
        )
    )
    return app


def _configured_base_url() -> str:
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="").rstrip("/")


def _api_url() -> str:
    """Airflow's REST API, from its configuration (never from a request's Host header)."""
    from airflow.configuration import conf

    base = _configured_base_url()
    if not urlsplit(base).netloc:
        base = f"http://127.0.0.1:{conf.getint('api', 'port', fallback=8080)}{base}"
    return f"{base}/api/v2"


def metrics_router(store: Store, token: Callable[[], str | None]) -> APIRouter:
    """``GET /metrics``: 404 without a configured token, 401 with a wrong one."""
    router = APIRouter()

    @router.get("/metrics")
    def scrape(request: Request) -> Response:
        expected = token()
        if not expected:
            raise HTTPException(404, f"metrics are off: {variable('metrics_token')} is not set")
        if not metrics.token_matches(request.headers.get("authorization"), expected):
            raise HTTPException(
                401, "wrong or missing Bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        return Response(metrics.exposition(store), media_type=CONTENT_TYPE_LATEST)

    return router


def csrf_token(request: Request) -> str | None:
    """The page's CSRF token for this login: HMAC of a fixed label, keyed by the user's JWT."""
    jwt = request.cookies.get(JWT_COOKIE)
    if not jwt:
        return None
    return hmac.new(jwt.encode(), b"registry-replication csrf", hashlib.sha256).hexdigest()


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return (credentials.strip() or None) if scheme.lower() == "bearer" else None


def check_csrf(request: Request, given: str | None) -> None:
    """Refuse a state-changing request a cross-site page could have made."""
    origin = request.headers.get("origin")
    # The page's own origin: as the browser reached it, or as configured (behind a proxy).
    own = {request.headers.get("host"), urlsplit(_configured_base_url()).netloc} - {None, ""}
    if origin is not None and urlsplit(origin).netloc not in own:  # also "null"
        raise HTTPException(403, "cross-origin request refused")
    if _bearer(request):
        return  # a header a browser never adds on its own: not forgeable cross-site
    expected = csrf_token(request)
    if not (expected and given and hmac.compare_digest(given.encode(), expected.encode())):
        raise HTTPException(403, "missing or wrong CSRF token: reload the status page and retry")


def actions_router(
    store: Store, *, retry_access: list[Any], sync_access: list[Any], api_url: str, ui_url: str
) -> APIRouter:
    """The page's buttons: retry a dead-lettered event, and sync (or verify) one repository now."""
    router = APIRouter()

    @router.post("/dead-letters/retry", dependencies=retry_access)
    def retry(
        request: Request,
        event_id: Annotated[str, Form()],
        csrf: Annotated[str | None, Form()] = None,
        secondary: Annotated[str | None, Form()] = None,
    ) -> Response:
        """Put the event's failed delivery to ``secondary`` back in the queue (none given: its
        failed delivery to each secondary)."""
        check_csrf(request, csrf)
        if not store.queue.retry_failed(event_id, secondary):
            where = f" to {secondary}" if secondary else ""
            raise HTTPException(
                409,
                f"event {event_id!r} has no failed delivery{where} (a rejected "
                "event cannot be replicated; a done one needs nothing)",
            )
        log.info(
            "event %s put back in the queue for %s from the dead-letter list",
            event_id,
            secondary or "each secondary it failed on",
        )
        return RedirectResponse("status#dead-letters", status_code=303)

    @router.post("/sync-now", dependencies=sync_access)
    def sync_now(
        request: Request,
        repository: Annotated[str, Form()],
        csrf: Annotated[str | None, Form()] = None,
        verify: Annotated[str | None, Form()] = None,
        secondary: Annotated[str | None, Form()] = None,
    ) -> Response:
        check_csrf(request, csrf)
        # The run serves the row's secondary alone (param ``secondaries``; none: every one).
        configured = current().secondaries
        if secondary is not None and secondary not in configured:
            raise HTTPException(
                400,
                f"{secondary!r} is not a configured secondary (one of {', '.join(configured)}): "
                f"{SYNC_DAG_ID} cannot serve it",
            )
        # "Verify now" is this button with verify=blobs (or content): the run's DAG param.
        if verify is not None and verify not in list(VerifyLevel):
            raise HTTPException(
                400, f"not a verification level: {verify!r} (one of {', '.join(VerifyLevel)})"
            )
        repository = repository.strip()
        if not repository or len(repository) > 255 or any(c.isspace() for c in repository):
            raise HTTPException(400, f"not a repository name: {repository!r}")
        user_token = _bearer(request) or request.cookies.get(JWT_COOKIE)
        response = requests.post(
            f"{api_url}/dags/{SYNC_DAG_ID}/dagRuns",
            timeout=30,
            headers={"Authorization": f"Bearer {user_token}"},
            json={
                "logical_date": None,
                "conf": {
                    "repositories": [repository],
                    **({"secondaries": [secondary]} if secondary else {}),
                    **({"verify": verify} if verify else {}),
                },
            },
        )
        if not response.ok:
            raise HTTPException(
                response.status_code,
                f"Airflow refused to start {SYNC_DAG_ID}: {response.text[:500]}",
            )
        run_id = response.json()["dag_run_id"]
        log.info(
            "%s run %s started for %s on %s from the status page",
            SYNC_DAG_ID,
            run_id,
            repository,
            secondary or "every secondary",
        )
        return RedirectResponse(run_url(ui_url.rstrip("/"), SYNC_DAG_ID, run_id), status_code=303)

    return router


def status_router(
    get_status: Callable[[str | None], dict[str, Any]], access: list[Any], login_url: str
) -> APIRouter:
    """``GET /api/status`` and ``GET /status``, both behind the ``access`` dependencies; both
    take ``?secondary=`` (``get_status``'s argument)."""
    json_routes = APIRouter(dependencies=access)

    @json_routes.get("/api/status")
    def status_json(secondary: str | None = None) -> dict[str, Any]:
        """The replication status as JSON (the data of the page)."""
        return get_status(secondary or None)

    page_routes = APIRouter(dependencies=access, route_class=_login_redirect(login_url))

    @page_routes.get("/status", response_class=HTMLResponse)
    def status_page(request: Request, secondary: str | None = None) -> HTMLResponse:
        secondary = secondary or None
        json_url = "api/status" + (f"?{urlencode({'secondary': secondary})}" if secondary else "")
        return HTMLResponse(
            render(get_status(secondary), json_url=json_url, csrf=csrf_token(request))
        )

    router = APIRouter()
    router.include_router(json_routes)
    router.include_router(page_routes)
    return router


def _login_redirect(login_url: str) -> type[APIRoute]:
    """A route class that sends a browser without a valid login to Airflow's login page.

    The Airflow UI does the same on a 401, or a 403 "Invalid JWT token": it goes to
    ``api/v2/auth/login?next=<where it was>``, which hands over to the auth manager's login
    and comes back to ``next`` once logged in.
    """

    class LoginRedirectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except HTTPException as exc:
                    if exc.status_code == 401 or (
                        exc.status_code == 403 and exc.detail == "Invalid JWT token"
                    ):
                        back = urlencode({"next": str(request.url)})
                        return RedirectResponse(f"{login_url}?{back}", status_code=303)
                    if exc.status_code == 403:
                        return HTMLResponse(_FORBIDDEN, status_code=403)
                    raise

            return route

    return LoginRedirectRoute


_FORBIDDEN = """<!doctype html><meta charset="utf-8"><title>Registry replication</title>
<p style="font-family: system-ui, sans-serif; margin: 2rem">You are logged in, but not allowed
to read the runs of the replication DAGs (registry_reconcile, registry_events).</p>"""
