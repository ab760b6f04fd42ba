"""Airflow integration: the ``oci_registry`` connection type, its hook and provider info.

Importing this package registers Airflow's secret masker with the core, so every password,
private key and token the core handles is redacted from task logs (and, in a task, from the
supervisor's logs too); and Airflow's configuration as the source of the core's settings, so
``[registry_replication]`` in ``airflow.cfg`` counts as well as its environment variables.
"""

from __future__ import annotations

from airflow.sdk.log import mask_secret

from registry_replication.settings import SECTION, use_source
from registry_replication.transport.secrets import register_masker

register_masker(mask_secret)


def _configured(name: str) -> str | None:
    """Setting ``name`` as Airflow's configuration has it (None: unset)."""
    # Imported here: Airflow's configuration, while it loads, reads this package's provider info.
    from airflow.configuration import conf

    return conf.get(SECTION, name, fallback=None)


use_source(_configured)
