"""Smoke test of benchmarks/event_latency.py: a tiny run completes and reports every figure.

No timing assertions: the script starts ``airflow standalone`` with notifying registries, every
push it makes reaches the secondary (it waits for each digest there), and its JSON has each
figure.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_tiny_event_latency_run_reports_every_figure(run_benchmark) -> None:
    stdout = run_benchmark(
        "event_latency.py",
        "--sequential",
        "2",
        "--idle-minutes",
        "0",
        "--burst",
        "6",
        "--burst-repositories",
        "2",
    )
    result = json.loads(stdout.split("== event latency ==", 1)[1])
    assert len(result["sequential_seconds"]) == 2
    assert result["burst_pushes"] == 6 and result["burst_repositories"] == 2
    for figure in (
        "warm_up_seconds",
        "sequential_median_seconds",
        "after_idle_seconds",
        "burst_replicated_after_last_push_seconds",
    ):
        assert result[figure] >= 0, (figure, result)
    # Two clocks' difference: the registry may notify (and the webhook store the event) before
    # the pushing client has read the answer to its last PUT, so it can be a little below 0.
    assert isinstance(result["burst_last_event_stored_after_last_push_seconds"], float), result
