"""End to end in `airflow standalone`: a push to a repository out of grammar (``Foo/app``, which
distribution 2.8 stores) must not switch the event path off. Its envelope gets a 2xx, the event
shows as rejected on the status page, and the next push replicates within seconds.

Before, the webhook answered 400; distribution's notification queue is serial and retries a
refused envelope forever, so no later push was ever delivered.
"""

from __future__ import annotations

import time

import requests

from registry_replication.outcomes import EventStatus
from replication_harness import images
from replication_harness.watch import wait_for_replica, warmed_up

ODD = "Foo/app"


def test_an_odd_push_is_rejected_and_the_next_push_still_replicates(notified_stack, capsys):
    primary, secondary, airflow, store = notified_stack
    writer, reader, factory = warmed_up(primary, secondary, layer_size=64 * 1024)

    images.push_unchecked(primary, ODD, factory.make(), "1.0")
    latencies = []
    for i in range(3):
        img = factory.make()
        pushed_at = time.monotonic()
        images.push(writer, "group/app", img, [f"after-odd-{i}"])
        pushed = time.monotonic() - pushed_at
        latencies.append(
            pushed + wait_for_replica(reader, "group/app", f"after-odd-{i}", img.digest, timeout=60)
        )
    with capsys.disabled():
        print(
            f"\npush-to-replica after an odd push (s): {', '.join(f'{x:.2f}' for x in latencies)}"
        )

    rejected = [e for e in store.queue.events(status=EventStatus.REJECTED)]
    assert [(e["action"], e["repository"], e["tag"]) for e in rejected] == [("push", ODD, "1.0")]
    assert "invalid repository name 'Foo/app'" in rejected[0]["last_error"]
    assert ODD not in list(reader.catalog())

    token = requests.post(
        f"{airflow.url}/auth/token",
        timeout=10,
        json={"username": "admin", "password": airflow.password},
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    data = requests.get(
        f"{airflow.url}/registry-replication/api/status", headers=auth, timeout=10
    ).json()
    assert data["queue"]["counts"]["rejected"] == 1
    assert [(e["repository"], e["tag"]) for e in data["rejected_events"]] == [(ODD, "1.0")]
    page = requests.get(f"{airflow.url}/registry-replication/status", headers=auth, timeout=10).text
    assert f'class="rejected-event" data-repository="{ODD}"' in page
    assert "invalid repository name" in page
    # Nothing on the plugin app describes itself to whoever asks without a login.
    for path in ("openapi.json", "docs", "redoc"):
        assert (
            requests.get(f"{airflow.url}/registry-replication/{path}", timeout=10).status_code
            == 404
        ), path
    # Every good event was processed; the rejected one was never claimed.
    assert store.queue.stats()["counts"]["pending"] == 0
    assert store.queue.stats()["counts"][EventStatus.DONE] >= 4
