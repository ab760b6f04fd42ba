"""Operating the replication from Airflow: its ``Stats`` figures, and alerts through a notifier.

The notifier is chosen in configuration (``[registry_replication]``), so nothing is hard-wired::

    notifier = airflow.providers.smtp.notifications.smtp.SmtpNotifier
    notifier_kwargs = {"to": "oncall@example.com", "subject": "{{ replication_alert.subject }}",
                       "html_content": "{{ replication_alert.html }}"}

Notifiers render their fields as Jinja templates against the callback's context, where
``replication_alert`` holds ``subject``, ``text``, ``html`` (the text HTML-escaped, in a
``<pre>``: it quotes registries' error messages, which anyone answering at a registry's address
chooses), ``state`` (failed, recovered, overdue), ``dag_id``, ``run_id`` and ``url``. A DAG run notifies when it fails and when it is the first
success after a failure (recovery), never on an ordinary success: the store remembers each DAG's
last outcome, so every scheduler and DAG processor agrees on what came before.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.configuration import conf
from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback
from airflow.sdk.module_loading import import_string
from airflow.sdk.observability.stats import Stats
from markupsafe import Markup

from registry_replication.outcomes import RepositoryState
from registry_replication.run_outcome import recorded_problems
from registry_replication.settings import RECONCILE_DAG_ID, current
from registry_replication.store import Store
from registry_replication.store.history import TaskTry
from registry_replication.web import metrics
from registry_replication.web.status import run_url

log = logging.getLogger("registry_replication.airflow")

FAILED, RECOVERED, OVERDUE = "failed", "recovered", "overdue"


# -- Airflow's own metrics -------------------------------------------------------------------


def send_stats(store: Store) -> None:
    """The metrics endpoint's figures, as Airflow ``Stats`` gauges (StatsD or OpenTelemetry),
    with the same ``secondary`` tag on each secondary's figures."""
    f = metrics.figures(store)
    name = metrics.PREFIX
    for secondary, n in f["events_pending"].items():
        Stats.gauge(f"{name}.events_pending", n, tags={"secondary": secondary})
    for secondary, age in f["oldest_pending_event_age_seconds"].items():
        Stats.gauge(f"{name}.oldest_pending_event_age_seconds", age, tags={"secondary": secondary})
    for secondary, outcomes in f["events_total"].items():
        for outcome, n in outcomes.items():
            # Rejected events are no secondary's: their figure has no secondary tag.
            tags = (
                {"secondary": secondary, "outcome": outcome} if secondary else {"outcome": outcome}
            )
            Stats.gauge(f"{name}.events_total", n, tags=tags)
    for secondary, states in f["repositories"].items():
        for state, n in states.items():
            Stats.gauge(f"{name}.repositories", n, tags={"secondary": secondary, "state": state})
    for secondary, sides in f["tags"].items():
        for side, n in sides.items():
            Stats.gauge(f"{name}.tags", n, tags={"secondary": secondary, "side": side})
    for secondary, n in f["bytes_copied_total"].items():
        Stats.gauge(f"{name}.bytes_copied_total", n, tags={"secondary": secondary})
    for dag_id, at in f["last_success_timestamp_seconds"].items():
        Stats.gauge(f"{name}.last_success_timestamp_seconds", at, tags={"dag_id": dag_id})


def send_copied_bytes(secondary: str, copied: int) -> None:
    Stats.incr(f"{metrics.PREFIX}.bytes_copied", copied, tags={"secondary": secondary})


def record_copied_bytes(context: Any, secondary: str, copied: int) -> None:
    """A task's bytes copied to ``secondary``: in the store for
    ``registry_replication_bytes_copied_total``, and to Airflow's ``Stats``."""
    ti = context["ti"]
    task = TaskTry(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
    Store().history.record_copied_bytes(task, secondary, copied)
    send_copied_bytes(secondary, copied)


def send_latencies(seconds: list[float], secondary: str) -> None:
    """Push-to-replica times, tagged with their secondary."""
    tags = {"secondary": secondary}
    for value in seconds:
        Stats.timing(f"{metrics.PREFIX}.push_to_replica", timedelta(seconds=value), tags=tags)


# -- alerts ----------------------------------------------------------------------------------


def on_dag_failure(context: Any) -> None:
    """DAG ``on_failure_callback``: record the outcome and notify."""
    dag_run = context["dag_run"]
    Store().history.record_dag_outcome(dag_run.dag_id, dag_run.run_id, "failed")
    notify(context, FAILED, dag_run.dag_id, dag_run.run_id)


def on_dag_success(context: Any) -> None:
    """DAG ``on_success_callback``: record the outcome; notify only on recovery."""
    dag_run = context["dag_run"]
    previous = Store().history.record_dag_outcome(dag_run.dag_id, dag_run.run_id, "success")
    if previous == "failed":
        notify(context, RECOVERED, dag_run.dag_id, dag_run.run_id)


def deadline_missed(context: dict[str, Any] | None = None, **_: Any) -> None:
    """A ``DeadlineAlert`` callback: the reconcile has not succeeded within the deadline."""
    dag_run = (context or {}).get("dag_run") or {}
    get = dag_run.get if isinstance(dag_run, dict) else lambda k: getattr(dag_run, k, None)
    # Airflow passes the run as its REST API shows it (``dag_run_id``).
    notify(
        dict(context or {}),
        OVERDUE,
        get("dag_id") or RECONCILE_DAG_ID,
        get("dag_run_id") or get("run_id") or "",
    )


def reconcile_deadline() -> DeadlineAlert | None:
    """``[registry_replication] reconcile_deadline_minutes`` after a run is queued (0: none)."""
    minutes = current().reconcile_deadline_minutes
    if minutes <= 0:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=SyncCallback(f"{__name__}.deadline_missed"),
        name=f"{RECONCILE_DAG_ID} not done in time",
    )


