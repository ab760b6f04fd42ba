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

Airflow loads plugins in every component (scheduler, DAG processor, task runners), and its API
security module takes seconds to import, so the app is built on its first request, which only
the API server ever receives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment

from registry_replication import webhook
from registry_replication.status import status
from registry_replication.store import EventStore

# Reading the page needs read access to the runs of these DAGs: it shows what they recorded.
DAG_IDS = ("registry_reconcile", "registry_events")


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
    return app


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
    def status_page() -> HTMLResponse:
        return HTMLResponse(render(get_status()))

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
    <th>Last sync</th><th>Last error</th></tr></thead>
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
  </tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<div class="empty">No repository verified yet: run <code>registry_reconcile</code>.</div>
{% endif %}

{% if s.failed_events %}
<h2 id="failed-events">Events that ran out of attempts ({{ s.failed_events | length }})</h2>
<table>
  <thead><tr><th>Received</th><th>Action</th><th>Repository</th><th>Tag / digest</th>
    <th class="num">Attempts</th><th>Last error</th></tr></thead>
  <tbody>
  {% for e in s.failed_events %}
  <tr class="failed-event">
    <td>{{ e.received_at | when }}</td><td>{{ e.action }}</td><td>{{ e.repository }}</td>
    <td><code class="digest">{{ e.tag or e.digest }}</code></td>
    <td class="num">{{ e.attempts }}</td><td class="error">{{ e.last_error or "" }}</td>
  </tr>
  {% endfor %}
  </tbody>
</table>
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


def render(data: dict[str, Any], *, json_url: str = "api/status") -> str:
    """The page for a ``status()`` result."""
    return _TEMPLATE.render(s=data, json_url=json_url)
