"""Soak: every writer at once, against a primary that keeps changing, with workers killed.

Random pushes, tag moves, re-pushes and deletes go to the primary for ``--minutes``, while in
``airflow standalone`` the ``registry_events`` DAG replicates each notification and
``registry_reconcile`` runs again and again; task processes are killed with SIGKILL at random
(``--kills``). A watcher samples the secondary the whole time and records every violation of
the README's consistency invariants. When the writes stop, the time until the secondary equals
the primary is measured (no reconcile is started after the last write).

    .venv/bin/python benchmarks/soak.py --minutes 5 --kills 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import psutil
import requests

from registry_replication.store import Store
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.event_stack import event_stack
from replication_harness.standalone import AirflowStandalone
from replication_harness.watch import PrimaryHistory, ReplicaWatcher, tags_of

REPOSITORIES = ("soak/a", "soak/b", "soak/c", "soak/multi")
TAGS = tuple(f"t{i}" for i in range(6))
# LocalExecutor's worker supervises each task in a child process titled by the task instance
# id; killing that child is a worker killed mid-task (the supervisor reports it, Airflow retries).
TASK_PROCESS_PREFIX = "airflow worker -- "


def say(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", flush=True)


class Primary:
    """The primary's writers: random operations, each recorded in the history first."""

    def __init__(self, writer: RegistryClient, history: PrimaryHistory, rng: random.Random):
        self.writer = writer
        self.history = history
        self.rng = rng
        self.factory = images.ImageFactory(layer_size=4096)
        self.current: dict[tuple[str, str], str] = {}
        self.last: dict[tuple[str, str], images.Image] = {}  # the last image of each tag
        self.operations: Counter[str] = Counter()

    def push(self, repository: str, tag: str, img: images.Image, kind: str) -> None:
        self.history.pushing(repository, tag, img.digest)
        images.push(self.writer, repository, img, [tag])
        self.current[(repository, tag)] = img.digest
        self.last[(repository, tag)] = img
        self.operations[kind] += 1

    def random_operation(self) -> None:
        repository = self.rng.choice(REPOSITORIES)
        tag = self.rng.choice(TAGS)
        roll = self.rng.random()
        deleted = [key for key in self.last if key not in self.current]
        if roll < 0.2 and deleted:
            key = self.rng.choice(deleted)  # pushed again, same digest
            self.push(*key, self.last[key], "re-push")
        elif roll < 0.4 and self.current:
            self.delete(self.rng.choice(sorted(self.current)))
        else:
            img = self.factory.multi_arch() if repository == "soak/multi" else self.factory.make()
            kind = "move" if (repository, tag) in self.current else "push"
            self.push(repository, tag, img, kind)

    def delete(self, key: tuple[str, str]) -> None:
        """Delete by digest, as distribution must: every tag on that digest goes."""
        repository, digest = key[0], self.current[key]
        tags = [t for (r, t), d in self.current.items() if r == repository and d == digest]
        self.history.deleting(repository, tags)
        self.writer.delete_manifest(repository, digest)
        for tag in tags:
            del self.current[(repository, tag)]
        self.operations["delete"] += 1


def task_processes(airflow: AirflowStandalone) -> list[psutil.Process]:
    """The processes running task instances under this Airflow."""
    found = []
    for process in psutil.Process(airflow.process.pid).children(recursive=True):
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if line.startswith(TASK_PROCESS_PREFIX) and "LocalExecutor" not in line:
            found.append(process)
    return found


def _run_state(airflow: AirflowStandalone, run_id: str) -> str:
    try:
        return airflow.api("GET", f"dags/registry_reconcile/dagRuns/{run_id}")["state"]
    except requests.RequestException:
        return "unknown"


