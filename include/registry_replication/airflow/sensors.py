"""The deferrable sensor that starts each ``registry_events`` run."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator

from registry_replication.airflow.deployment import refuse_unshared_state
from registry_replication.airflow.triggers import PendingEventsTrigger
from registry_replication.settings import current
from registry_replication.store import Store


class PendingEventsSensor(BaseSensorOperator):
    """Succeeds when a delivery to a configured secondary is ready; meanwhile it waits in the
    triggerer.

    :param poll_interval: seconds between looks at the event store.
    :param deferrable: wait in the triggerer (the default) rather than in a worker slot.
    """

    def __init__(
        self, *, poll_interval: float = 1.0, deferrable: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(poke_interval=poll_interval, **kwargs)
        self.poll_interval = poll_interval
        self.deferrable = deferrable

    def poke(self, context: Any) -> bool:
        return any(Store().queue.ready_counts(current().secondaries).values())

    def execute(self, context: Any) -> Any:
        # The webhook stores events where this sensor and the triggerer look: the same store.
        refuse_unshared_state()
        if not self.deferrable or self.poke(context):  # events already waiting: no deferral hop
            return super().execute(context)
        self.defer(trigger=PendingEventsTrigger(self.poll_interval), method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        self.log.info("%s events ready", (event or {}).get("ready"))
