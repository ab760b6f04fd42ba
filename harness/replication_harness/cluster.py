"""A distributed Airflow on this machine: CeleryExecutor, PostgreSQL, Redis, two workers.

Used by ``scripts/cluster`` and the end-to-end tests. Every Airflow process (API server,
scheduler, DAG processor, triggerer, each Celery worker) has its own ``AIRFLOW_HOME`` and its own
temporary directory, as on separate machines; they share only network addresses (PostgreSQL,
Redis, the API server), secrets and the DAG and plugin folders, never a directory of run data.
The replication store is PostgreSQL (``REGISTRY_REPLICATION_DB_URL``) and ``artifacts_path`` is
left unset, so the runs' artifacts go into that store: the defaults a cluster should work with.
Each worker stands for a machine of its own with a loopback address of its own (127.0.0.2,
127.0.0.3, ...): that address is the task instances' ``hostname``, and the API server reads a
task's log from ``http://<that address>:<worker_log_server_port>`` as it would across machines.
Two log servers on one host cannot share a port, so each worker serves on its own port and a
small forwarder makes it reachable at its address on the shared port.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography.fernet import Fernet

from registry_replication.store import Store
from registry_replication.store.schema import metadata
from replication_harness.postgres import LocalPostgres
from replication_harness.registry import free_port
from replication_harness.standalone import AirflowStandalone

NODE_ADDRESS = "REGISTRY_REPLICATION_NODE_ADDRESS"
COPY_QUEUE = "registry_copy"
COPY_POOL = "registry_replication"
# Matched on a task id's last part: the reconcile's are in a task group per secondary.
COPY_TASKS = ("copy_blobs", "push_manifests", "replicate_events")


def node_address() -> str:
    """``[core] hostname_callable`` of the cluster's processes: the address of their "machine"."""
    return os.environ.get(NODE_ADDRESS, "127.0.0.1")


