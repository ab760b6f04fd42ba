"""The ``oci_registry`` connection type: hook, provider info, secret masking (no network)."""

from __future__ import annotations

import json
import logging
import socket
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from airflow.providers_manager import ProvidersManager
from airflow.sdk import Connection
from airflow.sdk.log import mask_secret, redact
from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

from registry_replication.airflow.hooks import OciRegistryHook
from registry_replication.airflow.provider import get_provider_info
from registry_replication.transport import secrets
from registry_replication.transport.config import ConfigError
from replication_harness.keys import KeyPair
from replication_harness.registry import LocalRegistry

FORM_EXTRAS = {
    "auth",
    "private_key_path",
    "certificate_path",
    "issuer",
    "service",
    "token_ttl_seconds",
    "verify",
    "max_connections",
}


def set_connection(
    monkeypatch: pytest.MonkeyPatch, conn_id: str = "registry_primary", **fields: Any
) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "oci_registry", **fields})
    )


def unique_secret() -> str:
    return f"s3cret-{uuid.uuid4().hex}"


@pytest.fixture
def fresh_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next ProvidersManager() discover providers again (the singletons are restored)."""
    for manager in (ProvidersManager, ProvidersManagerTaskRuntime):
        monkeypatch.setattr(manager, "_instance", None)
        monkeypatch.setattr(manager, "_initialized", False)


# -- the hook -----------------------------------------------------------------------------------


@pytest.mark.parametrize("writable", [False, True])
def test_client_from_env_connection(monkeypatch: pytest.MonkeyPatch, writable: bool) -> None:
    password = unique_secret()
    set_connection(
        monkeypatch,
        host="https://registry.example.com:5050/",
        login="geo",
        password=password,
        extra={"auth": "basic", "max_connections": 4},
    )
    hook = OciRegistryHook(writable=writable)

    client = hook.get_conn()

    assert hook.registry_conn_id == "registry_primary"
    assert client.url == "https://registry.example.com:5050"
    assert client.writable is writable
    assert client.config.auth == "basic"
    assert (client.config.login, client.config.password) == ("geo", password)
    assert client.config.max_connections == 4
    assert client.config.issuer == "gitlab-issuer"
    assert hook.get_conn() is client  # cached


def test_url_from_host_port_and_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch,
        "geo_secondary",
        host="registry.internal",
        port=5000,
        schema="http",
        extra={"auth": "anonymous", "verify": "false"},
    )

    config = OciRegistryHook("geo_secondary").get_config()

    assert config.url == "http://registry.internal:5000"
    assert config.auth == "anonymous"
    assert config.verify is False


def test_fields_the_form_left_empty_are_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection form stores cleared fields as null or "": they must not override defaults."""
    extra = dict.fromkeys(FORM_EXTRAS - {"service"}) | {"service": ""}
    set_connection(monkeypatch, host="https://registry.example.com", extra=extra)

    config = OciRegistryHook().get_config()

    assert config.auth is None  # detected from the /v2/ challenge
    assert (config.issuer, config.service) == ("gitlab-issuer", None)
    assert (config.token_ttl_seconds, config.max_connections, config.verify) == (300, 16, True)


def test_private_key_path_is_read_and_masked(
    monkeypatch: pytest.MonkeyPatch, keys: KeyPair
) -> None:
    set_connection(
        monkeypatch,
        host="https://registry.example.com",
        extra={
            "auth": "jwt",
            "private_key_path": str(keys.key_path),
            "certificate_path": str(keys.cert_path),
            "service": "container_registry",
            "issuer": "gitlab-issuer",
            "token_ttl_seconds": 120,
        },
    )

    config = OciRegistryHook().get_conn().config

    pem = keys.key_path.read_text()
    assert config.private_key == pem
    assert config.certificate == keys.cert_path.read_text()
    assert (config.auth, config.service) == ("jwt", "container_registry")
    assert config.token_ttl_seconds == 120
    # Airflow never sees the key file's content: only the hook can have told its masker.
    body_line = pem.splitlines()[1]
    assert redact(pem) == "***"
    assert redact(f"key: {body_line}") == "key: ***"
    assert body_line not in str(redact({"private_key": pem, "note": body_line}))


def test_unknown_extra_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch,
        host="https://registry.example.com",
        extra={"auth": "basic", "Authorization": "Bearer x", "proxy": "http://p"},
    )
    hook = OciRegistryHook()

    with pytest.raises(ConfigError) as info:
        hook.get_conn()

    assert str(info.value) == (
        "connection 'registry_primary': unknown connection extra keys: Authorization, proxy"
    )
    assert hook.test_connection() == (False, str(info.value))


def test_jwt_without_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, host="https://registry.example.com", extra={"auth": "jwt"})

    with pytest.raises(ConfigError, match="auth 'jwt' needs private_key or private_key_path"):
        OciRegistryHook().get_conn()


def test_unreadable_private_key_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "gitlab-registry.key"
    set_connection(
        monkeypatch,
        host="https://registry.example.com",
        extra={"auth": "jwt", "private_key_path": str(missing)},
    )

    with pytest.raises(ConfigError, match=f"cannot read {missing}: No such file or directory"):
        OciRegistryHook().get_conn()


