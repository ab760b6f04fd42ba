"""Replicate a primary container registry to a secondary one, GitLab Geo style.

The core (this package, minus ``registry_replication.airflow``) has no Airflow imports:
DAGs, the plugin, the CLI and the tests all share it.
"""

from __future__ import annotations

__version__ = "0.1.0"
