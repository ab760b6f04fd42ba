"""The replication store (SQLAlchemy on SQLite or PostgreSQL), split by what it holds.

- ``queue.EventQueue``: the durable event queue (webhook in, event DAG out); what operators
  read of it is ``queue_status.QueueStatus``, its base.
- ``state.ReplicationState``: each repository's sync state, and the write leases and upload
  sessions of the write protocol.
- ``history.RunHistory``: runs, failed layers, copied bytes, push latency, DAG outcomes, alerts.
- ``secondaries.Secondaries``: the adoption of the rows from before there were several.
- ``schema``: the tables, on one ``MetaData``; ``migrate``: Alembic revisions to reach them.
- ``engine``: one engine per process and URL (``shared_engine``).

Default: SQLite in WAL mode at ``$AIRFLOW_HOME/registry_replication.db``; any database at
``REGISTRY_REPLICATION_DB_URL`` (PostgreSQL where several machines share the work).
"""

from __future__ import annotations

from registry_replication.store.engine import default_url, shared_engine
from registry_replication.store.history import RunHistory
from registry_replication.store.queue import EventQueue
from registry_replication.store.secondaries import Secondaries
from registry_replication.store.state import ReplicationState


class Store:
    """The store at ``url`` (default ``engine.default_url()``): its parts, one engine.

    Cheap to construct: the engine is made, and the schema upgraded, once per process and URL.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        self.engine = shared_engine(self.url)
        self.queue = EventQueue(self.engine)
        self.state = ReplicationState(self.engine)
        self.history = RunHistory(self.engine)
        self.secondaries = Secondaries(self.engine)