def test_test_connection_succeeds_against_a_registry(
    monkeypatch: pytest.MonkeyPatch, primary: LocalRegistry
) -> None:
    """The UI's Test button, against a token-auth registry on loopback (self-minted JWT)."""
    set_connection(monkeypatch, **primary.connection())

    assert OciRegistryHook().test_connection() == (True, f"Connected to {primary.url}")


def test_test_connection_reports_an_unreachable_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    set_connection(monkeypatch, host=f"http://127.0.0.1:{port}", extra={"auth": "anonymous"})

    ok, message = OciRegistryHook().test_connection()

    assert not ok
    assert f"ping on http://127.0.0.1:{port}" in message
    assert "ConnectionError" in message


def test_connection_password_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    password = unique_secret()
    set_connection(
        monkeypatch,
        host="https://registry.example.com",
        login="geo",
        password=password,
        extra={"auth": "token"},
    )
    assert redact(f"login geo:{password} refused") == f"login geo:{password} refused"

    OciRegistryHook().get_conn()

    assert redact(f"login geo:{password} refused") == "login geo:*** refused"


def test_core_secrets_reach_airflows_masker() -> None:
    """What the core reports (tokens it mints, passwords) is redacted by Airflow."""
    token = f"eyJ{uuid.uuid4().hex}.{uuid.uuid4().hex}"
    assert redact(f"Bearer {token}") == f"Bearer {token}"

    secrets.mask(token)

    assert mask_secret in secrets._maskers
    assert redact(f"Bearer {token}") == "Bearer ***"


# -- provider info and the connection form -------------------------------------------------------


def test_provider_registers_the_connection_type(
    fresh_providers: None, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        structlog.testing.capture_logs() as events,  # task-sdk logs through structlog
        caplog.at_level(logging.WARNING),  # airflow-core through logging
        warnings.catch_warnings(record=True) as warned,
    ):
        warnings.simplefilter("always")
        hook = ProvidersManagerTaskRuntime().hooks["oci_registry"]
        manager = ProvidersManager()
        manager.initialize_providers_hooks()
        provider = manager.providers["registry-replication"]
        behaviour = manager.field_behaviours["oci_registry"]

    assert hook is not None
    assert hook.hook_class_name == "registry_replication.airflow.hooks.OciRegistryHook"
    assert hook.connection_id_attribute_name == "registry_conn_id"
    assert (hook.package_name, hook.hook_name) == ("registry-replication", "OCI Registry")
    assert hook.connection_testable
    assert provider.version == "0.1.0"
    assert behaviour["relabeling"]["host"] == "Registry URL (https://host:port)"
    complaints = [str(e["event"]) for e in events if e["log_level"] in ("warning", "error")]
    complaints += [r.getMessage() for r in caplog.records]
    complaints += [str(w.message) for w in warned]
    assert [c for c in complaints if "registry" in c.lower() or "OciRegistryHook" in c] == []


def test_connection_resolves_to_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Connection(conn_id="geo_primary", conn_type="oci_registry").get_hook(
        hook_params={"writable": True}
    )

    assert isinstance(hook, OciRegistryHook)
    assert (hook.registry_conn_id, hook.writable) == ("geo_primary", True)


def test_connection_form(fresh_providers: None) -> None:
    """What the UI's connection form is built from (GET /ui/connections/hook_meta)."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    [meta] = [
        m
        for m in HookMetaService.hook_meta_data.__wrapped__()
        if m.connection_type == "oci_registry"
    ]

    assert meta.hook_name == "OCI Registry"
    fields = meta.standard_fields
    assert fields is not None and fields.host is not None
    assert fields.host.title == "Registry URL (https://host:port)"
    assert fields.login is not None and fields.login.title == "Login"
    assert fields.password is not None and fields.password.title == "Password"
    assert meta.extra_fields is not None and set(meta.extra_fields) == FORM_EXTRAS
    assert meta.extra_fields["auth"]["schema"]["enum"] == ["jwt", "token", "basic", "anonymous"]
    assert meta.extra_fields["max_connections"]["value"] == 16
    # The API shows values of "sensitive" field names (token_*, private_key*) as ***.
    assert all(f["value"] != "***" for f in meta.extra_fields.values())


def test_provider_info_matches_airflows_schemas() -> None:
    import jsonschema
    from airflow.providers_manager import _create_provider_info_schema_validator

    import airflow

    info = get_provider_info()
    _create_provider_info_schema_validator().validate(info)
    # provider.yaml's schema is the one that describes conn-fields and ui-field-behaviour.
    schema_file = Path(airflow.__file__).parent / "provider.yaml.schema.json"
    yaml_schema = json.loads(schema_file.read_text())
    jsonschema.validate(info["connection-types"], yaml_schema["properties"]["connection-types"])


def test_a_host_with_a_password_in_it_is_refused_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = unique_secret()
    set_connection(monkeypatch, host=f"https://geo:{password}@registry.example.com")
    hook = OciRegistryHook()

    with pytest.raises(ConfigError) as info:
        hook.get_conn()

    assert str(info.value).startswith(
        "connection 'registry_primary': the registry URL for "
        "'registry.example.com' holds a login or password"
    )
    ok, message = hook.test_connection()
    assert not ok and password not in message and password not in str(info.value)
