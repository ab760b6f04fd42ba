"""The replication status page in Airflow's API server, behind Airflow's own login.

``GET /registry-replication/status`` (HTML) and ``GET /registry-replication/api/status`` (the
same data as JSON) sit in the plugin app next to the webhook. Airflow does not authenticate
plugin apps, so both routes declare Airflow's own dependency,
``airflow.api_fastapi.core_api.security.requires_access_dag``: it resolves the user the way the
REST API does (``Authorization: Bearer <JWT>``, else the UI's ``_token`` cookie, validated by
the auth manager's ``get_user_from_token``) and asks the auth manager whether that user may
read the runs of the replication DAGs. Without a valid login the JSON answers 401; the page
redirects to Airflow's login and comes back, as the Airflow UI itself does. ``POST /events``
keeps its own shared-secret check and needs no login.

Operating it: ``GET /metrics`` is Prometheus' text format, outside Airflow's login (Prometheus
cannot log in) and behind its own Bearer token (``REGISTRY_REPLICATION_METRICS_TOKEN``; unset:
404). ``POST /dead-letters/retry`` (put a failed event back in the queue) and ``POST /sync-now``
(trigger ``registry_sync`` for one repository through Airflow's REST API, as the logged-in user)
change state, so besides Airflow's login they need a CSRF token that the page embeds in its
forms: an HMAC keyed by the user's own JWT, which a cross-site page cannot read. A request
authenticated by an ``Authorization`` header (not a cookie) cannot be forged cross-site and
needs no such token. A cross-origin ``Origin`` header is refused outright.

Airflow loads plugins in every component (scheduler, DAG processor, task runners), and its API
security module takes seconds to import, so the app is built on its first request, which only
the API server ever receives.
"""

from __future__ import annotations

import datetime as dt
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
from jinja2 import Environment
from markupsafe import Markup, escape
from prometheus_client import CONTENT_TYPE_LATEST

from registry_replication import metrics, webhook
from registry_replication.status import run_url, status
from registry_replication.store import EventStore

log = logging.getLogger("registry_replication.airflow")

# Reading the page needs read access to the runs of these DAGs: it shows what they recorded.
DAG_IDS = ("registry_reconcile", "registry_events")
EVENTS_DAG_ID, SYNC_DAG_ID = "registry_events", "registry_sync"
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


def create_app(store: EventStore | None = None) -> FastAPI:
    """The webhook app plus the status routes; call it inside Airflow's API server."""
    from airflow.api_fastapi.app import API_BASE_URL, API_ROOT_PATH
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    store = store or EventStore()
    app = webhook.create_app(store=store)
    access = [Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=dag_id))
              for dag_id in DAG_IDS]
    # Where the Airflow UI sends a browser that is not logged in (it validates ``next``).
    login_url = f"{API_ROOT_PATH.rstrip('/')}/api/v2/auth/login"
    app.include_router(status_router(lambda: status(store, ui_url=API_BASE_URL), access,
                                     login_url))
    app.include_router(metrics_router(store, metrics.configured_token))
    # Retrying an event starts work in registry_events; "sync now" starts a registry_sync run.
    app.include_router(actions_router(
        store,
        retry_access=[Depends(requires_access_dag("POST", DagAccessEntity.RUN,
                                                  param_dag_id=EVENTS_DAG_ID))],
        sync_access=[Depends(requires_access_dag("POST", DagAccessEntity.RUN,
                                                 param_dag_id=SYNC_DAG_ID))],
        api_url=_api_url(), ui_url=API_BASE_URL,
    ))
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


