"""End to end on `airflow standalone` and on the Celery cluster: the status page, behind the login.

A reconcile with one corrupted layer on the primary, then the page's JSON (401 without a login,
the failed layer and per-repository states with one) and the HTML page in headless Chromium
(logged in through the UI's ``_token`` cookie), which must show what the JSON says. The
screenshot lands in artifacts/status-page.png.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from replication_harness import images
from replication_harness.browser import ARTIFACTS, Chromium
from replication_harness.cluster import AirflowCluster


@pytest.fixture(params=["standalone", "cluster"])
def stack(request, tmp_path, primary, secondary, start_standalone):
    """Standalone (SQLite store, no retries), or the Celery cluster (PostgreSQL store)."""
    if request.param == "cluster":
        request.getfixturevalue("use_cluster")(primary, secondary)
        return request.getfixturevalue("cluster")
    airflow = start_standalone(
        tmp_path / "airflow",
        primary,
        secondary,
        f"sqlite:///{tmp_path / 'replication.db'}",
        AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES="0",
    )
    airflow.wait_for_dag("registry_reconcile")
    return airflow


def test_status_page_shows_the_failed_layer_behind_the_login(stack, primary, primary_writer):
    airflow = stack
    factory = images.ImageFactory(layer_size=64 * 1024)
    broken, healthy = factory.make(), factory.make()
    images.push(primary_writer, "group/app", broken, ["broken"])
    images.push(primary_writer, "group/ok", healthy, ["v1", "v2"])
    rotten = broken.blobs[-1]
    primary.blob_path(rotten.digest).write_bytes(b"\0" * rotten.size)  # DIGEST_INVALID

    run_id = airflow.api(
        "POST", "dags/registry_reconcile/dagRuns", json={"logical_date": None, "conf": {}}
    )["dag_run_id"]
    assert airflow.wait_for_run("registry_reconcile", run_id) == "failed"

    page_url = f"{airflow.url}/registry-replication/status"
    json_url = f"{airflow.url}/registry-replication/api/status"

    # Without a login: 401 for the JSON, Airflow's login for the page; a forged token: 403.
    assert requests.get(json_url, timeout=10).status_code == 401
    assert requests.get(json_url, timeout=10, cookies={"_token": "forged"}).status_code == 403
    redirect = requests.get(page_url, timeout=10, allow_redirects=False)
    assert redirect.status_code in (302, 303, 307)
    location = urlsplit(redirect.headers["location"])
    assert location.path == "/api/v2/auth/login"
    assert parse_qs(location.query)["next"] == [page_url]
    login_page = requests.get(page_url, timeout=10)
    assert login_page.ok and "/auth/login" in login_page.url  # the auth manager's login page
    # The webhook still answers without a login, with its own shared-secret check.
    hook = requests.post(
        f"{airflow.url}/registry-replication/events",
        timeout=10,
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert (hook.status_code, hook.json()["detail"]) == (
        401,
        "wrong or missing Authorization header",
    )

    # Logged in (the REST API's Bearer token, or the UI's _token cookie).
    jwt = airflow.token()
    data = requests.get(json_url, timeout=10, headers={"Authorization": f"Bearer {jwt}"}).json()
    assert (
        requests.get(json_url, timeout=10, cookies={"_token": jwt}).json()["failed_layers"]
        == data["failed_layers"]
    )
    [layer] = data["failed_layers"]
    assert (layer["repository"], layer["digest"], layer["code"]) == (
        "group/app",
        rotten.digest,
        "DIGEST_INVALID",
    )
    assert (layer["dag_id"], layer["run_id"], layer["task_id"]) == (
        "registry_reconcile",
        run_id,
        "registry_secondary.copy_blobs",
    )
    assert layer["log_url"].startswith(f"{airflow.url}/dags/registry_reconcile/runs/")
    assert layer["log_url"].endswith(
        f"/tasks/registry_secondary.copy_blobs/mapped/{layer['map_index']}"
    )
    states = {r["repository"]: r for r in data["repositories"]}
    assert {name: r["state"] for name, r in states.items()} == {
        "group/app": "failed",
        "group/ok": "synced",
    }
    assert (states["group/ok"]["tags_primary"], states["group/ok"]["tags_secondary"]) == (2, 2)
    assert states["group/ok"]["checksums_match"] and not states["group/app"]["checksums_match"]
    assert data["backfill"]["repositories"] == {"in_sync": 1, "total": 2, "percent": 50.0}
    # (A failed copy_blobs batch reports only its failures, so its copied bytes are not counted.)
    assert data["backfill"]["bytes_copied"] == data["last_reconcile"]["summary"]["bytes copied"]
    assert (data["last_reconcile"]["run_id"], data["last_reconcile"]["state"]) == (run_id, "failed")

    # Linked from the UI's navigation (Browse menu).
    [plugin] = [
        p for p in airflow.api("GET", "plugins")["plugins"] if p["name"] == "registry_replication"
    ]
    assert [
        (v["name"], v["href"], v["destination"], v["category"]) for v in plugin["external_views"]
    ] == [("Registry replication", "/registry-replication/status", "nav", "browse")]

    # The page, in a real browser with the UI's session cookie.
    ARTIFACTS.mkdir(exist_ok=True)
    with Chromium() as browser:
        browser.set_cookie("_token", jwt, airflow.url)
        html = browser.open(page_url)
        browser.screenshot(ARTIFACTS / "status-page.png")
        shown = parse_page(html)
        assert browser.evaluate("location.href") == page_url
        assert shown["failed_layers"] == [
            {
                "repository": layer["repository"],
                "digest": layer["digest"],
                "code": layer["code"],
                "log_url": layer["log_url"],
            }
        ]
        assert rotten.digest in browser.evaluate("document.body.innerText")
        assert shown["repositories"] == {name: r["state"] for name, r in states.items()}
        assert shown["states"] == {k: str(v) for k, v in data["states"].items()}

        # The log link opens the failed map index's log in the Airflow UI; on the cluster, the
        # API server reads it from the log server of whichever worker ran it.
        browser.open(layer["log_url"])
        text = browser.wait_for_text(f"blob failed  group/app@{rotten.digest}")
        assert "DIGEST_INVALID" in text
        browser.screenshot(ARTIFACTS / f"status-page-log-link-{type(airflow).__name__}.png")
    if isinstance(airflow, AirflowCluster):
        ran_on = {
            worker
            for task, index, _, worker in airflow.task_hosts("registry_reconcile", run_id)
            if (task, index) == ("registry_secondary.copy_blobs", layer["map_index"])
        }
        assert ran_on and ran_on <= set(airflow.worker_addresses()), ran_on
        api_home_logs = list((airflow.home / "api-server").rglob("*.log"))
        assert not [p for p in api_home_logs if "copy_blobs" in str(p)]  # not read from disk


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.failed_layers: list[dict[str, str]] = []
        self.repositories: dict[str, str] = {}
        self.states: dict[str, str] = {}
        self._chip: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "tr" and "failed-layer" in classes:
            self.failed_layers.append(
                {
                    "repository": a["data-repository"],
                    "digest": a["data-digest"],
                    "code": a["data-code"],
                }
            )
        elif tag == "a" and "log" in classes and self.failed_layers:
            self.failed_layers[-1]["log_url"] = a["href"]
        elif tag == "tr" and "repository" in classes:
            self.repositories[a["data-repository"]] = a["data-state"]
        elif tag == "span" and "data-state" in a:
            self._chip = a["data-state"]

    def handle_data(self, data: str) -> None:
        if self._chip and data.strip():
            self.states[self._chip] = data.strip().split()[0]
            self._chip = None


def parse_page(html: str) -> dict[str, Any]:
    parser = _PageParser()
    parser.feed(html)
    return {
        "failed_layers": parser.failed_layers,
        "repositories": parser.repositories,
        "states": parser.states,
    }
