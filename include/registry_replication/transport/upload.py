"""Blob uploads (the Distribution spec's "pushing blobs"): one request per function, and the
resumable upload ``RegistryClient.upload_blob`` runs.

Each function sends one request through a ``Transport`` (the caller has validated the names).
``upload_blob`` opens a session (``POST``), sends ``PATCH`` chunks above the chunk size and
commits with the last bytes (``PUT ?digest=``), each step under the transport's retry policy;
after an interrupted step it asks the registry where the upload stands (``GET`` of its
location: the ``Range`` offset) and reopens the body there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin

from registry_replication.transport.errors import RegistryError, where
from registry_replication.transport.retry import one_try_each
from registry_replication.transport.transport import Body, Request, Transport
from registry_replication.transport.wire import Response

log = logging.getLogger(__name__)

MiB = 1 << 20  # the unit of every blob size in this package: chunks, windows, buffers

# A blob's bytes from an offset to its end (``open_body(0)``: all of them).
OpenBody = Callable[[int], Iterable[bytes]]


@dataclass
class Upload:
    """An open blob upload session: where to send the next bytes, and how many it holds."""

    repository: str
    location: str
    offset: int = 0


# -- one request each -----------------------------------------------------------------------------


def start(transport: Transport, repository: str) -> Upload:
    """``POST``: open an upload session."""
    response = transport.send(
        Request("POST", f"/v2/{repository}/blobs/uploads/", "start upload", repository, ok=(202,))
    )
    response.close()
    return Upload(repository, _location(transport, response))


def mount(transport: Transport, repository: str, digest: str, from_repository: str) -> bool:
    """Cross-repository mount (``POST ?mount=&from=``); False when the registry could not."""
    query = urlencode({"mount": digest, "from": from_repository})
    response = transport.send(
        Request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?{query}",
            "mount blob",
            repository,
            digest,
            ok=(201, 202),
        )
    )
    response.close()
    if response.status == 202:
        # The registry opened an upload instead; it expires on its own, but tidy up.
        cancel(transport, Upload(repository, _location(transport, response)))
        return False
    return True


def patch(transport: Transport, upload: Upload, body: Body) -> Upload:
    """``PATCH`` ``body`` at ``upload.offset``; returns the advanced session."""
    response = transport.send(
        Request(
            "PATCH",
            upload.location,
            "upload chunk",
            upload.repository,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{upload.offset}-{upload.offset + len(body) - 1}",
            },
            data=body,
            ok=(202,),
        )
    )
    response.close()
    return Upload(upload.repository, _location(transport, response), _range_end(response))


def commit(transport: Transport, upload: Upload, digest: str, body: Body) -> None:
    """``PUT ?digest=`` with the last bytes: the registry verifies and commits."""
    sep = "&" if "?" in upload.location else "?"
    transport.send(
        Request(
            "PUT",
            f"{upload.location}{sep}{urlencode({'digest': digest})}",
            "commit blob",
            upload.repository,
            digest,
            headers={"Content-Type": "application/octet-stream"},
            data=body if len(body) else b"",
            ok=(201, 204),
        )
    ).close()


def status(transport: Transport, upload: Upload) -> Upload:
    """Where an interrupted upload stands (the offset to resume from)."""
    response = transport.send(
        Request("GET", upload.location, "check upload", upload.repository, ok=(204,))
    )
    response.close()
    return Upload(upload.repository, _location(transport, response), _range_end(response))


def cancel(transport: Transport, upload: Upload) -> bool:
    """End an upload session (``DELETE`` needs the delete action); True once it is gone."""
    try:
        transport.send(
            Request("DELETE", upload.location, "cancel upload", upload.repository, ok=(204, 404))
        ).close()
        return True
    except RegistryError as exc:  # the registry purges it in time; not worth failing for
        log.info("could not cancel upload in %s: %s", upload.repository, exc)
        return False


def _location(transport: Transport, response: Response) -> str:
    """An upload URL from ``Location``; refused unless it is on our own registry."""
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(
            "the registry sent no upload Location",
            **where(transport.url, "upload"),
            status=response.status,
        )
    return transport.confinement.own_url(
        urljoin(response.url, location), "upload", None, "Location"
    )


def _range_end(response: Response) -> int:
    """The upload offset from ``Range: 0-<last byte>``.

    distribution answers ``0-0`` both for an empty upload and for one byte; chunks are far
    larger than a byte, so ``0-0`` means nothing received yet.
    """
    _, _, end = (response.headers.get("Range") or "").partition("-")
    return int(end) + 1 if end.isdigit() and int(end) > 0 else 0


# -- the resumable upload -------------------------------------------------------------------------


def upload_blob(
    transport: Transport,
    repository: str,
    digest: str,
    size: int,
    open_body: OpenBody,
    *,
    exists: Callable[[], bool],
    chunk_size: int | None = None,
    on_session: Callable[[Upload], None] | None = None,
) -> None:
    """Upload and commit a blob whose bytes ``open_body(offset)`` yields from ``offset`` on.

    Up to ``chunk_size`` bytes (default: any size) go up in one ``PUT ?digest=``; a larger
    blob in ``PATCH`` chunks, its last piece in the ``PUT``. Each request is a step run under
    the retry policy. After an interrupted step the next attempt asks the registry where
    the upload stands and carries on from there, reopening the body at that offset; a session
    the registry dropped is started over (unless ``exists()``: the commit went through). The
    registry checks the digest before it commits, and a whole body read from a registry is
    checked before its last bytes go up.

    This transport's policy is the only one retrying the copy: every request inside a step,
    ``open_body``'s own (the primary's download, on whichever registry) included, gets one
    try, so a failure on either side spends the same budget of ``max_retries`` retries.
    The budget starts again each time the registry accepts a ``PATCH`` chunk (its offset
    moves on): it bounds the attempts without progress, and a blob sent in one ``PUT``
    gets ``max_retries`` retries in all.

    ``on_session`` is called with the session each time it is opened or moves on, so the
    caller can record it (a killed writer's sessions are cancelled by the next writer); on
    failure the session is cancelled here, with one try (the copy's retries are spent, and
    the registry purges a session left behind).
    """
    upload = _BlobUpload(
        transport,
        repository,
        digest,
        size,
        chunk_size or max(size, 1),
        _Source(open_body, size, transport.url, repository, digest),
        exists,
        on_session,
    )
    interrupted = f"upload of {repository}@{digest} to {transport.url} interrupted"
    try:
        while not upload.committed:
            transport.retry_policy.run(upload.step, interrupted)
    except BaseException:
        if upload.session is not None:
            with one_try_each():
                cancel(transport, upload.session)
        raise


def read_once(data: Iterable[bytes], registry: str, repository: str, digest: str) -> OpenBody:
    """``open_body`` for a stream that can be read only once, from its start."""
    opened = threading.Event()

    def open_body(offset: int) -> Iterable[bytes]:
        if opened.is_set() or offset:
            raise RegistryError(
                "the upload was interrupted and its body is a stream that cannot be read again",
                registry=registry,
                operation="upload blob",
                repository=repository,
                reference=digest,
                advice="rerun; to resume inside the client, call upload_blob with a function "
                "that opens the body at an offset",
            )
        opened.set()
        return data

    return open_body


@dataclass
class _BlobUpload:
    """One blob upload between the steps of ``upload_blob``."""

    transport: Transport
    repository: str
    digest: str
    size: int
    chunk_size: int
    source: _Source
    exists: Callable[[], bool]
    on_session: Callable[[Upload], None] | None
    session: Upload | None = None
    interrupted: bool = False
    committed: bool = False

    def step(self) -> None:
        """One request: the next chunk, or the last piece and the commit (after an interruption,
        first ask the registry where the upload stands)."""
        try:
            if self.session is None:
                self._moved(start(self.transport, self.repository))
            elif self.interrupted:
                self._resume()
                if self.committed:
                    return
            self.interrupted = False
            offset = self.session.offset
            rest = self.size - offset
            if rest > self.chunk_size:
                self._moved(
                    patch(self.transport, self.session, self.source.body(offset, self.chunk_size))
                )
            else:
                commit(self.transport, self.session, self.digest, self.source.body(offset, rest))
                self.committed = True
        except BaseException:
            self.interrupted = True
            raise

    def _resume(self) -> None:
        assert self.session is not None
        confirmed = self.session.offset
        try:
            standing = status(self.transport, self.session)
        except RegistryError as exc:
            if exc.code not in ("BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"):
                raise
            # The registry dropped the session (distribution cancels one whose bytes do not
            # match its state, e.g. after a request cut mid-body), or the commit went through
            # before the answer was lost.
            if self.exists():
                self.committed = True
                return
            log.warning(
                "upload of %s@%s interrupted at byte %d; the registry dropped the "
                "session (%s): starting over",
                self.repository,
                self.digest,
                confirmed,
                exc.code,
            )
            cancel(self.transport, self.session)
            self.session = None
            self._moved(start(self.transport, self.repository))
            return
        log.warning(
            "upload of %s@%s interrupted at byte %d; resuming at byte %d, the registry's offset",
            self.repository,
            self.digest,
            confirmed,
            standing.offset,
        )
        self._moved(standing)

    def _moved(self, session: Upload) -> None:
        self.session = session
        if self.on_session:
            self.on_session(session)


class _Source:
    """A blob's bytes for upload requests: one stream read in order across chunks, reopened
    at the offset a request starts from when the stream is elsewhere (a request sent again,
    the registry holding another offset) or broke."""

    def __init__(
        self, open_body: OpenBody, size: int, registry: str, repository: str, digest: str
    ) -> None:
        self._open = open_body
        self._size = size
        self._where = dict(
            registry=registry,
            operation="upload blob",
            repository=repository,
            reference=digest,
            code="SIZE_INVALID",
        )
        self._stream: Iterator[bytes] | None = None
        self._position = 0  # of the stream's next byte
        self._pending = b""

    def body(self, offset: int, length: int) -> Body:
        return Body(lambda: self._read(offset, length), length)

    def _read(self, offset: int, length: int) -> Iterator[bytes]:
        if self._stream is None or self._position != offset:
            if self._stream is not None and hasattr(self._stream, "close"):
                self._stream.close()
            self._stream, self._position, self._pending = iter(self._open(offset)), offset, b""
        left = length
        while left:
            piece = self._pending or self._next()
            if piece is None:
                raise RegistryError(
                    f"the blob's bytes ended at byte {self._position} of {self._size}",
                    **self._where,
                )
            piece, self._pending = piece[:left], piece[left:]
            left -= len(piece)
            self._position += len(piece)
            if not left and self._position == self._size:
                # Read to the end before the last piece goes up: a whole blob read from a
                # registry is verified there, so a mismatch aborts the request uncommitted.
                if self._pending or self._next() is not None:
                    raise RegistryError(
                        f"the blob has more bytes than its size {self._size}", **self._where
                    )
            yield piece

    def _next(self) -> bytes | None:
        """The stream's next piece (skipping empty ones), None at its end."""
        assert self._stream is not None
        try:
            return next((piece for piece in self._stream if piece), None)
        except BaseException:
            # A broken stream has nothing more to give: the next attempt opens a new one,
            # even at the same offset.
            self._stream = None
            raise
