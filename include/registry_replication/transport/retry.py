"""The retry policy: one per registry, and one per operation.

``RetryPolicy`` (tenacity) retries connection errors, 5xx and 429 (``RegistryUnavailableError``)
with exponential backoff and jitter, honouring a ``Retry-After`` the registry sent; every wait
is capped at ``MAX_RETRY_SLEEP_SECONDS``. Each ``Transport`` runs every request under its
policy, and a blob upload runs each of its steps under the secondary's (``upload.upload_blob``).

One policy owns each operation: while a policy runs one, the thread is marked
(``one_try_each``), and every request made inside it, on any registry, gets one try and leaves
its failure to that policy. Two policies nested would multiply the attempts (a download retried
inside each attempt of the upload it feeds) and the time an operator was promised by
``max_retries``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import RegistryError, RegistryUnavailableError

log = logging.getLogger(__name__)

MAX_RETRY_SLEEP_SECONDS = 120.0  # the cap on any wait, Retry-After included

T = TypeVar("T")

# Set while a retry policy runs an operation in this thread (any registry's): the requests
# inside it get one try each and their failures go to that policy, which retries the whole.
_retried_by_outer_policy: ContextVar[bool] = ContextVar("retried_by_outer_policy", default=False)


@contextmanager
def one_try_each() -> Iterator[None]:
    """Requests made inside get one try each: an outer policy owns their retries."""
    token = _retried_by_outer_policy.set(True)
    try:
        yield
    finally:
        _retried_by_outer_policy.reset(token)


class RetryPolicy:
    """One registry's retry policy: ``config.max_retries`` retries, the first wait
    ``config.backoff_seconds``, doubling."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        # Declared once: every operation runs under a copy of it (``run``).
        self.retrying = Retrying(
            stop=stop_after_attempt(config.max_retries + 1),
            retry=retry_if_exception_type(RegistryUnavailableError),
            wait=self._backoff,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def run(self, operation: Callable[[], T], interrupted: str | None = None) -> T:
        """``operation()`` under this policy, which then owns every request made inside it;
        inside an operation another policy retries, one try (see ``_retried_by_outer_policy``).
        ``interrupted`` begins each retry's log line."""
        if _retried_by_outer_policy.get():
            return operation()
        with one_try_each():
            # The first try outside tenacity, whose bookkeeping costs a tenth of a HEAD's CPU;
            # its failure is then tenacity's first attempt, so waits, logs and the count of
            # tries are the policy's.
            try:
                return operation()
            except RegistryUnavailableError as exc:
                first: list[BaseException] = [exc]

            def attempt() -> T:
                if first:
                    raise first.pop()
                return operation()

            retrying = (
                self.retrying.copy(before_sleep=partial(self._log_retry, interrupted=interrupted))
                if interrupted
                else self.retrying.copy()
            )
            return retrying(attempt)

    def _backoff(self, state: RetryCallState) -> float:
        """The wait before the next try: ``Retry-After`` if the registry sent one, else
        exponential backoff with jitter; capped either way."""
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        delay = (
            retry_after
            if retry_after is not None
            else self.config.backoff_seconds
            * 2 ** (state.attempt_number - 1)
            * random.uniform(0.5, 1.0)
        )
        return min(delay, MAX_RETRY_SLEEP_SECONDS)

    def _log_retry(self, state: RetryCallState, interrupted: str | None = None) -> None:
        exc = state.outcome.exception() if state.outcome else None
        what = exc.without_advice if isinstance(exc, RegistryError) else repr(exc)
        if interrupted:
            what = f"{interrupted}: {what}"
        log.warning(
            "%s; retry %d of %d in %.1fs%s",
            what,
            state.attempt_number,
            self.config.max_retries,
            state.upcoming_sleep,
            " (Retry-After)" if getattr(exc, "retry_after", None) is not None else "",
        )