class PortForward:
    """Accepts on ``listen`` and pipes each connection to ``target`` (both loopback)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


@dataclass
class Worker:
    name: str
    address: str  # this worker's "machine"
    log_port: int  # its own log server port
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0  # how often it was started: its log says "ready." once per start


@dataclass
class AirflowCluster(AirflowStandalone):
    """API server, scheduler, DAG processor, triggerer and ``workers`` Celery workers.

    ``postgres``: an already running server to use (the replication store can then be shared
    with another Airflow); None: one of its own. The REST helpers are the standalone's.
    """

    workers: int = 2
    worker_concurrency: int = 2  # tasks per worker: a reconcile needs both workers at once
    pool_slots: int = 8
    postgres: LocalPostgres | None = None
    store_url: str = ""  # the replication store (REGISTRY_REPLICATION_DB_URL), set by start()
    _own_postgres: bool = False
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    _first_env: dict[str, dict[str, str]] = field(default_factory=dict)
    _workers: list[Worker] = field(default_factory=list)
    _redis: subprocess.Popen[bytes] | None = None
    _forwards: list[PortForward] = field(default_factory=list)
    _shared: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.home

    @property
    def password(self) -> str:
        generated = self.home / "api-server" / "simple_auth_manager_passwords.json.generated"
        return json.loads(generated.read_text())["admin"]

    def process_environment(self, name: str, address: str = "127.0.0.1") -> dict[str, str]:
        home = self.home / name
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return {
            **self.environment(),
            **self._shared,
            "AIRFLOW_HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            NODE_ADDRESS: address,
        }

    def start(self) -> AirflowCluster:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.postgres is None:
            self.postgres = LocalPostgres().start()
            self._own_postgres = True
        metadata = self.postgres.create_database("airflow")
        self.store_url = self.postgres.create_database("replication")
        if shutil.which("redis-server") is None:
            raise RuntimeError(
                "redis-server is not installed: run scripts/setup (apt-get install redis-server)"
            )
        redis_port = free_port()
        with (self.home / "redis.log").open("ab") as log:
            self._redis = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.home),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        shared_log_port = free_port()
        self._shared = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3: name the drivers.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": self.postgres.url(
                "airflow", driver="postgresql+asyncpg"
            ),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            # The same secrets on every machine: Fernet for connections and variables, JWTs
            # between API server, workers and log servers.
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.node_address",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(shared_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # A worker that vanishes (SIGKILL, a lost machine) is noticed within seconds here;
            # its task instances fail and are retried elsewhere.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            # A task the dead worker had taken off the queue but not started heartbeats nowhere:
            # it is revoked and queued again after this (Airflow's default: 600 s).
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "90",
            "AIRFLOW__REGISTRY_REPLICATION__COPY_QUEUE": COPY_QUEUE,
            "AIRFLOW__REGISTRY_REPLICATION__COPY_POOL": COPY_POOL,
            "REGISTRY_REPLICATION_DB_URL": self.store_url,
        }
        airflow = str(Path(sys.executable).parent / "airflow")
        setup = self.process_environment("setup")
        for command in (
            ["db", "migrate"],
            [
                "pools",
                "set",
                COPY_POOL,
                str(self.pool_slots),
                "copy tasks of all registry-replication DAGs",
            ],
        ):
            done = subprocess.run([airflow, *command], env=setup, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"airflow {' '.join(command)} failed:\n{done.stderr[-3000:]}")
        for name, command in (
            ("api-server", ["api-server"]),
            ("scheduler", ["scheduler"]),
            ("dag-processor", ["dag-processor"]),
            ("triggerer", ["triggerer"]),
        ):
            self._spawn(name, [airflow, *command], self.process_environment(name))
        for i in range(1, self.workers + 1):
            worker = Worker(f"worker{i}", f"127.0.0.{i + 1}", free_port())
            env = self.process_environment(worker.name, worker.address)
            env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(worker.log_port)
            worker.process = self._spawn(
                worker.name,
                [
                    airflow,
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"{worker.name}@{worker.address}",
                    "--queues",
                    f"default,{COPY_QUEUE}",
                ],
                env,
            )
            worker.starts = 1
            self._forwards.append(
                PortForward((worker.address, shared_log_port), ("127.0.0.1", worker.log_port))
            )
            self._workers.append(worker)
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.home / name / f"{name}.log").open("ab") as log:
            # Its own process group: stop, or kill, it with everything it started.
            process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._processes[name] = process
        self._commands[name] = (argv, env)
        self._first_env.setdefault(name, env)
        return process

    def stop_component(self, name: str) -> None:
        """Stop one process (``api-server``, ``scheduler``, ``worker1``, ...) and its children."""
        _terminate_group(self._processes[name])

    def start_component(self, name: str) -> None:
        """Start a stopped process again, as it was started first (wait_ready() waits for it)."""
        process = self._spawn(name, *self._commands[name])
        for worker in self._workers:
            if worker.name == name:
                worker.process = process
                worker.starts += 1

    def restart_with(self, names: list[str], **settings: str | None) -> None:
        """Restart processes with ``settings`` over the environment they were first started
        with (None: unset), as an operator changes some machines' configuration; no settings:
        as first started. wait_ready() waits for them."""
        for name in names:
            process = self._processes[name]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name in names:
            _terminate_group(self._processes[name], signalled=True)
        for name in names:
            argv, _ = self._commands[name]
            env = {**self._first_env[name], **settings}
            self._commands[name] = (argv, {k: v for k, v in env.items() if v is not None})
            self.start_component(name)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until the API server reports scheduler, triggerer and DAG processor healthy and
        every worker has connected to the broker."""
        deadline = time.monotonic() + timeout
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.home / name / f'{name}.log'}")
        super().wait_ready(timeout)
        for worker in self._workers:
            self._wait_for_worker(worker, deadline)

    def _wait_for_worker(self, worker: Worker, deadline: float) -> None:
        """Until the worker's log says ``ready.`` once for each time it was started."""
        log = self.home / worker.name / f"{worker.name}.log"
        while log.read_bytes().count(b" ready.") < worker.starts:
            if worker.process and worker.process.poll() is not None:
                raise RuntimeError(f"{worker.name} exited; see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.name} not ready; see {log}")
            time.sleep(0.5)

    def worker_addresses(self) -> dict[str, str]:
        return {w.name: w.address for w in self._workers}

    def task_hosts(
        self,
        dag_id: str,
        run_id: str,
        tasks: tuple[str, ...] | None = COPY_TASKS,
    ) -> list[tuple[str, int, int, str]]:
        """(task id, map index, try number, worker) of a run's task instances that ran
        (``tasks`` None: all of them)."""
        by_address = {w.address: w.name for w in self._workers}
        instances = self.api(
            "GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )["task_instances"]
        return sorted(
            (
                ti["task_id"],
                ti["map_index"],
                ti["try_number"],
                by_address.get(ti["hostname"], ti["hostname"]),
            )
            for ti in instances
            if (tasks is None or ti["task_id"].rsplit(".", 1)[-1] in tasks) and ti["hostname"]
        )

    def empty_store(self) -> Store:
        """The cluster's replication store, every row of every table gone (its schema kept)."""
        store = Store(self.store_url)
        with store.engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                if table.name != "rr_schema":
                    conn.execute(table.delete())
        return store

    def set_connection(self, conn_id: str, connection: dict[str, Any]) -> None:
        """Create or replace an Airflow connection in the metadata DB (through the REST API),
        where every worker reads it."""
        try:
            self.api("DELETE", f"connections/{conn_id}")
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code != 404:
                raise
        self.api(
            "POST",
            "connections",
            json={
                "connection_id": conn_id,
                "conn_type": connection["conn_type"],
                "host": connection["host"],
                "login": connection.get("login"),
                "password": connection.get("password"),
                "extra": json.dumps(connection.get("extra") or {}),
            },
        )

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker and everything it started, as if its machine died."""
        [worker] = [w for w in self._workers if w.name == name]
        assert worker.process is not None
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()

    def describe(self) -> list[str]:
        return [
            f"PostgreSQL 127.0.0.1:{self.postgres.port if self.postgres else '?'} "
            f"(databases airflow, replication)",
            f"Redis      {self._shared.get('AIRFLOW__CELERY__BROKER_URL', '?')}",
        ] + [
            f"{w.name:<10} {w.address} (log server :{w.log_port}, pid {w.process.pid if w.process else '-'})"
            for w in self._workers
        ]

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self._processes.values():
            _terminate_group(process, signalled=True)
        self._processes.clear()
        self._workers.clear()
        for forward in self._forwards:
            forward.close()
        self._forwards.clear()
        if self._redis is not None:
            self._redis.terminate()
            self._redis.wait(10)
            self._redis = None
        if self._own_postgres and self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
            self._own_postgres = False
        self.process = None

    def __enter__(self) -> AirflowCluster:
        return self.start()


def _terminate_group(
    process: subprocess.Popen[bytes], timeout: float = 15, signalled: bool = False
) -> None:
    """SIGTERM a process group (unless ``signalled``), SIGKILL what is left after ``timeout``."""
    try:
        if not signalled:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:  # whatever is left, including children of a leader that already exited
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
