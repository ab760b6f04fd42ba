"""Headless Chromium over the DevTools protocol, for the status page's end-to-end tests."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from replication_harness.registry import stop_process
from replication_harness.standalone import PROJECT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = PROJECT / "artifacts"  # screenshots, kept by CI


class Chromium:
    """Headless Chromium driven over the DevTools protocol (no WebDriver needed)."""

    def __init__(self, width: int = 1400, height: int = 900) -> None:
        self.width, self.height = width, height
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        self.ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and len(active.read_text().split()) == 2):
            assert self.process.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port, path = active.read_text().split()
        self.closing = ExitStack()
        self.ws = self.closing.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=10)
        )
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.close()
        stop_process(self.process)
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def set_cookie(self, name: str, value: str, url: str) -> None:
        self.call(
            "Network.setCookie",
            session=True,
            name=name,
            value=value,
            url=url,
            path="/",
            httpOnly=True,
            sameSite="Lax",
        )

    def open(self, url: str, timeout: float = 60) -> str:
        """Navigate, wait for the load event, and return the DOM."""
        self.evaluate("window.__previous_document = true")
        self._events = []
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            assert time.monotonic() < deadline, f"{url} did not load within {timeout}s"
            self._events.append(json.loads(self.ws.recv(timeout=timeout)))
        # A load event still unread from an earlier navigation (a form post's redirect) must
        # not pass for this one: wait for a new document (without the mark), loaded.
        while not self.evaluate("!window.__previous_document && document.readyState == 'complete'"):
            assert time.monotonic() < deadline, f"{url} did not load within {timeout}s"
            time.sleep(0.1)
        return self.evaluate("document.documentElement.outerHTML")

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    def wait_for_text(self, text: str, timeout: float = 60) -> str:
        """The page's visible text once it contains ``text`` (for pages that render in JS)."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if text in body:
                return body
            assert time.monotonic() < deadline, f"{text!r} not shown within {timeout}s:\n{body}"
            time.sleep(0.5)

    def screenshot(self, path: Path) -> None:
        metrics = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        height = max(self.height, int(metrics["height"]))
        shot = self.call(
            "Page.captureScreenshot",
            session=True,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
        )
        path.write_bytes(base64.b64decode(shot["data"]))
