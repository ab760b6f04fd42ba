"""The whole thing on one machine: ``scripts/demo`` (or ``python -m replication_harness.demo``).

``--cluster`` (``scripts/cluster``): a distributed Airflow instead of ``airflow standalone``:
CeleryExecutor with two workers, PostgreSQL and Redis (see ``local/cluster.py``).

Starts a primary registry (token auth with a generated key, notifications pointed at Airflow)
and a secondary, seeds the primary with sample images, starts ``airflow standalone`` on
loopback with this project's DAGs unpaused and the connections and webhook secret configured,
runs a reconcile, pushes one more image to show the event path, and prints where to look.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from registry_replication.transport.client import RegistryClient
from replication_harness import corpus, images
from replication_harness.cluster import AirflowCluster
from replication_harness.keys import generate_key_pair
from replication_harness.registry import LocalRegistry, Notifications, free_port
from replication_harness.servers import TokenService
from replication_harness.standalone import PROJECT, AirflowStandalone

DEMO_USER, DEMO_PASSWORD = "demo", "demo-password"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=PROJECT / ".demo",
        help="where registries, keys and Airflow live (wiped first)",
    )
    parser.add_argument(
        "--exit", action="store_true", help="stop after the demo instead of waiting"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="CeleryExecutor, two workers, PostgreSQL and Redis instead of standalone",
    )
    args = parser.parse_args(argv)

    # SIGTERM unwinds like Ctrl-C, so everything started below is stopped; Ctrl-C works even
    # when a parent shell started us with SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    keys = generate_key_pair(args.workdir / "keys", "gitlab-registry")
    secret = "geo_" + secrets.token_urlsafe(24)
    port = free_port()
    with ExitStack() as stack:
        tokens = stack.enter_context(
            TokenService(keys, {DEMO_USER: (DEMO_PASSWORD, {"pull", "push", "delete"})})
        )
        notify = Notifications(f"http://127.0.0.1:{port}/registry-replication/events", secret)
        primary = stack.enter_context(
            LocalRegistry(
                args.workdir / "primary",
                keys=keys,
                notifications=notify,
                token_realm=tokens.realm,
                name="primary",
            )
        )
        secondary = stack.enter_context(
            LocalRegistry(
                args.workdir / "secondary", keys=keys, token_realm=tokens.realm, name="secondary"
            )
        )
        say(f"primary registry   {primary.url}  (token auth, key {keys.key_path})")
        say(f"secondary registry {secondary.url}")

        writer = stack.enter_context(RegistryClient(primary.client_config(), writable=True))
        # On the cluster, bigger layers in small copy batches: the copy fans out over workers.
        seeded = corpus.push_every_kind(writer, layer_size=256 * 1024 if args.cluster else 4096)
        say(
            f"seeded the primary with {len(seeded)} tags in {len({r for r, _ in seeded})} "
            "repositories (Docker, OCI, multi-arch, signatures, artifacts)"
        )

        kind = AirflowCluster if args.cluster else AirflowStandalone
        airflow = kind(
            args.workdir / "airflow",
            port=port,
            env={
                "AIRFLOW_CONN_REGISTRY_PRIMARY": json.dumps(primary.connection()),
                "AIRFLOW_CONN_REGISTRY_SECONDARY": json.dumps(secondary.connection()),
                "REGISTRY_NOTIFICATION_SECRET": secret,
                "REGISTRY_REPLICATION_DB_URL": f"sqlite:///{args.workdir / 'registry_replication.db'}",
                **(
                    {"AIRFLOW__REGISTRY_REPLICATION__BLOB_BATCH_BYTES": str(1 << 20)}
                    if args.cluster
                    else {}
                ),
            },
        )
        stack.callback(airflow.stop)
        name = "a Celery cluster" if args.cluster else "airflow standalone"
        say(f"starting {name} on {airflow.url} (logs: {airflow.log_path}) ...")
        airflow.start()
        airflow.wait_ready()
        if isinstance(airflow, AirflowCluster):
            for line in airflow.describe():
                say(line)
        for dag_id in ("registry_reconcile", "registry_sync", "registry_events"):
            airflow.wait_for_dag(dag_id)

        # Unpaused with catchup off, the hourly DAG runs its latest interval at once.
        say("waiting for the first scheduled registry_reconcile run (the backfill) ...")
        deadline = time.monotonic() + 60
        while (run_id := airflow.latest_run("registry_reconcile")) is None:
            if time.monotonic() > deadline:
                run_id = airflow.trigger("registry_reconcile")
                break
            time.sleep(1)
        state = airflow.wait_for_run("registry_reconcile", run_id)
        say(f"registry_reconcile {run_id}: {state}")
        if isinstance(airflow, AirflowCluster):
            ran = airflow.task_hosts("registry_reconcile", run_id, tasks=None)
            for worker in sorted({w for *_, w in ran}):
                say(
                    f"  on {worker}: "
                    + ", ".join(t if i < 0 else f"{t}[{i}]" for t, i, _, w in ran if w == worker)
                )

        reader = stack.enter_context(RegistryClient(secondary.client_config()))
        fresh = images.ImageFactory().make()
        pushed_at = time.monotonic()
        images.push(writer, "demo/new", fresh, ["1.0"])
        say("pushed demo/new:1.0 to the primary; waiting for the event path ...")
        while (
            found := reader.head_manifest("demo/new", "1.0")
        ) is None or found.digest != fresh.digest:
            if time.monotonic() - pushed_at > 180:
                say(
                    "demo/new:1.0 did not reach the secondary within 3 minutes; see the "
                    "registry_events task logs"
                )
                return 1
            time.sleep(0.2)
        say(f"demo/new:1.0 is on the secondary {time.monotonic() - pushed_at:.1f}s after the push")

        say("")
        say(f"Airflow UI:  {airflow.url}   login: admin / {airflow.password}")
        say(f"Status page: {airflow.url}/registry-replication/status")
        say(
            f"Try: skopeo inspect --tls-verify=false --creds {DEMO_USER}:{DEMO_PASSWORD} "
            f"docker://{secondary.url.removeprefix('http://')}/group/sub/app:1.0"
        )
        if args.exit:
            return 0 if state == "success" else 1
        say("running; Ctrl-C stops everything")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            say("stopping ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
