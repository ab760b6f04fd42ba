"""Mounts registry-replication's HTTP endpoints in Airflow's API server.

``/registry-replication/events``: the registry notification webhook (shared secret, no login).
``/registry-replication/status`` and ``/registry-replication/api/status``: the replication
status page and its JSON, behind Airflow's login; linked from the UI's Browse menu.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from registry_replication.airflow.status_page import plugin_app

URL_PREFIX = "/registry-replication"
# The API server's path under its host ([api] base_url), for the UI's link.
ROOT_PATH = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


class RegistryReplicationPlugin(AirflowPlugin):
    name = "registry_replication"
    fastapi_apps = [{"app": plugin_app(), "url_prefix": URL_PREFIX, "name": "Registry replication"}]
    # No url_route: the UI links to the page (new tab) rather than framing it, so the task log
    # links on the page open the Airflow UI normally (the UI's plugin iframe is sandboxed
    # without top navigation).
    external_views = [
        {
            "name": "Registry replication",
            "href": f"{ROOT_PATH}{URL_PREFIX}/status",
            "destination": "nav",
            "category": "browse",
        }
    ]
