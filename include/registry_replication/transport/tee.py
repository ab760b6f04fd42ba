"""One read of a blob streamed into several uploads: ``Tee``, the read-once fan-out.

A producer thread reads the blob once (``open_body(0)``: a whole read, hashed by
``blobs.read``) and hands each chunk to every attached leg's bounded buffer; each leg is the
``OpenBody`` of one secondary's ``upload_blob``. Every wait is bounded, so no thread blocks
for ever:

- a leg attaches with its first ``open(0)``; the producer starts once every leg has attached
  or left (``leave``), or ``attach_seconds`` after the first: a leg still opening its session
  on a slow site is left behind and reads on its own;
- a leg that holds the producer back for ``lag_seconds`` in all (its buffer full) is
  detached: it reads the rest of the blob on its own (a ``Range`` read from where it stands),
  and the others never wait on it again;
- a leg that waits ``stall_seconds`` for a chunk detaches itself the same way;
- any other open (a resumed upload at the registry's offset, a session started over) is the
  leg's own read, as without a tee.

The digest rule: the end of the stream is handed on only once the producer's read has
checked the whole blob's digest. ``upload._Source`` reads one piece past the end before it
sends a blob's last bytes, so no leg commits before that check; on a mismatch every attached
leg raises it and none commits (each registry checks the digest again on commit).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum

from registry_replication.transport.errors import RegistryError, RegistryUnavailableError
from registry_replication.transport.retry import one_try_each
from registry_replication.transport.upload import MiB, OpenBody

log = logging.getLogger(__name__)


class _State(Enum):
    NEW = "new"  # not opened yet
    ATTACHED = "attached"  # fed by the producer
    ALONE = "alone"  # reads on its own (late, detached or stalled)
    GONE = "gone"  # left, or its stream was closed


@dataclass
class _Leg:
    name: str
    state: _State = _State.NEW
    chunks: deque[bytes] = field(default_factory=deque)
    buffered: int = 0
    held_back: float = 0.0  # seconds the producer waited on this leg's full buffer
    end: bool = False  # the whole blob is in ``chunks`` and its digest checked
    error: BaseException | None = None  # the producer's failure, for this leg to raise
    detached: bool = False  # set by the producer: the leg goes on alone


class Tee:
    """Hands out one ``OpenBody`` per leg (``open_for``), all fed by one read of the blob.

    Use as a context manager: leaving it closes the tee (a leg still reading raises) and joins
    the producer, whatever was raised."""

    def __init__(
        self,
        open_body: OpenBody,
        size: int,
        legs: Sequence[str],
        *,
        repository: str,
        digest: str,
        window: int = 4 * MiB,
        attach_seconds: float = 1.0,
        lag_seconds: float = 5.0,
        stall_seconds: float = 180.0,
    ) -> None:
        """``open_body``: the blob on the primary from an offset (a whole read hashes it), of
        ``size`` bytes; ``legs``: their names, for ``open_for`` and the log; ``window``: the bytes buffered per
        leg; ``stall_seconds``: longer than a primary read's timeout plus every leg's lag."""
        self._open = open_body
        self._size = size
        self._legs = {name: _Leg(name) for name in legs}
        self._where = f"{repository}@{digest}"
        self._window = window
        self._attach_seconds = attach_seconds
        self._lag_seconds = lag_seconds
        self._stall_seconds = stall_seconds
        self._cond = threading.Condition()
        self._producer: threading.Thread | None = None
        self._reading = False  # the producer has begun: no more attachments
        self._closed = False
        self._first_attach = 0.0
        self.detached: list[str] = []  # legs that went on alone, in order

    def open_for(self, leg: str) -> OpenBody:
        """The ``OpenBody`` of ``leg``: its first ``open(0)`` attaches it; any other open is
        the leg's own read."""

        def open_body(offset: int) -> Iterable[bytes]:
            if offset == 0 and self._attach(self._legs[leg]):
                return self._consume(self._legs[leg])
            return self._open(offset)

        return open_body

    def leave(self, leg: str) -> None:
        """``leg`` needs no more bytes (its upload ended, or it mounted): never wait on it."""
        with self._cond:
            self._drop(self._legs[leg])

    def close(self) -> None:
        """Stop: legs still reading from the tee raise, and the producer is joined (bounded by
        the primary's read timeout: it stops after the chunk in hand)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._producer is not None:
            self._producer.join(self._stall_seconds)
            if self._producer.is_alive():
                log.warning("fan-out of %s: its read of the primary is still running", self._where)

    def __enter__(self) -> Tee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- legs -------------------------------------------------------------------------------

    def _attach(self, leg: _Leg) -> bool:
        with self._cond:
            if leg.state is not _State.NEW or self._reading or self._closed:
                if leg.state is _State.NEW:
                    leg.state = _State.ALONE
                    log.info(
                        "fan-out of %s: leg %s opened after the read began; it reads alone",
                        self._where,
                        leg.name,
                    )
                return False
            leg.state = _State.ATTACHED
            if self._producer is None:
                self._first_attach = time.monotonic()
                self._producer = threading.Thread(
                    target=self._produce, name="tee-producer", daemon=True
                )
                self._producer.start()
            self._cond.notify_all()
            return True

    def _consume(self, leg: _Leg) -> Iterator[bytes]:
        """The leg's stream: chunks from its buffer, the end once the digest is checked; after
        a detachment, the rest read alone from where the leg stands."""
        position = 0
        try:
            while True:
                with self._cond:
                    chunk = self._next_chunk(leg)
                if chunk is None:
                    break
                position += len(chunk)
                yield chunk
        finally:
            with self._cond:
                self._drop(leg)
        if leg.detached and position < self._size:  # (at the end: the registry checks it)
            yield from self._open(position)

    def _next_chunk(self, leg: _Leg) -> bytes | None:
        """(Under the lock.) The leg's next chunk; None at the end or once it is detached."""
        deadline = time.monotonic() + self._stall_seconds
        while not leg.chunks and not leg.end and leg.error is None and not leg.detached:
            if self._closed:
                raise RegistryError(
                    "the fan-out was stopped before this leg had its bytes",
                    operation="upload blob",
                    reference=self._where,
                    code="FANOUT_CLOSED",
                    advice="rerun: the blob is copied again",
                )
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "fan-out of %s: leg %s had no bytes for %.0fs; it reads alone",
                    self._where,
                    leg.name,
                    self._stall_seconds,
                )
                self._detach(leg)
                break
            self._cond.wait(left)
        if leg.chunks:
            chunk = leg.chunks.popleft()
            leg.buffered -= len(chunk)
            self._cond.notify_all()
            return chunk
        if leg.error is not None:
            error = copy.copy(leg.error)  # each leg raises its own: tracebacks differ
            raise error from leg.error
        return None

    def _drop(self, leg: _Leg) -> None:
        """(Under the lock.) The producer stops feeding ``leg`` and frees its buffer."""
        if leg.state in (_State.NEW, _State.ATTACHED):
            leg.state = _State.GONE
        leg.chunks.clear()
        leg.buffered = 0
        self._cond.notify_all()

    def _detach(self, leg: _Leg) -> None:
        """(Under the lock.) ``leg`` goes on alone from the bytes it has consumed."""
        leg.detached = True
        leg.chunks.clear()
        leg.buffered = 0
        leg.state = _State.ALONE
        self.detached.append(leg.name)
        self._cond.notify_all()

    # -- the producer -----------------------------------------------------------------------

    def _produce(self) -> None:
        """Read the blob once and feed the attached legs; its failure goes to each of them
        (a retryable one: each leg reads alone from where it stands)."""
        try:
            with self._cond:
                deadline = self._first_attach + self._attach_seconds
                while not self._closed and any(
                    leg.state is _State.NEW for leg in self._legs.values()
                ):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._reading = True
                if self._closed:
                    return
            # The leg's upload is the operation its secondary's policy retries; this read
            # gets one try and leaves its failure to the legs.
            with one_try_each():
                stream = iter(self._open(0))
                try:
                    for chunk in stream:
                        if chunk and not self._push(chunk):
                            return  # no leg left, or closed: stop reading
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
            with self._cond:
                for leg in self._attached():
                    leg.end = True
                self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to every leg, which raises it
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            for leg in self._attached():
                if isinstance(exc, RegistryUnavailableError):
                    log.warning(
                        "fan-out of %s: the primary's read failed (%s); leg %s reads alone",
                        self._where,
                        exc,
                        leg.name,
                    )
                    self._detach(leg)
                else:
                    leg.error = exc
            self._cond.notify_all()

    def _attached(self) -> list[_Leg]:
        return [leg for leg in self._legs.values() if leg.state is _State.ATTACHED]

    def _push(self, chunk: bytes) -> bool:
        """Hand ``chunk`` to every attached leg once it has room, detaching a leg whose full
        buffer has held the producer back ``lag_seconds`` in all. False: nobody to feed."""
        with self._cond:
            waited_from = time.monotonic()
            while not self._closed:
                now = time.monotonic()
                full = [leg for leg in self._attached() if not self._room(leg, chunk)]
                for leg in full:
                    leg.held_back += now - waited_from
                    if leg.held_back >= self._lag_seconds:
                        log.warning(
                            "fan-out of %s: leg %s held the others back %.1fs; detached, it "
                            "reads the rest alone",
                            self._where,
                            leg.name,
                            leg.held_back,
                        )
                        self._detach(leg)
                waiting = [leg for leg in full if leg.state is _State.ATTACHED]
                if not waiting:
                    break
                waited_from = now
                self._cond.wait(min(self._lag_seconds - leg.held_back for leg in waiting))
            attached = self._attached()
            if self._closed or not attached:
                return False
            for leg in attached:
                leg.chunks.append(chunk)
                leg.buffered += len(chunk)
            self._cond.notify_all()
            return True

    def _room(self, leg: _Leg, chunk: bytes) -> bool:
        return not leg.buffered or leg.buffered + len(chunk) <= self._window