def notify(context: Any, state: str, dag_id: str, run_id: str) -> None:
    """Send one alert through the configured notifier (logged only, if none is configured)."""
    store = Store()
    alert = describe(state, dag_id, run_id, store)
    log.warning("%s", alert["text"])
    settings = current()
    path = settings.notifier.strip()
    store.history.record_alert(dag_id, run_id, state, alert["subject"], path or None)
    if not path:
        return
    notifier = import_string(path)(**settings.notifier_kwargs)
    context = {**context, "replication_alert": alert}
    if not hasattr(context.get("dag"), "get_template_env"):
        # Rendering templates needs an authoring DAG; some callers pass a serialized one.
        context.pop("dag", None)
    notifier(context)


def _failed_secondaries(problems: list[str], layers: list[dict[str, Any]]) -> list[str]:
    """The secondaries a run failed on: those its failed layers name, and those its problem
    lines start with (the report prefixes each line with its secondary), configured first."""
    configured = current().secondaries
    named = {layer["secondary"] for layer in layers} | {
        s for s in configured for line in problems if line.startswith(f"{s}: ")
    }
    return [s for s in configured if s in named] + sorted(named - set(configured))


def describe(state: str, dag_id: str, run_id: str, store: Store) -> dict[str, Any]:
    """The alert's subject and text: what failed (layers, repositories, events) and a link."""
    url = run_url(conf.get("api", "base_url", fallback="").rstrip("/"), dag_id, run_id)
    lines: list[str] = []
    if state == FAILED:
        run = store.history.last_run(dag_id)
        problems = recorded_problems(run["summary"])[0] if run and run["run_id"] == run_id else []
        layers = [
            layer
            for layer in store.history.failed_layers()
            if layer["dag_id"] == dag_id and layer["run_id"] == run_id
        ]
        failed_on = _failed_secondaries(problems, layers)
        subject = f"[registry-replication] {dag_id} failed" + (
            f" on {', '.join(failed_on)}" if failed_on else ""
        )
        lines += [f"Problems: {'; '.join(problems)}"] if problems else []
        lines += [
            f"{layer['secondary']}: failed layer {layer['repository']}@{layer['digest']} "
            f"({layer.get('code') or 'error'}): {layer.get('error') or ''}"
            for layer in layers
        ]
        failing: dict[str, list[str]] = {}
        for r in store.state.repository_states():
            if r["state"] == RepositoryState.FAILED:
                failing.setdefault(r["secondary"], []).append(r["repository"])
        lines += [
            f"{secondary}: failing repositories: {', '.join(sorted(names))}"
            for secondary, names in sorted(failing.items())
        ]
        lines += [
            f"{e['secondary']}: failed event {e['action']} {e['repository']}:"
            f"{e['tag'] or e['digest']}: {e['last_error'] or ''}"
            for e in store.queue.dead_letters(limit=20)
        ]
    elif state == RECOVERED:
        subject = f"[registry-replication] {dag_id} recovered"
        lines.append(f"{dag_id} succeeded again after a failure.")
    else:
        subject = f"[registry-replication] {dag_id} has not succeeded in time"
        lines.append(f"{dag_id} run {run_id} did not finish within its deadline.")
    lines.append(f"Run: {url}")
    text = f"{subject}\n" + "\n".join(lines)
    # Markup: escaped once here, never again by an autoescaping template.
    html = Markup("<pre>{}</pre>").format(text)
    return {
        "state": state,
        "subject": subject,
        "dag_id": dag_id,
        "run_id": run_id,
        "url": url,
        "text": text,
        "html": html,
    }
