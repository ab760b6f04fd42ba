"""Mounts registry-replication's HTTP endpoints in Airflow's API server."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from registry_replication.webhook import create_app


class RegistryReplicationPlugin(AirflowPlugin):
    name = "registry_replication"
    fastapi_apps = [
        {"app": create_app(), "url_prefix": "/registry-replication", "name": "Registry replication"}
    ]
