"""End to end in `airflow standalone`: the lag chart, the dead-letter list and its retry, CSRF.

Queued pushes (the event DAG paused), a reconcile that copies and fails on a corrupted layer,
then the event DAG: two events replicate, the corrupted one is dead-lettered after its one
attempt. In headless Chromium the chart has real points; a cross-site form post changes
nothing; the layer is repaired at the source, Retry is clicked, and the image reaches the
secondary. "Sync now" starts registry_sync as the logged-in user. Screenshots:
artifacts/operating-*.png.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from registry_replication.store import Store
from registry_replication.transport.client import RegistryClient
from replication_harness import images
from replication_harness.browser import ARTIFACTS, Chromium
from replication_harness.registry import free_port
from replication_harness.standalone import AirflowStandalone, replication_env

SECRET = "e2e_Notification-Secret"  # as the notifying primary sends it
METRICS_TOKEN = "e2e-metrics-Token"


@pytest.fixture
def stack(tmp_path, notifying_registries):
    port = free_port()
    primary, secondary = notifying_registries(port)
    db_url = f"sqlite:///{tmp_path / 'replication.db'}"
    airflow = AirflowStandalone(
        tmp_path / "airflow",
        port=port,
        env=replication_env(
            primary,
            secondary,
            db_url,
            SECRET,
            REGISTRY_REPLICATION_METRICS_TOKEN=METRICS_TOKEN,
            AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES="0",
            AIRFLOW__REGISTRY_REPLICATION__EVENT_MAX_ATTEMPTS="1",
            # Shorter than any reconcile here: its DeadlineAlert fires during the run.
            AIRFLOW__REGISTRY_REPLICATION__RECONCILE_DEADLINE_MINUTES="0.05",
        ),
    )
    airflow.start()
    try:
        airflow.wait_ready()
        airflow.wait_for_dag("registry_events")
        airflow.wait_for_dag("registry_reconcile")
        yield primary, secondary, airflow, Store(db_url)
    finally:
        airflow.stop()


def wait(condition, what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.5)


class _Attacker(BaseHTTPRequestHandler):
    """Another origin's page that auto-submits a form to the retry endpoint (no CSRF token)."""

    target = ""
    event_id = ""

    def do_GET(self) -> None:  # noqa: N802
        body = (
            f'<!doctype html><form method="post" action="{self.target}">'
            f'<input type="hidden" name="event_id" value="{self.event_id}"></form>'
            "<script>document.forms[0].submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_chart_dead_letter_retry_csrf_and_sync_now(stack):
    primary, secondary, airflow, store = stack
    writer = RegistryClient(primary.client_config(), writable=True)
    reader = RegistryClient(secondary.client_config())
    status_url = f"{airflow.url}/registry-replication/status"

    # Pushes queue up while the event DAG is paused: the chart's depth.
    airflow.api("PATCH", "dags/registry_events", json={"is_paused": True})
    ok, broken = (images.ImageFactory(layer_size=96 * 1024).make() for _ in range(2))
    images.push(writer, "group/ok", ok, ["v1", "v2"])
    images.push(writer, "group/app", broken, ["broken"])
    rotten = broken.blobs[-1]
    good_bytes = primary.blob_path(rotten.digest).read_bytes()
    primary.blob_path(rotten.digest).write_bytes(b"\0" * rotten.size)
    wait(lambda: len(store.queue.events()) >= 3, "three notifications", 60)

    # A reconcile copies group/ok and fails on the corrupted layer: a bar of bytes.
    reconcile = airflow.trigger("registry_reconcile")
    assert airflow.wait_for_run("registry_reconcile", reconcile) == "failed"
    copied = store.history.last_run("registry_reconcile")["summary"]["bytes copied"]
    assert copied >= 2 * 96 * 1024

    # The event DAG: group/ok's events are acknowledged, group/app's is dead-lettered.
    airflow.api("PATCH", "dags/registry_events", json={"is_paused": False})
    [dead] = wait(lambda: store.queue.dead_letters(), "the dead letter")
    assert (dead["repository"], dead["tag"], dead["status"]) == ("group/app", "broken", "failed")
    wait(
        lambda: (
            {e["status"] for e in store.queue.events() if e["repository"] == "group/ok"} == {"done"}
        ),
        "group/ok's events acknowledged",
    )

    jwt = airflow.token()
    ARTIFACTS.mkdir(exist_ok=True)
    with Chromium(height=1100) as browser:
        browser.set_cookie("_token", jwt, airflow.url)

        def read_chart() -> dict:
            browser.open(status_url)
            return browser.evaluate("""(() => {
            const svg = document.querySelector('#lag-chart');
            return {peak: +svg.querySelector('.depth-line').dataset.peak,
                    latencies: [...svg.querySelectorAll('.latency-point')]
                        .map(c => +c.dataset.seconds),
                    bars: [...svg.querySelectorAll('.bytes-bar')].map(r => +r.dataset.bytes),
                    width: svg.getBoundingClientRect().width};
            })()""")

        # An event is marked done, then its latency recorded: wait for both points.
        chart = wait(
            lambda: (found := read_chart()) and len(found["latencies"]) >= 2 and found,
            "group/ok's two latency points",
            60,
        )
        assert chart["peak"] >= 3  # three events waited at once
        assert len(chart["latencies"]) == 2 and all(0 < s < 600 for s in chart["latencies"])
        assert chart["bars"] == [copied]
        assert chart["width"] > 800
        rows = browser.evaluate(
            "[...document.querySelectorAll('tr.dead-letter')]"
            ".map(r => [r.dataset.id, r.dataset.status])"
        )
        assert rows == [[dead["id"], "failed"]]
        browser.screenshot(ARTIFACTS / "operating-chart-and-dead-letter.png")

        # CSRF: another origin's auto-submitting form, with the victim's cookie, changes nothing.
        _Attacker.target = f"{airflow.url}/registry-replication/dead-letters/retry"
        _Attacker.event_id = dead["id"]
        evil = ThreadingHTTPServer(("127.0.0.1", free_port()), _Attacker)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            browser.open(f"http://127.0.0.1:{evil.server_address[1]}/")
            wait(
                lambda: browser.evaluate("location.href").startswith(_Attacker.target),
                "the forged post",
                30,
            )
            assert "cross-origin request refused" in browser.wait_for_text("refused")
        finally:
            evil.shutdown()
        # Without an Origin header (old browsers, some proxies) the missing token is enough.
        for form in ({"event_id": dead["id"]}, {"event_id": dead["id"], "csrf": "forged"}):
            forged = requests.post(
                _Attacker.target,
                data=form,
                cookies={"_token": jwt},
                timeout=10,
                allow_redirects=False,
            )
            assert forged.status_code == 403 and "CSRF" in forged.text
        assert store.queue.dead_letters()[0]["status"] == "failed"
        assert (
            requests.post(_Attacker.target, data={"event_id": dead["id"]}, timeout=10).status_code
            == 401
        )  # no login at all

        # Repaired at the source, retried from the page: the image reaches the secondary.
        primary.blob_path(rotten.digest).write_bytes(good_bytes)
        browser.open(status_url)
        browser.evaluate(
            f'document.querySelector(\'tr.dead-letter[data-id="{dead["id"]}"] '
            "form.retry button').click()"
        )
        wait(
            lambda: (
                reader.head_manifest("group/app", "broken") is not None
                and reader.head_manifest("group/app", "broken").digest == broken.digest
            ),
            "the retried image on the secondary",
        )
        assert reader.get_manifest("group/app", "broken").raw == broken.raw
        assert store.queue.dead_letters() == []

        def latency_points() -> int:
            browser.open(status_url)
            return browser.evaluate("document.querySelectorAll('#lag-chart .latency-point').length")

        # The image lands before the drain acknowledges its event and records the latency.
        wait(lambda: latency_points() == 3, "the retried event's latency on the chart", 60)
        assert browser.evaluate("document.querySelectorAll('tr.dead-letter').length") == 0
        browser.screenshot(ARTIFACTS / "operating-after-retry.png")

        # "Sync now": a registry_sync run for that repository, started as the logged-in user.
        browser.evaluate(
            'document.querySelector(\'tr.repository[data-repository="group/ok"] '
            "form.sync-now button').click()"
        )
        landed = wait(
            lambda: (
                "/dags/registry_sync/runs/" in (browser.evaluate("location.href") or "")
                and browser.evaluate("location.href")
            ),
            "the new run's page",
            60,
        )
        runs = airflow.api("GET", "dags/registry_sync/dagRuns")["dag_runs"]
        [sync] = runs
        # For the row's secondary alone.
        assert sync["conf"] == {"repositories": ["group/ok"], "secondaries": ["registry_secondary"]}
        assert sync["triggering_user_name"] == "admin"
        assert landed.endswith(requests.utils.quote(sync["dag_run_id"], safe=""))
        assert airflow.wait_for_run("registry_sync", sync["dag_run_id"]) == "success"

    # The metrics endpoint on the real server. The DAG callbacks run in the DAG processor, a
    # little after the run ends: they record each DAG's outcome (the alerts' memory).
    metrics_url = f"{airflow.url}/registry-replication/metrics"
    assert requests.get(metrics_url, timeout=10).status_code == 401

    def scrape() -> dict[tuple[str, tuple[str, ...]], float]:
        scraped = requests.get(
            metrics_url, timeout=10, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        return {
            (s.name, tuple(s.labels.values())): s.value
            for f in text_string_to_metric_families(scraped.text)
            for s in f.samples
        }

    success = ("registry_replication_last_success_timestamp_seconds", ("registry_sync",))
    samples = wait(lambda: (m := scrape()).get(success) and m, "registry_sync's success", 60)
    assert time.time() - 300 < samples[success] <= time.time()
    assert (
        "registry_replication_last_success_timestamp_seconds",
        ("registry_reconcile",),
    ) not in samples  # it failed

    # The alerts, as sent by the DAG processor's callbacks and the deadline's callback (no
    # notifier is configured here: they are logged and recorded).
    def sent() -> list[tuple[str, str, str]]:
        return sorted((a["dag_id"], a["run_id"], a["state"]) for a in store.history.alerts())

    events_runs = {
        r["dag_run_id"]: r["state"]
        for r in airflow.api("GET", "dags/registry_events/dagRuns")["dag_runs"]
    }
    [failed_events_run] = [run_id for run_id, state in events_runs.items() if state == "failed"]
    wait(lambda: ("registry_reconcile", reconcile, "overdue") in sent(), "the deadline alert", 60)
    assert ("registry_reconcile", reconcile, "failed") in sent()
    assert ("registry_events", failed_events_run, "failed") in sent()
    # The first success of registry_events after its failure (the retried event) recovered it.
    recovered = [a for a in sent() if a[0] == "registry_events" and a[2] == "recovered"]
    assert len(recovered) == 1 and events_runs[recovered[0][1]] == "success"
    assert not [a for a in sent() if a[0] == "registry_sync"]  # a plain success: no alert
    here = "registry_secondary"  # every series of one secondary names it (labels sorted)
    assert samples[("registry_replication_events_total", ("done", here))] == 3
    assert samples[("registry_replication_events_total", ("failed", here))] == 0
    assert samples[("registry_replication_push_to_replica_seconds_count", (here,))] == 3
    assert samples[("registry_replication_bytes_copied_total", (here,))] >= copied
