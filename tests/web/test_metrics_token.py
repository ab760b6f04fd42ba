"""The metrics endpoint's token: a short one is warned about, never logged."""

from __future__ import annotations

import logging

import pytest

from registry_replication.web import metrics


@pytest.mark.parametrize(
    "token,warned", [("scrape-Token-1", True), ("x" * 31, True), ("0123456789abcdef" * 2, False)]
)
def test_a_metrics_token_shorter_than_32_characters_is_warned_about(
    monkeypatch, caplog, token, warned
):
    monkeypatch.setenv("REGISTRY_REPLICATION_METRICS_TOKEN", token)
    if hasattr(metrics, "_warn_short_token"):
        metrics._warn_short_token.cache_clear()  # once per process: this test's process
    with caplog.at_level(logging.WARNING, logger="registry_replication"):
        assert metrics.configured_token() == token
        assert metrics.configured_token() == token
    lines = [
        r.getMessage()
        for r in caplog.records
        if "REGISTRY_REPLICATION_METRICS_TOKEN" in r.getMessage()
    ]
    if warned:
        assert lines == [
            f"REGISTRY_REPLICATION_METRICS_TOKEN is {len(token)} characters long: "
            "use at least 32 random ones (openssl rand -hex 32); a short token "
            "can be guessed by whoever reaches /metrics"
        ]
    else:
        assert lines == []
    assert not any(token in r.getMessage() for r in caplog.records)
