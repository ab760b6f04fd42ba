"""The hook behind Airflow connections of type ``oci_registry``."""

from __future__ import annotations

from dataclasses import replace

from airflow.sdk import BaseHook

from registry_replication.transport import secrets
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import ConfigError, RegistryConfig
from registry_replication.transport.errors import RegistryError

TEST_TIMEOUT_SECONDS = 10.0


class OciRegistryHook(BaseHook):
    """A ``RegistryClient`` for one registry connection.

    A ``BaseHook``, not an ``HttpHook``: ``HttpHook.get_conn`` returns a bare ``requests.Session``
    and sends every extra key it does not know as an HTTP header, so ``private_key_path``,
    ``issuer`` and the rest would leak to the registry; the client does its own auth and retries.

    :param registry_conn_id: the ``oci_registry`` connection: the registry's URL, its auth
        (``jwt`` with a copy of the primary's key pair, ``token``, ``basic`` or ``anonymous``)
        and bounds in the extras.
    :param writable: whether the client may write (``PUT``, ``POST``, ``PATCH``, ``DELETE``);
        the primary's never does.
    """

    conn_name_attr = "registry_conn_id"
    default_conn_name = "registry_primary"
    conn_type = "oci_registry"
    hook_name = "OCI Registry"

    def __init__(
        self, registry_conn_id: str = default_conn_name, *, writable: bool = False
    ) -> None:
        super().__init__()
        self.registry_conn_id = registry_conn_id
        self.writable = writable
        self._client: RegistryClient | None = None

    def get_config(self) -> RegistryConfig:
        """The connection as a ``RegistryConfig``; raises ``ConfigError`` if it cannot be one."""
        conn = self.get_connection(self.registry_conn_id)
        # The UI form stores cleared fields as null: treat those as unset.
        extra = {k: v for k, v in conn.extra_dejson.items() if v is not None and v != ""}
        try:
            config = RegistryConfig.from_fields(
                host=conn.host or "",
                port=conn.port,
                schema=conn.schema,
                login=conn.login,
                password=conn.password,
                extra=extra,
            )
        except ConfigError as exc:
            raise ConfigError(f"connection {self.registry_conn_id!r}: {exc}") from None
        secrets.mask(config.password)
        secrets.mask(config.private_key)
        for line in (config.private_key or "").splitlines():  # log lines hold one PEM line each
            if not line.startswith("-----"):
                secrets.mask(line)
        return config

    def get_conn(self) -> RegistryClient:
        """The client, built on first use and then reused."""
        if self._client is None:
            self._client = RegistryClient(self.get_config(), writable=self.writable)
        return self._client

    def test_connection(self) -> tuple[bool, str]:
        """For the UI's Test button: reach ``/v2/`` and authenticate, once and quickly."""
        try:
            config = replace(self.get_config(), max_retries=0, timeout_seconds=TEST_TIMEOUT_SECONDS)
            with RegistryClient(config, writable=self.writable) as client:
                client.ping()
        except (ConfigError, RegistryError) as exc:
            return False, str(exc)
        return True, f"Connected to {config.url}"
