"""Small loopback HTTP servers around real registries: a token service and a fault proxy.

``TokenService`` plays GitLab's ``/jwt/auth``: it checks a login and password and signs a
token for the scopes that user may have. ``FaultProxy`` forwards to a registry and injects
the faults that retries must survive (503, 429 with ``Retry-After``, connections cut before an
answer or in the middle of its body), and
holds chosen requests until a test releases them: the window of a race, made deterministic.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from registry_replication.transport.tokens import JwtAuth
from replication_harness.keys import KeyPair
from replication_harness.registry import GITLAB_ISSUER, GITLAB_SERVICE

# distribution's token check allows this much clock skew on exp and nbf (token.Leeway).
JWT_LEEWAY_SECONDS = 60


class _Server:
    """A ThreadingHTTPServer on a free loopback port, served from a daemon thread."""

    handler: type[BaseHTTPRequestHandler]

    def start(self) -> _Server:
        handler = type("Handler", (self.handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


class _TokenHandler(_QuietHandler):
    owner: TokenService

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        query = parse_qs(urlsplit(self.path).query)
        login = self.owner.check(self.headers.get("Authorization"))
        if login is None:
            self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]})
            return
        granted = [s for s in query.get("scope", []) if self.owner.allows(login, s)]
        token = self.owner.signer.mint(granted)
        self.owner.issued += 1
        self._reply(200, {"token": token, "expires_in": self.owner.expires_in})

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class TokenService(_Server):
    """GitLab's ``/jwt/auth`` in miniature: users with passwords and the actions they may use."""

    handler = _TokenHandler

    def __init__(
        self,
        keys: KeyPair,
        users: dict[str, tuple[str, set[str]]],
        *,
        refused_after_seconds: float | None = None,
        expires_in: int | None = None,
    ) -> None:
        """``refused_after_seconds``: the registry refuses each token that long after it was
        issued (distribution allows 60 s of clock leeway past ``exp``, so ``exp`` is set that
        much earlier); ``expires_in``: the lifetime the service tells clients (default: the
        real one), which may differ, as a token revoked early would."""
        ttl = 300
        clock = time.time
        if refused_after_seconds is not None:
            backdate = ttl + JWT_LEEWAY_SECONDS - refused_after_seconds
            clock = lambda: time.time() - backdate  # noqa: E731
        self.signer = JwtAuth(
            keys.private_key_pem,
            service=GITLAB_SERVICE,
            issuer=GITLAB_ISSUER,
            ttl_seconds=ttl,
            clock=clock,
        )
        self.expires_in = expires_in if expires_in is not None else ttl
        self.users = users
        self.issued = 0  # tokens handed out

    @property
    def realm(self) -> str:
        return f"{self.url}/jwt/auth"

    def check(self, header: str | None) -> str | None:
        if not header or not header.startswith("Basic "):
            return None
        login, _, password = base64.b64decode(header[6:]).decode().partition(":")
        expected = self.users.get(login)
        return login if expected and expected[0] == password else None

    def allows(self, login: str, scope: str) -> bool:
        actions = set(scope.rpartition(":")[2].split(","))
        return actions <= self.users[login][1]


@dataclass
class Fault:
    status: int | None = None  # None with cut=True: close the connection without an answer
    headers: dict[str, str] = field(default_factory=dict)
    cut: bool = False
    # Forward the request, then close the connection after this many bytes of the answer's
    # body (its headers promise all of them): a download cut mid-stream.
    cut_after_bytes: int | None = None
    path_contains: str = ""
    method: str = ""  # only requests with this method (default: any)
    after: int = 0  # let this many matching requests through first
    code: str = "UNAVAILABLE"  # the registry error code in the injected answer's body
    body: bytes | None = None  # this body instead (a proxy's own page: no error code at all)


