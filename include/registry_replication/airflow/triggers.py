"""The trigger behind ``registry_events``' sensor: waits in the triggerer, not in a worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from registry_replication.settings import current
from registry_replication.store import Store


class PendingEventsTrigger(BaseTrigger):
    """Fires once the event store holds a delivery ready to process for a configured secondary.

    The store's URL is not serialised (it may carry a password): the triggerer reads it from
    its own environment, like the webhook and the tasks do.

    :param poll_interval: seconds between looks at the event store.
    """

    def __init__(self, poll_interval: float = 1.0) -> None:
        super().__init__()
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        queue = (await asyncio.to_thread(Store)).queue
        secondaries = current().secondaries
        while True:
            ready = sum((await asyncio.to_thread(queue.ready_counts, secondaries)).values())
            if ready:
                yield TriggerEvent({"ready": ready})
                return
            await asyncio.sleep(self.poll_interval)
