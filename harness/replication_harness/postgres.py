"""A real PostgreSQL server (Debian's ``postgresql``) with its own data directory, on loopback.

For tests and the local cluster: the replication store's and Airflow's metadata databases.
Runs as the ``postgres`` OS user when started by root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from replication_harness.registry import free_port

POSTGRES_LIB = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL server's binaries (``/usr/lib/postgresql/<major>/bin``)."""
    majors = sorted(
        (p for p in POSTGRES_LIB.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not majors:
        raise RuntimeError(
            f"no PostgreSQL server under {POSTGRES_LIB}: run scripts/setup (apt-get install postgresql)"
        )
    return majors[-1]


@dataclass
class LocalPostgres:
    """One PostgreSQL server on ``127.0.0.1:port``. Use as a context manager, or start()/stop().

    Password authentication (scram) over TCP only; no Unix socket. The data directory is a
    fresh temporary directory, removed on stop(); it is a throwaway, so fsync is off.
    """

    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    datadir: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        assert self.datadir is not None, "not started"
        return self.datadir / "postgres.log"

    def _as_postgres(self) -> dict[str, object]:
        """Popen arguments that drop root to the ``postgres`` user (PostgreSQL refuses root)."""
        if os.geteuid() != 0:
            return {}
        return {"user": SUPERUSER, "group": pwd.getpwnam(SUPERUSER).pw_gid, "extra_groups": []}

    def start(self, timeout: float = 30.0) -> LocalPostgres:
        bindir = postgres_bin_dir()
        # Under /tmp itself: the postgres user must be able to reach it (pytest's tmp dirs are 0700).
        root = Path(tempfile.mkdtemp(prefix="registry-replication-pg-"))
        self.datadir = root
        data = root / "data"
        pwfile = root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(root, SUPERUSER, SUPERUSER)
            shutil.chown(pwfile, SUPERUSER, SUPERUSER)
        pwfile.chmod(0o600)
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._as_postgres(),
        )
        pwfile.unlink()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as_postgres(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            try:
                psycopg2.connect(self.dsn("postgres"), connect_timeout=1).close()
                return self
            except psycopg2.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not start within {timeout}s; see {self.log_path}")

    def dsn(self, database: str) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} "
            f"password={self.password} dbname={database}"
        )

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """A SQLAlchemy URL (``postgresql+asyncpg`` for Airflow's async engine)."""
        return f"{driver}://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database (if missing) and return its SQLAlchemy URL."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        conn = psycopg2.connect(self.dsn("postgres"))
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: end sessions, checkpoint
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)
            self.datadir = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