def metrics_router(store: EventStore, token: Callable[[], str | None]) -> APIRouter:
    """``GET /metrics``: 404 without a configured token, 401 with a wrong one."""
    router = APIRouter()

    @router.get("/metrics")
    def scrape(request: Request) -> Response:
        expected = token()
        if not expected:
            raise HTTPException(404, f"metrics are off: {metrics.TOKEN_ENV} is not set")
        if not metrics.token_matches(request.headers.get("authorization"), expected):
            raise HTTPException(401, "wrong or missing Bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
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


def actions_router(store: EventStore, *, retry_access: list[Any], sync_access: list[Any],
                   api_url: str, ui_url: str) -> APIRouter:
    """The page's two buttons: retry a dead-lettered event, and sync one repository now."""
    router = APIRouter()

    @router.post("/dead-letters/retry", dependencies=retry_access)
    def retry(request: Request, event_id: Annotated[str, Form()],
              csrf: Annotated[str | None, Form()] = None) -> Response:
        check_csrf(request, csrf)
        if not store.retry_failed(event_id):
            raise HTTPException(409, f"event {event_id!r} is not a failed event (a rejected "
                                     "event cannot be replicated; a done one needs nothing)")
        log.info("event %s put back in the queue from the dead-letter list", event_id)
        return RedirectResponse("status#dead-letters", status_code=303)

    @router.post("/sync-now", dependencies=sync_access)
    def sync_now(request: Request, repository: Annotated[str, Form()],
                 csrf: Annotated[str | None, Form()] = None) -> Response:
        check_csrf(request, csrf)
        repository = repository.strip()
        if not repository or len(repository) > 255 or any(c.isspace() for c in repository):
            raise HTTPException(400, f"not a repository name: {repository!r}")
        user_token = _bearer(request) or request.cookies.get(JWT_COOKIE)
        response = requests.post(
            f"{api_url}/dags/{SYNC_DAG_ID}/dagRuns", timeout=30,
            headers={"Authorization": f"Bearer {user_token}"},
            json={"logical_date": None, "conf": {"repositories": [repository]}},
        )
        if not response.ok:
            raise HTTPException(response.status_code,
                                f"Airflow refused to start {SYNC_DAG_ID}: {response.text[:500]}")
        run_id = response.json()["dag_run_id"]
        log.info("%s run %s started for %s from the status page", SYNC_DAG_ID, run_id, repository)
        return RedirectResponse(run_url(ui_url.rstrip("/"), SYNC_DAG_ID, run_id), status_code=303)

    return router


def status_router(get_status: Callable[[], dict[str, Any]], access: list[Any],
                  login_url: str) -> APIRouter:
    """``GET /api/status`` and ``GET /status``, both behind the ``access`` dependencies."""
    json_routes = APIRouter(dependencies=access)

    @json_routes.get("/api/status")
    def status_json() -> dict[str, Any]:
        """The replication status as JSON (the data of the page)."""
        return get_status()

    page_routes = APIRouter(dependencies=access, route_class=_login_redirect(login_url))

    @page_routes.get("/status", response_class=HTMLResponse)
    def status_page(request: Request) -> HTMLResponse:
        return HTMLResponse(render(get_status(), csrf=csrf_token(request)))

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
                            exc.status_code == 403 and exc.detail == "Invalid JWT token"):
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


# -- rendering -------------------------------------------------------------------------------

