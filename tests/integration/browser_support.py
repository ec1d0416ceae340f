"""Headless Chromium for end-to-end tests, driven over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol
commands on its fd 3 and writes answers and events on its fd 4, each a JSON
text ended by a NUL byte (as Puppeteer's pipe transport does), so no
WebSocket client is needed.  Every wait is bounded.

``find_chromium()`` looks for a browser (``SPEEDPROXY_CHROMIUM``, then the
usual names); ``install_chromium()`` installs Debian's ``chromium`` package
with apt-get when the test runs as root.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typing import Any, Callable, Dict, List, Optional

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chromium-headless-shell")
TIMEOUT = 30.0

from speedproxy.testing import wait_until


def find_chromium() -> Optional[str]:
    """The browser binary to use (an absolute path), or ``None``."""
    configured = os.environ.get("SPEEDPROXY_CHROMIUM")
    if configured:
        return str(Path(configured).resolve()) if Path(configured).exists() else shutil.which(configured)
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def install_chromium(timeout: float = 900.0) -> str:
    """Try ``apt-get install -y chromium`` (after ``apt-get update`` if needed); what happened."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    prefix: List[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return "not root and no sudo: run `apt-get install -y chromium` as root"
        prefix = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = prefix + ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    outputs = []
    deadline = time.monotonic() + timeout
    for command in (install, prefix + ["apt-get", "update"], install):
        left = deadline - time.monotonic()
        if left <= 0:
            outputs.append("gave up: out of time")
            break
        try:
            done = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=left,
            )
        except subprocess.TimeoutExpired:
            outputs.append(f"{' '.join(command)}: timed out")
            break
        outputs.append(f"{' '.join(command)}: exit {done.returncode}: {done.stdout[-600:]}")
        if command is install and done.returncode == 0:
            break
    return "\n".join(outputs)


def chromium_or_fail(needed_for: str) -> str:
    """Chromium's binary, installed with apt-get (bounded) when missing; a
    test failure naming ``needed_for`` and what was tried (not a skip) if it
    is still absent."""
    found = find_chromium()
    if found:
        return found
    report = install_chromium()
    found = find_chromium()
    if not found:
        pytest.fail(
            f"{needed_for} need(s) headless Chromium and none was found "
            f"(looked for $SPEEDPROXY_CHROMIUM and {', '.join(NAMES)}); "
            "install it with `apt-get install -y chromium`. What was tried:\n" + report,
            pytrace=False,
        )
    return found


class BrowserError(RuntimeError):
    """The browser answered a command with an error, or did not answer in time."""


def _high_fd(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or more, inheritable (the original is closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    os.set_inheritable(high, True)
    return high


class Chromium:
    """One headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, binary: str, directory: Path, width: int = 1440, height: int = 1000) -> None:
        self.binary = binary
        self.directory = Path(directory)
        self.width = width
        self.height = height
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self.session: Optional[str] = None
        self.events: List[Dict[str, Any]] = []
        self._answers: Dict[int, Dict[str, Any]] = {}
        self._next_id = 0
        self._cond = threading.Condition()
        self._closed = False
        self._to_browser = -1
        self._from_browser = -1
        self._log_path = self.directory / "chromium.log"

    # -- life ----------------------------------------------------------------------

    def start(self) -> "Chromium":
        self.directory.mkdir(parents=True, exist_ok=True)
        to_read, to_write = os.pipe()      # commands: we write, the browser reads on its fd 3
        from_read, from_write = os.pipe()  # answers: the browser writes on its fd 4, we read
        child_in, child_out = _high_fd(to_read), _high_fd(from_write)
        args = [
            self.binary,
            "--headless",
            "--no-sandbox",  # root in CI containers; the page is our own, served locally
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-device-scale-factor=1",
            f"--window-size={self.width},{self.height}",
            f"--user-data-dir={self.directory / 'profile'}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # A small trampoline moves our two pipe ends to the fds the protocol uses, then becomes the browser.
        trampoline = (
            "import os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); "
            "os.dup2(a, 3); os.dup2(b, 4); os.close(a); os.close(b); os.execv(sys.argv[3], sys.argv[3:])"
        )
        log = open(self._log_path, "wb")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", trampoline, str(child_in), str(child_out)] + args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(child_in, child_out),
                start_new_session=True,  # its own process group, stopped as one at close()
            )
        finally:
            log.close()
            os.close(child_in)
            os.close(child_out)
        self._to_browser, self._from_browser = to_write, from_read
        threading.Thread(target=self._read_loop, name="chromium-devtools", daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.call(domain, session=self.session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            session=self.session,
        )
        return self

    def close(self) -> None:
        """``Browser.close``, then the process group is stopped if it lingers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                self.call("Browser.close", timeout=5.0)
            except Exception:
                pass
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group this object started
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        self._closed = True
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.process = None

    def __enter__(self) -> "Chromium":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    # -- protocol ------------------------------------------------------------------

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._from_browser, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buffer += data
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw.decode("utf-8"))
                with self._cond:
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, *, session: Optional[str] = None,
             timeout: float = TIMEOUT) -> Dict[str, Any]:
        """Send one command and wait for its answer (its ``result``)."""
        with self._cond:
            self._next_id += 1
            number = self._next_id
        message: Dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode("utf-8") + b"\0"
        while data:
            written = os.write(self._to_browser, data)
            data = data[written:]
        deadline = time.monotonic() + timeout
        with self._cond:
            while number not in self._answers:
                left = deadline - time.monotonic()
                if self._closed:
                    raise BrowserError(f"{method}: the browser went away; its log:\n{self.log_tail()}")
                if left <= 0:
                    raise BrowserError(f"{method}: no answer within {timeout:g} s")
                self._cond.wait(left)
            answer = self._answers.pop(number)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    # -- the page ------------------------------------------------------------------

    def evaluate(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]!r} threw: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def navigate(self, url: str, timeout: float = TIMEOUT) -> None:
        """Load ``url`` and wait until the document has loaded."""
        answer = self.call("Page.navigate", {"url": url}, session=self.session, timeout=timeout)
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url}: {answer['errorText']}")
        self.wait_for(lambda: self.evaluate("document.readyState") == "complete", timeout, "the page to load")

    def reload(self, timeout: float = TIMEOUT) -> None:
        """Reload the page (a new document: the script's memory is gone) and wait until it has loaded."""
        self.call("Page.reload", {"ignoreCache": True}, session=self.session, timeout=timeout)
        self.wait_for(lambda: self.evaluate("document.readyState") == "complete", timeout, "the page to reload")

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``predicate`` (bounded), as :func:`speedproxy.testing.wait_until` does."""
        return wait_until(predicate, timeout, what)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the window) at ``path``."""
        metrics = self.call("Page.getLayoutMetrics", session=self.session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": max(self.width, int(size["width"])), "height": int(size["height"]), "scale": 1}
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
            session=self.session,
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def problems(self) -> List[str]:
        """Exceptions, console errors and refused loads (CSP) the page has reported so far."""
        found = []
        with self._cond:
            events = list(self.events)
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails', {})}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params.get('type')}: {params.get('args')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                # A 401 the page asked for is answered and handled; the browser still logs it.
                if entry.get("source") == "network" and "401" in entry.get("text", ""):
                    continue
                found.append(f"log: {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return found

    def requested_urls(self) -> List[str]:
        with self._cond:
            return [
                event["params"]["request"]["url"]
                for event in self.events
                if event.get("method") == "Network.requestWillBeSent"
            ]

    def clear_events(self) -> None:
        with self._cond:
            self.events.clear()