@dataclass
class Hold:
    """Requests matching ``method`` and ``path_contains`` wait until ``release()``."""

    path_contains: str = ""
    method: str = ""
    after: int = 0  # let this many matching requests through first
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    dropped: bool = False

    def matches(self, method: str, path: str) -> bool:
        return self.path_contains in path and self.method in ("", method)

    def release(self) -> None:
        self.released.set()

    def drop(self) -> None:
        """Let go of the held requests without forwarding them (their sender is gone)."""
        self.dropped = True
        self.released.set()


class _ProxyHandler(_QuietHandler):
    owner: FaultProxy

    def _forward(self) -> None:
        body = self._read_body()
        if not self.owner.wait_if_held(self.command, self.path):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        fault = self.owner.next_fault(self.command, self.path)
        if fault is not None and fault.cut_after_bytes is None:
            self.owner.record(self.command, self.path, "cut" if fault.cut else fault.status)
            if fault.cut:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            data = (
                fault.body
                if fault.body is not None
                else json.dumps({"errors": [{"code": fault.code, "message": "injected"}]}).encode()
            )
            self.send_response(fault.status)
            for name, value in fault.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":  # an answer to HEAD has no body, whatever it promises
                self.wfile.write(data)
            return
        upstream = http.client.HTTPConnection(self.owner.upstream_host, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        headers["Content-Length"] = str(len(body))
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        cut_after = fault.cut_after_bytes if fault is not None else None
        self.owner.record(
            self.command, self.path, response.status if cut_after is None else "cut mid-body"
        )
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(name, value)
        # A HEAD's Content-Length is the size a GET would send (a blob's size), not its own;
        # a proxy may strip it (``strip_head_length``).
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        elif not self.owner.strip_head_length:
            self.send_header("Content-Length", response.getheader("Content-Length") or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data[:cut_after])
            self.owner.sent(len(data[:cut_after]))
        if cut_after is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward  # noqa: N815


class FaultProxy(_Server):
    """Forwards to a registry; ``inject`` queues faults for the next matching requests."""

    handler = _ProxyHandler

    def __init__(self, upstream_url: str) -> None:
        self.upstream_host = urlsplit(upstream_url).netloc
        self._faults: deque[Fault] = deque()
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self.log: list[tuple[str, str, int | str]] = []
        self.strip_head_length = False  # answer HEADs without Content-Length, as some proxies do
        # Each request meets the first queued fault that matches it, not only the first queued
        # (for faults on requests sent in parallel, in no known order).
        self.any_order = False
        self.body_bytes_sent = 0  # the forwarded answers' body bytes, as the registry served them

    def hold(self, method: str = "", path_contains: str = "", after: int = 0) -> Hold:
        """Hold the matching requests (from now on, but the first ``after``) until the returned
        ``Hold`` is released."""
        hold = Hold(path_contains, method, after)
        with self._lock:
            self._holds.append(hold)
        return hold

    def wait_if_held(self, method: str, path: str, timeout: float = 120) -> bool:
        """Wait while a hold matches; False when the request is to be dropped."""
        with self._lock:
            holds = []
            for hold in self._holds:
                if hold.released.is_set() or not hold.matches(method, path):
                    continue
                if hold.after:
                    hold.after -= 1
                else:
                    holds.append(hold)
        for hold in holds:
            hold.arrived.set()
            hold.released.wait(timeout)
        return not any(hold.dropped for hold in holds)

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def next_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            queued = list(self._faults) if self.any_order else list(self._faults)[:1]
            fault = next(
                (f for f in queued if f.path_contains in path and f.method in ("", method)), None
            )
            if fault is None:
                return None
            if fault.after:
                fault.after -= 1
                return None
            self._faults.remove(fault)
            return fault

    def sent(self, n: int) -> None:
        with self._lock:
            self.body_bytes_sent += n

    def record(self, method: str, path: str, outcome: int | str) -> None:
        with self._lock:
            self.log.append((method, path, outcome))


@contextmanager
def serve_on_loopback(app: Any) -> Iterator[str]:
    """An ASGI app behind a real uvicorn server on a free loopback port; yields its base URL."""
    import uvicorn

    from replication_harness.registry import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
