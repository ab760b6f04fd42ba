"""Faults injected into one leg of a fan-out: a blob's bytes as one secondary's upload reads
them, meeting a failure, a dropped connection or a pause at a chosen byte (once)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from registry_replication.transport.errors import RegistryError, RegistryUnavailableError
from registry_replication.transport.upload import OpenBody

OK, FAIL, BLIP, PAUSE = "ok", "fail", "blip", "pause"
KINDS = (OK, FAIL, BLIP, PAUSE)


def faulty(body: OpenBody, kind: str, at: int, pause: float) -> OpenBody:
    """``body`` meeting ``kind`` once, at byte ``at``: ``FAIL`` a refusal its upload does not
    retry, ``BLIP`` a dropped connection it does, ``PAUSE`` ``pause`` seconds of nothing."""
    fired = threading.Event()

    def open_body(offset: int) -> Iterator[bytes]:
        position = offset
        for chunk in body(offset):
            if kind != OK and not fired.is_set() and position <= at < position + len(chunk):
                fired.set()
                if kind == FAIL:
                    raise RegistryError("injected leg failure", code="DENIED")
                if kind == BLIP:
                    raise RegistryUnavailableError("injected dropped connection")
                time.sleep(pause)
            position += len(chunk)
            yield chunk

    return open_body