def _bytes(value: float | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _duration(seconds: float | None) -> str:
    return "–" if seconds is None else _ago(seconds).removesuffix(" ago")


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def _label(key: str) -> str:
    return key.replace("_", " ")


_env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_env.filters.update(bytes=_bytes, ago=_ago, duration=_duration, when=_when, label=_label)

_TEMPLATE = _env.from_string("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Registry replication status</title>
<style>
  :root { --fg: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #fff;
          --green: #1f7a3f; --green-bg: #e3f4e8; --amber: #8a5a00; --amber-bg: #fff3d6;
          --red: #b42318; --red-bg: #fde8e6; --grey: #52606d; --grey-bg: #eceff3; }
  * { box-sizing: border-box; }
  body { margin: 0; padding: 1.5rem 2rem 3rem; background: var(--bg); color: var(--fg);
         font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
  h1 { font-size: 1.4rem; margin: 0; }
  h2 { font-size: 1.05rem; margin: 2rem 0 .6rem; }
  .muted { color: var(--muted); }
  a { color: #0b5cad; text-decoration: none; } a:hover { text-decoration: underline; }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr));
           gap: .8rem; margin-top: 1.2rem; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
          padding: .8rem 1rem; }
  .card .k { color: var(--muted); font-size: .8rem; text-transform: uppercase;
             letter-spacing: .03em; }
  .card .v { font-size: 1.5rem; font-weight: 600; margin: .15rem 0; }
  .card .s { color: var(--muted); font-size: .85rem; }
  .bar { height: 6px; background: var(--line); border-radius: 3px; overflow: hidden;
         margin-top: .4rem; }
  .bar > span { display: block; height: 100%; background: var(--green); }
  table { width: 100%; border-collapse: collapse; background: var(--card);
          border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
  th, td { text-align: left; padding: .45rem .7rem; border-bottom: 1px solid var(--line);
           vertical-align: top; }
  th { background: #fafbfc; font-weight: 600; font-size: .8rem; color: var(--muted); }
  tr:last-child td { border-bottom: 0; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.nowrap { white-space: nowrap; }
  code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
  .digest { word-break: break-all; min-width: 17rem; }
  .error { max-width: 48rem; white-space: pre-wrap; word-break: break-word; }
  .badge { display: inline-block; padding: .05rem .55rem; border-radius: 999px;
           font-size: .8rem; font-weight: 600; white-space: nowrap; }
  .synced, .success { color: var(--green); background: var(--green-bg); }
  .pending, .running { color: var(--amber); background: var(--amber-bg); }
  .failed { color: var(--red); background: var(--red-bg); }
  .never-synced { color: var(--grey); background: var(--grey-bg); }
  .ok { color: var(--green); } .differ { color: var(--red); }
  .chips { display: flex; gap: .5rem; flex-wrap: wrap; margin: .2rem 0 .7rem; }
  .empty { background: var(--card); border: 1px dashed var(--line); border-radius: 8px;
           padding: .8rem 1rem; color: var(--muted); }
  .problems { background: var(--red-bg); color: var(--red); border-radius: 8px;
              padding: .6rem 1rem; margin-bottom: .6rem; }
  dl.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
               gap: .1rem 1.2rem; margin: 0; background: var(--card); padding: .8rem 1rem;
               border: 1px solid var(--line); border-radius: 8px; }
  dl.summary div { display: flex; justify-content: space-between; gap: .5rem;
                   border-bottom: 1px dotted var(--line); padding: .15rem 0; }
  dl.summary dt { color: var(--muted); } dl.summary dd { margin: 0; font-weight: 600; }
  .chart { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
           padding: .6rem 1rem; }
  .chart svg { width: 100%; height: auto; display: block; }
  .chart text { font: 11px system-ui, sans-serif; fill: var(--muted); }
  .chart .title { font-weight: 600; fill: var(--fg); }
  .chart .grid { stroke: var(--line); }
  .chart .depth-line { fill: none; stroke: #b7791f; stroke-width: 1.5; }
  .chart .latency-point { fill: #0b5cad; fill-opacity: .75; }
  .chart .bytes-bar { fill: var(--green); }
  .chart .bytes-bar.failed { fill: var(--red); }
  form { margin: 0; } button { font: inherit; font-size: .8rem; padding: .1rem .5rem;
    border: 1px solid var(--line); border-radius: 4px; background: #fafbfc; cursor: pointer; }
</style>
</head>
<body>
{% set b = s.backfill %}
{% set run = s.last_reconcile %}
<header>
  <h1>Registry replication</h1>
  <span class="muted">as of {{ s.generated_at | when }} ·
    <a href="{{ json_url }}">JSON</a></span>
</header>

<section class="cards">
  <div class="card" id="repositories-in-sync">
    <div class="k">Repositories in sync</div>
    <div class="v">{{ b.repositories.in_sync }} / {{ b.repositories.total }}</div>
    <div class="bar"><span style="width: {{ b.repositories.percent or 0 }}%"></span></div>
  </div>
  <div class="card" id="tags-in-sync">
    <div class="k">Tags in sync</div>
    <div class="v">{{ b.tags.in_sync }} / {{ b.tags.total }}</div>
    <div class="bar"><span style="width: {{ b.tags.percent or 0 }}%"></span></div>
  </div>
  <div class="card" id="bytes-copied">
    <div class="k">Copied by last reconcile</div>
    <div class="v">{{ b.bytes_copied | bytes }}</div>
    <div class="s">{{ b.blobs_copied if b.blobs_copied is not none else "–" }} blobs</div>
  </div>
  <div class="card" id="event-queue">
    <div class="k">Event queue</div>
    <div class="v">{{ s.queue.depth }} waiting</div>
    <div class="s">{% if s.queue.depth %}oldest {{ s.queue.oldest_waiting_seconds | duration }} ·
      {% endif %}{{ s.queue.counts.done }} done · {{ s.queue.counts.failed }} failed ·
      {{ s.queue.counts.rejected }} rejected</div>
  </div>
  <div class="card" id="last-reconcile">
    <div class="k">Last reconcile</div>
    {% if run %}
    <div class="v"><span class="badge {{ run.state }}">{{ run.state }}</span></div>
    <div class="s" title="{{ run.finished_at | when }}">finished {{ run.age_seconds | ago }} ·
      <a href="{{ run.url }}">run</a></div>
    {% else %}
    <div class="v">–</div><div class="s">no run recorded yet</div>
    {% endif %}
  </div>
</section>

<h2 id="lag">Last 24 hours</h2>
<div class="chart">{{ chart }}</div>

<h2 id="failed-layers">Failed layers ({{ s.failed_layers | length }})</h2>
{% if s.failed_layers %}
<table>
  <thead><tr><th>Repository</th><th>Digest</th><th class="num">Size</th><th>Code</th>
    <th>Error</th><th>Log</th></tr></thead>
  <tbody>
  {% for l in s.failed_layers %}
  <tr class="failed-layer" data-repository="{{ l.repository }}" data-digest="{{ l.digest }}"
      data-code="{{ l.code or '' }}">
    <td>{{ l.repository }}</td>
    <td class="digest"><code>{{ l.digest }}</code></td>
    <td class="num">{{ l.size | bytes }}</td>
    <td>{% if l.code %}<span class="badge failed">{{ l.code }}</span>{% endif %}
      {% if l.status %}<div class="muted">HTTP {{ l.status }}</div>{% endif %}</td>
    <td class="error">{{ l.error or "" }}</td>
    <td class="nowrap"><a class="log" href="{{ l.log_url }}">{{ l.task_id or "run" }}
      {%- if l.map_index is not none %} [{{ l.map_index }}]{% endif %}</a></td>
  </tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<div class="empty">No failed layers in the latest runs.</div>
{% endif %}

<h2 id="repositories">Repositories ({{ s.repositories | length }})</h2>
<div class="chips">
  {% for state, n in s.states.items() %}
  <span class="badge {{ state | replace(' ', '-') }}" data-state="{{ state }}">
    {{- n }} {{ state }}</span>
  {% endfor %}
</div>
{% if s.repositories %}
<table>
  <thead><tr><th>Repository</th><th>State</th><th class="num">Tags primary</th>
    <th class="num">Tags secondary</th><th>Checksum primary</th><th>Checksum secondary</th>
    <th>Last sync</th><th>Last error</th><th></th></tr></thead>
  <tbody>
  {% for r in s.repositories %}
  <tr class="repository" data-repository="{{ r.repository }}" data-state="{{ r.state }}">
    <td>{{ r.repository }}</td>
    <td><span class="badge {{ r.state | replace(' ', '-') }}">{{ r.state }}</span></td>
    <td class="num">{{ r.tags_primary if r.tags_primary is not none else "–" }}</td>
    <td class="num">{{ r.tags_secondary if r.tags_secondary is not none else "–" }}</td>
    <td><code title="{{ r.checksum_primary or '' }}">
      {{- (r.checksum_primary or "–")[:12] }}</code></td>
    <td><code class="{{ 'ok' if r.checksums_match else 'differ' if r.checksum_primary else '' }}"
      title="{{ r.checksum_secondary or '' }}">
      {{- (r.checksum_secondary or "–")[:12] }}</code></td>
    <td class="nowrap" title="{{ r.last_sync_at | when }}">{{ r.last_sync_age_seconds | ago }}</td>
    <td class="error">{{ r.last_error or "" }}{% if r.failed_layers %}{{ "\n" if r.last_error
      }}<a href="#failed-layers">{{ r.failed_layers }} failed layer{{ "s" if r.failed_layers > 1
      }}</a>{% endif %}</td>
    <td><form method="post" action="sync-now" class="sync-now">
      <input type="hidden" name="repository" value="{{ r.repository }}">
      <input type="hidden" name="csrf" value="{{ csrf or '' }}">
      <button type="submit" title="Start registry_sync for this repository">Sync now</button>
    </form></td>
  </tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<div class="empty">No repository verified yet: run <code>registry_reconcile</code>.</div>
{% endif %}

<h2 id="dead-letters">Dead letters ({{ s.dead_letters | length }})</h2>
{% if s.dead_letters %}
<p class="muted">Events that failed every attempt, or were rejected. <b>Retry</b> puts a failed
event back in the queue with fresh attempts (fix the cause first: the error says what to do). A
rejected event (a name out of the registry's grammar) can never be replicated, so it has no
retry.</p>
<table>
  <thead><tr><th>Received</th><th>Status</th><th>Action</th><th>Repository</th>
    <th>Tag / digest</th><th class="num">Attempts</th><th>Reason</th><th></th></tr></thead>
  <tbody>
  {% for e in s.dead_letters %}
  <tr class="dead-letter" data-id="{{ e.id }}" data-status="{{ e.status }}"
      data-repository="{{ e.repository }}">
    <td class="nowrap">{{ e.received_at | when }}</td>
    <td><span class="badge failed">{{ e.status }}</span></td>
    <td>{{ e.action }}</td><td>{{ e.repository }}</td>
    <td><code class="digest">{{ e.tag or e.digest }}</code></td>
    <td class="num">{{ e.attempts }}</td><td class="error">{{ e.last_error or "" }}</td>
    <td>{% if e.retryable %}
      <form method="post" action="dead-letters/retry" class="retry">
        <input type="hidden" name="event_id" value="{{ e.id }}">
        <input type="hidden" name="csrf" value="{{ csrf or '' }}">
        <button type="submit">Retry</button>
      </form>{% else %}<span class="muted">cannot be retried</span>{% endif %}</td>
  </tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<div class="empty">No failed or rejected events.</div>
{% endif %}

{% if s.rejected_events %}
<h2 id="rejected-events">Rejected events ({{ s.queue.counts.rejected }})</h2>
<p class="muted">Stored but not replicated: the repository, tag or digest is outside the
reference grammar, or the event is malformed. Rename or delete it on the primary.</p>
<table>
  <thead><tr><th>Received</th><th>Action</th><th>Repository</th><th>Tag / digest</th>
    <th>Reason</th></tr></thead>
  <tbody>
  {% for e in s.rejected_events %}
  <tr class="rejected-event" data-repository="{{ e.repository }}">
    <td>{{ e.received_at | when }}</td><td>{{ e.action }}</td><td>{{ e.repository }}</td>
    <td><code class="digest">{{ e.tag or e.digest or "" }}</code></td>
    <td class="error">{{ e.last_error or "" }}</td>
  </tr>
  {% endfor %}
  </tbody>
</table>
{% endif %}

{% if run %}
<h2 id="last-run">Last reconcile: <a href="{{ run.url }}"><code>{{ run.run_id }}</code></a></h2>
{% if run.problems %}
<div class="problems">{{ run.problems | join("; ") }}</div>
{% endif %}
<dl class="summary">
  {% for key, value in run.summary.items() %}
  <div><dt>{{ key | label }}</dt>
    <dd>{{ value | bytes if key == "bytes copied" else value }}</dd></div>
  {% endfor %}
</dl>
{% endif %}
</body>
</html>
""")


def render(data: dict[str, Any], *, json_url: str = "api/status", csrf: str | None = None) -> str:
    """The page for a ``status()`` result; ``csrf``: the token its forms send back."""
    return _TEMPLATE.render(s=data, json_url=json_url, csrf=csrf,
                            chart=lag_chart(data["history"]) if "history" in data else "")


# -- the lag chart (server-rendered SVG) -------------------------------------------------------

_WIDTH, _LEFT, _RIGHT, _PANEL, _GAP = 1000, 78, 16, 96, 34


def lag_chart(history: dict[str, Any]) -> Markup:
    """Three panels over one time axis: pending depth, push-to-replica seconds, bytes per run."""
    since = dt.datetime.fromisoformat(history["since"]).timestamp()
    until = dt.datetime.fromisoformat(history["until"]).timestamp()
    plot = _WIDTH - _LEFT - _RIGHT

    def x(iso: str) -> float:
        at = dt.datetime.fromisoformat(iso).timestamp()
        return _LEFT + plot * min(max((at - since) / (until - since), 0.0), 1.0)

    parts: list[str] = []
    depth = history["pending_depth"]
    latency = history["push_to_replica"]
    runs = history["bytes_per_run"]
    panels = (
        ("Pending events (max per 5 min)", max([p["depth"] for p in depth] + [1]), str),
        ("Push to replica (s)", max([p["seconds"] for p in latency] + [1.0]), _seconds),
        ("Bytes copied per reconcile run", max([r["bytes"] for r in runs] + [1]), _bytes),
    )
    tops = []
    for i, (title, top, fmt) in enumerate(panels):
        y0 = 18 + i * (_PANEL + _GAP)
        tops.append((y0, top))
        parts.append(f'<text class="title" x="{_LEFT}" y="{y0 - 5}">{escape(title)}</text>')
        for frac in (0, 0.5, 1):
            gy = y0 + _PANEL * (1 - frac)
            parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{gy:.1f}" '
                         f'y2="{gy:.1f}"/><text x="{_LEFT - 6}" y="{gy + 4:.1f}" '
                         f'text-anchor="end">{escape(fmt(top * frac))}</text>')

    def y(panel: int, value: float) -> float:
        y0, top = tops[panel]
        return y0 + _PANEL * (1 - value / top)

    # A step line: each bucket's depth holds from its start to the next bucket's.
    starts = [x(point["at"]) for point in depth] + [float(_WIDTH - _RIGHT)]
    step = [f"{starts[i + k]:.1f},{y(0, point['depth']):.1f}"
            for i, point in enumerate(depth) for k in (0, 1)]
    peak = max((p["depth"] for p in depth), default=0)
    parts.append(f'<polyline class="depth-line" data-peak="{peak}" points="{" ".join(step)}"/>')
    for point in latency:
        parts.append(f'<circle class="latency-point" data-seconds="{point["seconds"]}" '
                     f'cx="{x(point["at"]):.1f}" cy="{y(1, point["seconds"]):.1f}" r="3">'
                     f'<title>{escape(point["at"])}: {point["seconds"]} s</title></circle>')
    for run in runs:
        rx, ry = x(run["finished_at"]), y(2, run["bytes"])
        height = max(tops[2][0] + _PANEL - ry, 1)
        parts.append(
            f'<rect class="bytes-bar {escape(run["state"])}" data-bytes="{run["bytes"]}" '
            f'data-run-id="{escape(run["run_id"])}" x="{rx - 3:.1f}" y="{ry:.1f}" width="6" '
            f'height="{height:.1f}"><title>{escape(run["dag_id"])} {escape(run["run_id"])}: '
            f'{escape(_bytes(run["bytes"]))} ({escape(run["state"])})</title></rect>')
    bottom = 18 + 3 * _PANEL + 2 * _GAP
    for hours in range(0, 25, 6):
        tx = _LEFT + plot * hours / 24
        label = "now" if hours == 24 else f"-{24 - hours} h"
        parts.append(f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{label}</text>')
    height = bottom + 24
    return Markup(f'<svg id="lag-chart" viewBox="0 0 {_WIDTH} {height}" role="img" '
                  f'aria-label="Replication lag over the last 24 hours">{"".join(parts)}</svg>')


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"
