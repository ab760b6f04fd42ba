"""A per-registry bandwidth limit: a token bucket shared by every thread of one client."""

from __future__ import annotations

import threading
import time


class BandwidthLimit:
    """At most ``bytes_per_second`` on average, with bursts of up to one second's worth.

    ``consume(n)`` takes ``n`` bytes from the bucket and sleeps for the debt, if any, outside
    the lock, so concurrent blob streams share the rate instead of each getting all of it.
    """

    def __init__(self, bytes_per_second: int) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        self.rate = float(bytes_per_second)
        self._tokens = self.rate
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate) - n
            self._stamp = now
            debt = -self._tokens
        if debt > 0:
            time.sleep(debt / self.rate)
