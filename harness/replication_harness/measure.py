"""Measuring the replication tools as child processes, for the benchmarks.

Each tool runs under GNU ``time`` (wall time, peak RSS, CPU seconds of the child); the bytes
the primary sent are its registry process's socket writes. The tools: this engine's CLI
(``engine_sync``, ``verify``), ``skopeo sync``, ``airflow dags test registry_reconcile``
(``dag_run``, its peak RSS sampled per task by ``RssSampler``) and the raw ``curl`` floor
(``floor.py``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from replication_harness.dag_runs import DAGS
from replication_harness.registry import LocalRegistry
from replication_harness.sync_cli import connection_args, named_secondaries
from replication_harness.synthetic import Corpus

MiB = 1 << 20
VENV_BIN = Path(sys.executable).parent
ENGINE = shutil.which("registry-replication", path=str(VENV_BIN)) or "registry-replication"
AIRFLOW = str(VENV_BIN / "airflow")


@dataclass
class Run:
    seconds: float = math.nan
    rc: int | None = None
    max_rss_kib: int | None = None
    cpu_seconds: float | None = None  # user + system of the tool's processes
    primary_sent: int | None = None  # bytes the primary wrote to sockets during the run
    primary_cpu_seconds: float | None = None  # the primary registry's CPU during the run
    bytes_read: int | None = None  # as the tool itself reports (or by construction)
    stdout: str = ""
    stderr_path: Path | None = None
    error: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.error is None


class PrimaryMeter:
    """What the primary registry spent on a run: the bytes it wrote to sockets (its ``wchar``
    minus its log file's growth) and its CPU seconds."""

    def __init__(self, registry: LocalRegistry) -> None:
        self.registry = registry

    def sample(self) -> tuple[int, int, float] | None:
        try:
            pid = self.registry.process.pid
            io = Path(f"/proc/{pid}/io").read_text()
            cpu = psutil.Process(pid).cpu_times()
        except (OSError, AttributeError, psutil.Error):
            return None
        wchar = next(int(line.split()[1]) for line in io.splitlines() if line.startswith("wchar:"))
        return wchar, self.registry.log_path.stat().st_size, cpu.user + cpu.system

    @staticmethod
    def delta(
        before: tuple[int, int, float] | None, after: tuple[int, int, float] | None
    ) -> int | None:
        if before is None or after is None:
            return None
        return (after[0] - before[0]) - (after[1] - before[1])


TIME = "/usr/bin/time"  # GNU time: reports the peak RSS of a process it forked itself


def prepare_workdir(given: Path | None, prefix: str) -> Path:
    """The benchmark's work directory (a new temporary one unless given), with ``logs/``.

    The CLI's replication store (leases, the record of the secondary's tags) goes in it: a
    store left by an earlier run must not describe this run's fresh secondaries.
    """
    workdir = given or Path(tempfile.mkdtemp(prefix=prefix))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    os.environ["REGISTRY_REPLICATION_DB_URL"] = f"sqlite:///{workdir / 'replication-cli.db'}"
    return workdir


def measured(argv: Sequence[str], rss_path: Path) -> list[str]:
    """``argv`` under GNU time, which writes the command's peak RSS (KiB) to ``rss_path``.

    ``ru_maxrss`` from our own ``wait4`` would be wrong: a child forked from this (large)
    Python process starts with the parent's RSS as its high-water mark, and exec keeps it.
    """
    return [TIME, "-f", "%M %U %S", "-o", str(rss_path), *argv]


def read_usage(rss_path: Path) -> tuple[int | None, float | None]:
    """(peak RSS KiB, user + system CPU seconds) as GNU time wrote them."""
    try:  # "Command exited with non-zero status N" may come first
        rss, user, system = rss_path.read_text().splitlines()[-1].split()
        return int(rss), float(user) + float(system)
    except (OSError, ValueError, IndexError):
        return None, None


def run_child(
    argv: Sequence[str],
    log_path: Path,
    run: Run,
    env: dict[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Run:
    """Run one child process (``env``: its whole environment; ``on_start``: called with its
    pid): its wall time and peak RSS (of its whole tree's largest process)."""
    rss_path = log_path.with_suffix(".rss")
    with log_path.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(
            measured(argv, rss_path),
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
            env=env,
        )
        if on_start:
            on_start(proc.pid)
        try:
            out, _ = proc.communicate()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        run.seconds = time.perf_counter() - started
    run.rc = proc.returncode
    run.max_rss_kib, run.cpu_seconds = read_usage(rss_path)
    run.stdout = out.decode(errors="replace")
    run.stderr_path = log_path
    if run.rc != 0:
        run.error = f"exit {run.rc}: " + _tail(log_path)
    return run


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def timed(meter: PrimaryMeter, fn: Callable[..., Run], *args: object) -> Run:
    """``fn(*args)``, with what the primary spent on it."""
    before = meter.sample()
    run = fn(*args)
    after = meter.sample()
    run.primary_sent = PrimaryMeter.delta(before, after)
    if before and after:
        run.primary_cpu_seconds = after[2] - before[2]
    return run


# -- the tools ------------------------------------------------------------------------------------


def engine_sync(primary: LocalRegistry, secondary: LocalRegistry, log_path: Path) -> Run:
    """``registry-replication sync`` of one secondary: ``bytes_read`` is every byte it read
    from the primary (blobs and manifests)."""
    return _engine_sync(
        primary, [json.dumps(secondary.connection())], log_path, "bytes_read_from_primary"
    )


def engine_sync_many(
    primary: LocalRegistry, secondaries: Mapping[str, LocalRegistry], log_path: Path
) -> Run:
    """One ``registry-replication sync`` to every secondary (``--secondary NAME=<JSON>``):
    ``bytes_read`` is the blob bytes it read from the primary for all of them."""
    return _engine_sync(
        primary,
        named_secondaries({name: r.connection() for name, r in secondaries.items()}),
        log_path,
        "blob_bytes_read_from_primary",
    )


def _engine_sync(
    primary: LocalRegistry, secondaries: Sequence[str], log_path: Path, bytes_read: str
) -> Run:
    run = run_child(
        [
            ENGINE,
            "sync",
            "--primary",
            json.dumps(primary.connection()),
            *(f"--secondary={secondary}" for secondary in secondaries),
            "--json",
            "--no-prune",
        ],
        log_path,
        Run(),
    )
    if run.rc is not None and run.stdout.strip():
        try:
            report = json.loads(run.stdout)
            run.bytes_read = report[bytes_read]
            per = report.get("secondaries")  # several secondaries: a report each, by name
            counts = {n: r.get("counts", r.get("error")) for n, r in per.items()} if per else None
            run.note = json.dumps(counts or report["counts"], separators=(",", ":"))
        except (ValueError, KeyError) as exc:
            run.error = run.error or f"unreadable --json output: {exc}"
    return run


def skopeo_sync(source_yaml: Path, secondary: LocalRegistry, log_path: Path) -> Run:
    dest = secondary.url.removeprefix("http://")
    return run_child(
        [
            "skopeo",
            "sync",
            "--all",
            "--preserve-digests",
            "--src",
            "yaml",
            "--dest",
            "docker",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            str(source_yaml),
            dest,
        ],
        log_path,
        Run(),
    )


def write_skopeo_yaml(primary: LocalRegistry, corpus: Corpus, path: Path) -> None:
    # skopeo sync without --scoped names the destination after the source's last path
    # component: the corpus's repositories are one component deep, so names are kept.
    source = {
        primary.url.removeprefix("http://"): {
            "tls-verify": False,
            "images": {repo: [] for repo in corpus.repositories},  # [] = every tag
        }
    }
    path.write_text(json.dumps(source, indent=2))  # YAML is a JSON superset


# -- airflow dags test ---------------------------------------------------------------------------


def airflow_env(
    workdir: Path, primary: LocalRegistry, secondary: LocalRegistry, **others: LocalRegistry
) -> dict[str, str]:
    """The environment of ``airflow`` commands with its home, store and artifacts in
    ``workdir``: ``secondary`` is ``registry_secondary``; ``others`` (connection id -> registry),
    when given, are configured beside it (``secondary_conn_ids``)."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__REGISTRY_REPLICATION__RECONCILE_SCHEDULE": "none",
        "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES": "0",
        "AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH": f"file://{workdir / 'artifacts'}",
        "AIRFLOW_CONN_REGISTRY_PRIMARY": json.dumps(primary.connection()),
        "AIRFLOW_CONN_REGISTRY_SECONDARY": json.dumps(secondary.connection()),
        "REGISTRY_REPLICATION_DB_URL": f"sqlite:///{workdir / 'replication.db'}",
    }
    if others:
        env["AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS"] = ",".join(
            ["registry_secondary", *others]
        )
        env.update(
            {
                f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(r.connection())
                for conn_id, r in others.items()
            }
        )
    return env


def fresh_airflow(
    workdir: Path, primary: LocalRegistry, secondary: LocalRegistry, **others: LocalRegistry
) -> dict[str, str]:
    """``airflow_env`` with a new metadata DB, and no store or artifacts left by an earlier
    run (they would describe the fresh secondaries)."""
    shutil.rmtree(workdir / "airflow", ignore_errors=True)
    shutil.rmtree(workdir / "artifacts", ignore_errors=True)
    (workdir / "replication.db").unlink(missing_ok=True)
    env = airflow_env(workdir, primary, secondary, **others)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    return env


class RssSampler:
    """The RSS of a process tree, sampled every ``interval`` seconds, with the sample times."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (unix time, bytes of the largest process)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def _run(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        while not self._stop.wait(self.interval):
            largest = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        largest = max(largest, proc.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.samples.append((time.time(), largest))

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def peak(self, start: float, end: float) -> int:
        return max((rss for at, rss in self.samples if start <= at <= end), default=0)


def dag_run(env: dict[str, str], conf: dict, log_path: Path) -> tuple[Run, list[list[str]]]:
    """``airflow dags test registry_reconcile`` with ``conf``; notes its XCom and storage, and
    returns a row per task: its time, sampled peak RSS and largest XCom."""
    sampler = RssSampler()
    run = run_child(
        [AIRFLOW, "dags", "test", "registry_reconcile", "-c", json.dumps(conf)],
        log_path,
        Run(),
        env=env,
        on_start=sampler.watch,
    )
    sampler.stop()
    home = Path(env["AIRFLOW_HOME"])
    with sqlite3.connect(home / "airflow.db") as db:
        run_id, state = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = "
            "'registry_reconcile' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        largest = db.execute(
            "SELECT task_id, key, length(value) FROM xcom WHERE run_id = ? "
            "ORDER BY length(value) DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        per_task = db.execute(
            "SELECT ti.task_id, count(*), min(ti.start_date), max(ti.end_date), "
            "sum((julianday(ti.end_date) - julianday(ti.start_date)) * 86400), "
            "(SELECT max(length(x.value)) FROM xcom x WHERE x.run_id = ti.run_id "
            " AND x.task_id = ti.task_id), group_concat(ti.start_date || '|' || ti.end_date, ',') "
            "FROM task_instance ti WHERE ti.run_id = ? AND ti.dag_id = 'registry_reconcile' "
            "GROUP BY ti.task_id ORDER BY min(ti.start_date)",
            (run_id,),
        ).fetchall()
    if state != "success":
        run.error = run.error or f"run {run_id} ended {state}"
    folders = [
        f
        for f in (
            Path(env["AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH"].removeprefix("file://"))
            / "registry_reconcile"
        ).iterdir()
        if f.name.endswith(re.sub(r"[^A-Za-z0-9._-]", "_", run_id))
    ]
    files = [p for f in folders for p in f.rglob("*") if p.is_file()]
    snapshot_bytes = sum(p.stat().st_size for p in files if p.name.startswith("snapshot_"))
    run.note = f"largest XCom {largest[2]} B ({largest[0]}.{largest[1]})" if largest else "no XCom"
    run.note += (
        f"; snapshots {snapshot_bytes} B, all artifacts {sum(p.stat().st_size for p in files)} B"
    )
    rows = []
    for task_id, instances, _, _, seconds, xcom, spans in per_task:
        peak = max(
            (
                sampler.peak(_unix(s), _unix(e))
                for s, e in (span.split("|") for span in (spans or "").split(",") if "|" in span)
            ),
            default=0,
        )
        rows.append(
            [task_id, str(instances), fmt_seconds(seconds), fmt_rss(peak // 1024), f"{xcom or 0} B"]
        )
    return run, rows


def _unix(text: str) -> float:
    when = datetime.fromisoformat(text)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


# -- verification ---------------------------------------------------------------------------------


def verify(primary: LocalRegistry, secondary: LocalRegistry, log_path: Path) -> tuple[bool, str]:
    run = run_child(
        [
            ENGINE,
            "verify",
            *connection_args(primary.connection(), secondary.connection()),
            "--json",
        ],
        log_path,
        Run(),
    )
    try:
        records = json.loads(run.stdout)
    except ValueError:
        return False, f"verify failed: {run.error or 'no output'}"
    in_sync = sum(1 for r in records if r.get("in_sync"))
    ok = run.rc == 0 and in_sync == len(records) and bool(records)
    return ok, f"{'in sync' if ok else 'NOT in sync'} ({in_sync}/{len(records)} repositories)"


# -- report ---------------------------------------------------------------------------------------


def fmt_seconds(seconds: float | None) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds:.2f}s"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"


def fmt_mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MiB:.1f} MiB"


def fmt_rss(kib: int | None) -> str:
    return "n/a" if not kib else f"{kib / 1024:.0f} MiB"


def fmt_cpu(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f}s"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows])


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1/5/15 min) on {os.cpu_count()} CPUs"
