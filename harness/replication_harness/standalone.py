"""``airflow standalone`` on loopback with this project's DAGs and plugin, and a REST client.

Used by the demo and by the end-to-end tests: scheduler, DAG processor, triggerer and API
server run for real, on SQLite, in their own AIRFLOW_HOME.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from replication_harness.registry import LocalRegistry, free_port

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class AirflowStandalone:
    home: Path
    env: dict[str, str] = field(default_factory=dict)  # connections, secrets, settings
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "standalone.log"

    def environment(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        return {
            **os.environ,
            # standalone starts its components as `airflow ...` subprocesses: the venv's.
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            # An idle scheduler loops every second by default; the event path waits for it
            # twice per push (trigger fired, sensor done), so loop faster.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            **self.env,
        }

    def start(self) -> AirflowStandalone:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: stop() ends every component
        )
        return self

    def wait_ready(self, timeout: float = 240.0) -> None:
        """Until the API server answers and scheduler, triggerer and DAG processor are healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"airflow standalone exited; see {self.log_path}")
            try:
                health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=2).json()
                parts = ("scheduler", "triggerer", "dag_processor")
                if all((health.get(p) or {}).get("status") == "healthy" for p in parts):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"airflow standalone not ready after {timeout}s; see {self.log_path}")

    @property
    def password(self) -> str:
        generated = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(generated.read_text())["admin"]

    def token(self) -> str:
        """A JWT of the admin user, for the REST API and the UI's ``_token`` cookie."""
        if self._token is None:
            response = requests.post(
                f"{self.url}/auth/token",
                timeout=10,
                json={"username": "admin", "password": self.password},
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call to Airflow's REST API (``/api/v2/...``) as the admin user."""
        self.token()
        deadline = time.monotonic() + 60
        while True:
            try:
                response = requests.request(
                    method,
                    f"{self.url}/api/v2/{path.lstrip('/')}",
                    timeout=30,
                    headers={"Authorization": f"Bearer {self._token}"},
                    **kwargs,
                )
            except requests.ConnectionError:
                # An API server that is (re)starting refuses or drops connections for a moment.
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
                continue
            # On SQLite, a write can lose the race for the database lock to the scheduler
            # (HTTP 500 "Database error", or 503 for backfills): try again.
            if response.status_code not in (500, 503) or time.monotonic() > deadline:
                break
            time.sleep(1)
        if response.status_code >= 400:
            raise requests.HTTPError(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}",
                response=response,
            )
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api("GET", f"dags/{dag_id}")
                return
            except requests.HTTPError:
                time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} was not parsed within {timeout}s; see {self.log_path}")

    def latest_run(self, dag_id: str) -> str | None:
        runs = self.api(
            "GET", f"dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 1}
        )["dag_runs"]
        return runs[0]["dag_run_id"] if runs else None

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.api(
            "POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            # The group outlives its leader for a moment: an API server still answering its health
            # check would let wait_ready() pass before the new one is up.
            for attempt in range(150):
                if not _group_alive(self.process.pid):
                    break
                if attempt == 100:
                    os.killpg(self.process.pid, signal.SIGKILL)
                time.sleep(0.2)
        self.process = None

    def __enter__(self) -> AirflowStandalone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def replication_env(
    primary: LocalRegistry, secondary: LocalRegistry, store_url: str, secret: str, **extra: str
) -> dict[str, str]:
    """What a standalone replicating ``primary`` to ``secondary`` runs with: both connections,
    the notifications' secret, the store, and no reconcile schedule (tests trigger their runs);
    ``extra`` on top."""
    return {
        "AIRFLOW_CONN_REGISTRY_PRIMARY": json.dumps(primary.connection()),
        "AIRFLOW_CONN_REGISTRY_SECONDARY": json.dumps(secondary.connection()),
        "REGISTRY_NOTIFICATION_SECRET": secret,
        "REGISTRY_REPLICATION_DB_URL": store_url,
        "AIRFLOW__REGISTRY_REPLICATION__RECONCILE_SCHEDULE": "none",
        **extra,
    }


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
