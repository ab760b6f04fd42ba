"""Provider info for Airflow's ``ProvidersManager`` (entry point ``apache_airflow_provider``).

Since Airflow 3.2 the connection form is declared here (``conn-fields``, ``ui-field-behaviour``):
the API server reads it without importing the hook, and hook-side ``get_connection_form_widgets``
/ ``get_ui_field_behaviour`` are deprecated.
"""

from __future__ import annotations

from typing import Any

from registry_replication import __version__
from registry_replication.transport.config import AUTH_KINDS

CONN_TYPE = "oci_registry"
INTEGRATION = "OCI Registry Replication"
GEO_DOCS = "https://docs.gitlab.com/administration/geo/replication/container_registry/"


def _field(label: str, description: str, **schema: Any) -> dict[str, Any]:
    schema.setdefault("type", ["string", "null"])
    return {"label": label, "description": description, "schema": schema}


CONN_FIELDS: dict[str, dict[str, Any]] = {
    "auth": _field(
        "Auth",
        "jwt: sign our own tokens with the registry's key (GitLab Geo); token: Bearer token "
        "flow with login/password; basic; anonymous. Empty: detect from the /v2/ challenge.",
        enum=list(AUTH_KINDS),
    ),
    "private_key_path": _field(
        "Private key path", "PEM key the registry's token auth trusts (auth 'jwt')."
    ),
    "certificate_path": _field(
        "Certificate path", "PEM certificate of that key, sent as x5c (optional)."
    ),
    "issuer": _field(
        "Issuer", "JWT issuer the registry expects (auth.token.issuer).", default="gitlab-issuer"
    ),
    "service": _field(
        "Service",
        "JWT audience (auth.token.service), e.g. container_registry. Empty: from the challenge.",
    ),
    # No default: the API masks values of fields whose name holds "token" (the form would show ***).
    "token_ttl_seconds": _field(
        "Token TTL (seconds)",
        "Lifetime of self-minted tokens (default 300).",
        type=["integer", "null"],
        minimum=1,
    ),
    "verify": _field("Verify TLS", "true, false, or the path of a CA bundle.", default="true"),
    "max_connections": _field(
        "Max connections",
        "HTTP connection pool size (concurrent requests).",
        type=["integer", "null"],
        minimum=1,
        default=16,
    ),
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "registry-replication",
        "name": "Registry Replication",
        "description": "Replicate a primary container registry to a secondary, GitLab Geo style.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": GEO_DOCS,
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["registry_replication.airflow.operators"],
            }
        ],
        "sensors": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["registry_replication.airflow.sensors"],
            }
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["registry_replication.airflow.hooks"],
            }
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["registry_replication.airflow.triggers"],
            }
        ],
        "connection-types": [
            {
                "hook-class-name": "registry_replication.airflow.hooks.OciRegistryHook",
                "hook-name": "OCI Registry",
                "connection-type": CONN_TYPE,
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {
                        "host": "Registry URL (https://host:port)",
                        "login": "Login",
                        "password": "Password",
                    },
                    "placeholders": {
                        "host": "https://registry.example.com:5050",
                        "login": "username (auth token/basic)",
                        "password": "password or access token (auth token/basic)",
                    },
                },
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
