"""``engine.sites.unreachable``: whether a site answers, against real registries, and whatever
its ping raises."""

from __future__ import annotations

import builtins
import ssl

import pytest
import requests
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_replication.engine.sites import unreachable
from registry_replication.transport.errors import RegistryError
from replication_harness.registry import LocalRegistry, free_port, open_client


def _builtin_exceptions() -> list[type[Exception]]:
    """Every built-in exception type that takes a message (plus one of no module we know)."""
    kinds = [
        kind
        for kind in vars(builtins).values()
        if isinstance(kind, type) and issubclass(kind, Exception) and _takes_a_message(kind)
    ]
    # And some the libraries under the client raise.
    return [
        *kinds,
        ssl.SSLError,
        requests.ConnectionError,
        urllib3.exceptions.ProtocolError,
        type("SomeLibraryError", (Exception,), {}),
    ]


def _takes_a_message(kind: type[Exception]) -> bool:
    try:
        kind("message")
    except TypeError:
        return False
    return True


# Any exception a ping could raise, with any message: none may escape the check.
ANY_EXCEPTION = st.builds(
    lambda kind, text: kind(text), st.sampled_from(_builtin_exceptions()), st.text(max_size=200)
)


def test_a_registry_that_answers_is_reachable(primary: LocalRegistry) -> None:
    assert unreachable(open_client(primary.url)) is None


def test_a_stopped_registry_is_not(primary: LocalRegistry) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    reason = unreachable(open_client(closed))
    assert reason is not None and "ping" in reason, reason


@pytest.mark.parametrize(("status", "reachable"), [(401, True), (404, True), (503, False)])
def test_a_refusal_is_an_answer_a_5xx_is_not(
    monkeypatch: pytest.MonkeyPatch, primary: LocalRegistry, status: int, reachable: bool
) -> None:
    client = open_client(primary.url)

    def ping() -> None:
        raise RegistryError(f"HTTP {status}", registry=primary.url, status=status)

    monkeypatch.setattr(client, "ping", ping)
    assert (unreachable(client) is None) is reachable


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raised=ANY_EXCEPTION)
def test_whatever_the_ping_raises_is_a_reason(primary: LocalRegistry, raised: Exception) -> None:
    client = open_client(primary.url)

    def ping() -> None:
        raise raised

    client.ping = ping  # type: ignore[method-assign]
    assert unreachable(client) == f"its ping raised {type(raised).__name__}: {raised}"
