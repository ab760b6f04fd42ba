"""Names ``vulture`` cannot see used (pyproject.toml, ``[tool.vulture]``): each is called or read
by a framework or by name. Nothing imports this file; vulture reads it as a use of each name."""

from registry_replication.airflow import alerts, hooks, operators, provider, sensors, triggers
from registry_replication.outcomes import CheckOutcome
from registry_replication.store import schema
from registry_replication.store.retention import Pruned
from registry_replication.store.state import ReplicationState
from registry_replication.transport import config, mediatypes

# Airflow: the provider entry point (pyproject.toml), the hook's connection-form attributes and
# test button, the operator's templated fields and colour, the sensor's and trigger's
# deferral protocol, a DeadlineAlert callback named by its import path in the DAG.
provider.get_provider_info
hooks.OciRegistryHook.conn_name_attr
hooks.OciRegistryHook.conn_type
hooks.OciRegistryHook.hook_name
hooks.OciRegistryHook.test_connection
operators.ReplicateImagesOperator
operators.ReplicateImagesOperator.template_fields
operators.ReplicateImagesOperator.ui_color
sensors.PendingEventsSensor.execute_complete
triggers.PendingEventsTrigger.serialize
alerts.deadline_missed
# Airflow's plugin manager reads plugins/registry_replication_plugin.py (not importable here).
plugin = type("plugins/registry_replication_plugin.py", (), {})  # vulture matches by name
plugin.RegistryReplicationPlugin
plugin.RegistryReplicationPlugin.fastapi_apps
plugin.RegistryReplicationPlugin.external_views

# Read by name: each bound of a connection through getattr(bounds, name), each field of a
# prune's counts through dataclasses.fields(), a check's outcome by its value.
config.Bounds.max_manifest_bytes
config.Bounds.max_listing_bytes
config.Bounds.max_error_bytes
Pruned.copied_bytes_records
Pruned.departed_secondaries
CheckOutcome.OK

# The schema: a table the migrations make and the pre-migration code reads (rr_schema).
schema.schema_info

# The media types by name, for the harness's synthetic images and for readers.
mediatypes.DOCKER_CONFIG
mediatypes.DOCKER_LAYER
mediatypes.DOCKER_FOREIGN_LAYER
mediatypes.OCI_CONFIG
mediatypes.OCI_LAYER

# The store's leases as rows: what tests and operators read (no caller in the package).
ReplicationState.all_leases
