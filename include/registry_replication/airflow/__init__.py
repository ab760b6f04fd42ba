"""Airflow integration: the ``oci_registry`` connection type, its hook and provider info.

Importing this package registers Airflow's secret masker with the core, so every password,
private key and token the core handles is redacted from task logs (and, in a task, from the
supervisor's logs too).
"""

from __future__ import annotations

from airflow.sdk.log import mask_secret

from registry_replication.transport.secrets import register_masker

register_masker(mask_secret)