def soak(workdir: Path, *, minutes: float, kills: int, reconcile_every: float, seed: int) -> dict:
    rng = random.Random(seed)
    with ExitStack() as stack:
        started = stack.enter_context(
            event_stack(
                workdir,
                {
                    "REGISTRY_REPLICATION_LEASE_SECONDS": "10",
                    "AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES": "3",
                },
            )
        )
        primary, secondary, airflow = started.primary, started.secondary, started.airflow
        db_url = started.store_url
        say(f"starting airflow standalone at {airflow.url} ...")
        airflow.wait_ready()
        for dag_id in ("registry_events", "registry_reconcile"):
            airflow.wait_for_dag(dag_id)
        writer = stack.enter_context(RegistryClient(primary.client_config(), writable=True))
        reader = stack.enter_context(RegistryClient(secondary.client_config()))
        history = PrimaryHistory()
        source = Primary(writer, history, rng)
        for repository in REPOSITORIES:
            for tag in TAGS[:3]:
                img = (
                    source.factory.multi_arch()
                    if repository == "soak/multi"
                    else source.factory.make()
                )
                source.push(repository, tag, img, "seed")

        duration = minutes * 60
        kill_times = sorted(rng.uniform(0.1 * duration, 0.9 * duration) for _ in range(kills))
        killed: list[str] = []
        reconciles: list[str] = []
        running: str | None = None
        say(f"writing to the primary for {minutes:g} min; {kills} kills planned")
        started = time.monotonic()
        next_reconcile = started
        with ReplicaWatcher(reader, history) as watch:
            while (now := time.monotonic()) - started < duration:
                source.random_operation()
                if now >= next_reconcile:
                    try:  # best effort: on a loaded machine the API server may be slow
                        if running is None or airflow.api(
                            "GET", f"dags/registry_reconcile/dagRuns/{running}"
                        )["state"] in ("success", "failed"):
                            running = airflow.trigger(
                                "registry_reconcile", {"max_prune_fraction": 1.0}
                            )
                            reconciles.append(running)
                    except requests.RequestException as exc:
                        say(f"could not trigger a reconcile this time: {exc}")
                    next_reconcile = now + reconcile_every
                if kill_times and now - started >= kill_times[0]:
                    kill_times.pop(0)
                    victims = task_processes(airflow)
                    if victims:
                        victim = rng.choice(victims)
                        killed.append(" ".join(victim.cmdline())[:100])
                        victim.send_signal(signal.SIGKILL)
                        say(f"killed {killed[-1]}")
                    else:
                        kill_times.insert(0, now - started + 1)  # try again in a second
                time.sleep(rng.uniform(0.1, 0.8))
            stopped = time.monotonic()
            say(
                f"writes stopped after {sum(source.operations.values())} operations; "
                "waiting for the secondary to equal the primary"
            )
            expected = tags_of(writer)
            converged = None
            while time.monotonic() - stopped < 600:
                if tags_of(reader) == expected:
                    converged = time.monotonic() - stopped
                    break
                time.sleep(0.5)
            time.sleep(2)  # a last few samples of the converged state
        states = Counter(_run_state(airflow, run_id) for run_id in reconciles)
        return {
            "minutes": minutes,
            "operations": dict(source.operations),
            "samples": watch.samples,
            "violations": watch.violations,
            "kills": killed,
            "reconcile runs": dict(states),
            "events": Store(db_url).queue.stats()["counts"],
            "converged_seconds": converged,
            "tags": len(expected),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--reconcile-every", type=float, default=30.0, help="seconds")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(workdir / "airflow"))
    say(f"seed {args.seed}, workdir {workdir}")
    result = soak(
        workdir,
        minutes=args.minutes,
        kills=args.kills,
        reconcile_every=args.reconcile_every,
        seed=args.seed,
    )
    print("== soak ==")
    print(json.dumps(result, indent=2))
    ok = not result["violations"] and result["converged_seconds"] is not None
    print(
        f"result: {'OK' if ok else 'FAILED'}: {len(result['violations'])} violations in "
        f"{result['samples']} samples; converged "
        + (
            f"{result['converged_seconds']:.1f}s after the last write"
            if result["converged_seconds"] is not None
            else "never"
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
