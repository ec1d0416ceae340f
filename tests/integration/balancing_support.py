"""Helpers for the balancing, health and WebSocket/SSE end-to-end tests.

Imported by ``test_e2e_balancing.py``, ``test_e2e_health.py`` and
``test_e2e_websocket_sse.py``; blocking and thread based like
:mod:`speedproxy.testing`, every wait bounded.

Run as a script it is also the WebSocket side of the tests, with a reactor
of its own (the test process has none)::

    python balancing_support.py ws-server EVENTS_FILE
        autobahn echo server on 127.0.0.1, prints ``port N`` once listening;
        appends one JSON line per open/close to EVENTS_FILE.
    python balancing_support.py ws-client URL SCENARIO [SCENARIO...]
        autobahn client; runs the scenarios one connection each and prints
        one JSON object with their outcomes.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

# -- plain HTTP helpers (test process side) -------------------------------------


def admin_json(proxy: Any, path: str, timeout: float = 5.0) -> Any:
    """GET ``path`` on the proxy's admin API and decode the JSON answer."""
    url = f"http://127.0.0.1:{proxy.admin_port}{path}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def backend_stats(proxy: Any) -> Dict[str, Dict[str, Any]]:
    """``/stats`` backend rows keyed by backend id."""
    return {row["id"]: row for row in admin_json(proxy, "/stats")["backends"]}


def attempts(proxy: Any, backend_id: str) -> int:
    """How many requests the proxy started towards ``backend_id`` (all workers)."""
    return int(backend_stats(proxy)[backend_id]["requests"])


def proxied(backend: Any) -> List[Any]:
    """Requests a test backend received from the data path (health probes left out)."""
    return [request for request in list(backend.requests) if not request.path.startswith("/health")]


def fixed_port_backend(port: int, behaviour: Any = None, name: str = "backend") -> Any:
    """An :class:`~speedproxy.testing.HTTPBackend` bound to ``port`` (a restart on the same port)."""
    from speedproxy.testing import http_backend  # its private server classes: the same handler as HTTPBackend

    backend = http_backend.HTTPBackend(behaviour, name=name)
    deadline = time.monotonic() + 5.0
    while True:
        try:
            server = http_backend._Server((backend.host, port), http_backend._Handler)
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    server.backend = backend
    backend._server = server
    backend.port = port
    backend._thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{name}-{port}", daemon=True
    )
    backend._thread.start()
    return backend


@dataclass
class Result:
    """One request of a :class:`Load` or :func:`fire`."""

    started: float
    finished: float
    status: int = 0
    backend: str = ""
    error: str = ""
    body: bytes = b""
    index: int = -1

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


Request = Tuple[str, str, Sequence[Tuple[str, str]], bytes]


def _one(client: Any, method: str, path: str, headers: Sequence[Tuple[str, str]], body: bytes) -> Tuple[int, str, bytes, bool]:
    client.request(method, path, headers=headers, body=body)
    response = client.read_response()
    backend = ""
    if response.status == 200:
        try:
            backend = response.json()["backend"]
        except (ValueError, KeyError, TypeError):
            backend = ""
    closing = (response.header("Connection") or "").lower() == "close" or response.truncated
    return response.status, backend, response.body, closing


def fire(address: Tuple[str, int], requests: Sequence[Request], threads: int = 8, timeout: float = 10.0) -> List[Result]:
    """Send every request once over ``threads`` keep-alive connections; results in order."""
    from speedproxy.testing import RawClient

    results: List[Optional[Result]] = [None] * len(requests)
    lock = threading.Lock()
    position = [0]

    def run() -> None:
        client = None
        try:
            while True:
                with lock:
                    index = position[0]
                    if index >= len(requests):
                        return
                    position[0] += 1
                method, path, headers, body = requests[index]
                started = time.monotonic()
                try:
                    if client is None:
                        client = RawClient(*address, timeout=timeout)
                    status, backend, data, closing = _one(client, method, path, headers, body)
                    results[index] = Result(started, time.monotonic(), status, backend, body=data[:300], index=index)
                    if closing:
                        client.close()
                        client = None
                except (OSError, ConnectionError, ValueError) as error:
                    results[index] = Result(started, time.monotonic(), error=repr(error), index=index)
                    if client is not None:
                        client.close()
                        client = None
        finally:
            if client is not None:
                client.close()

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60.0
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    assert not any(worker.is_alive() for worker in workers), "request threads did not finish"
    return [result for result in results if result is not None]


class Load:
    """``threads`` keep-alive clients sending GETs until :meth:`stop`.

    ``pace`` seconds between requests of one thread (pacing, not
    synchronisation); every thread stops after ``max_seconds`` anyway.
    """

    def __init__(self, address: Tuple[str, int], threads: int = 4, path: str = "/load", pace: float = 0.01,
                 max_seconds: float = 20.0, timeout: float = 5.0) -> None:
        self.address = address
        self.threads = threads
        self.path = path
        self.pace = pace
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.results: List[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: List[threading.Thread] = []

    def start(self) -> "Load":
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            self._workers.append(worker)
            worker.start()
        return self

    def _run(self) -> None:
        from speedproxy.testing import RawClient

        deadline = time.monotonic() + self.max_seconds
        client = None
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    if client is None:
                        client = RawClient(*self.address, timeout=self.timeout)
                    status, backend, body, closing = _one(client, "GET", self.path, (), b"")
                    result = Result(started, time.monotonic(), status, backend, body=body[:300])
                    if closing:
                        client.close()
                        client = None
                except (OSError, ConnectionError, ValueError) as error:
                    result = Result(started, time.monotonic(), error=repr(error))
                    if client is not None:
                        client.close()
                        client = None
                with self._lock:
                    self.results.append(result)
                self._stop.wait(self.pace)
        finally:
            if client is not None:
                client.close()

    def snapshot(self) -> List[Result]:
        with self._lock:
            return list(self.results)

    def wait_count(self, count: int, timeout: float = 10.0) -> None:
        from speedproxy.testing import wait_until

        wait_until(lambda: len(self.snapshot()) >= count, timeout, f"{count} load requests")

    def stop(self, timeout: float = 10.0) -> List[Result]:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        assert not any(worker.is_alive() for worker in self._workers), "load threads did not stop"
        return self.snapshot()


# -- SSE -----------------------------------------------------------------------------


@dataclass
class SSEOrigin:
    """Behaviour of an SSE backend: ``count`` events ``gap`` seconds apart.

    Records when each event left (``sent``) and when the stream ended.
    """

    count: int = 5
    gap: float = 0.5
    sent: List[float] = field(default_factory=list)
    finished: List[float] = field(default_factory=list)

    def __call__(self, exchange: Any) -> None:
        exchange.send_head(
            200,
            [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked")],
        )
        for index in range(self.count):
            if index and exchange.stopping.wait(self.gap):
                exchange.abort()
                return
            event = b"id: %d\ndata: event %d\n\n" % (index, index)
            exchange.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.sent.append(time.monotonic())
        exchange.write(b"0\r\n\r\n")
        self.finished.append(time.monotonic())


def read_events(client: Any, count: int) -> List[Tuple[float, bytes]]:
    """Read a chunked event stream (after its head); ``(arrival time, event)`` per event."""
    events: List[Tuple[float, bytes]] = []
    buffer = b""
    while len(events) < count:
        chunk = client.read_chunk()
        if not chunk:
            break
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            events.append((time.monotonic(), event))
    return events


# -- the WebSocket subprocesses (test process side) ------------------------------------

SCRIPT = str(Path(__file__).resolve())


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WebSocketServer:
    """The autobahn echo server subprocess."""

    def __init__(self, directory: Path) -> None:
        self.events_path = directory / "ws-events.jsonl"
        self.log_path = directory / "ws-server.log"
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self.port = 0

    def start(self, timeout: float = 15.0) -> "WebSocketServer":
        self.events_path.write_text("")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, SCRIPT, "ws-server", str(self.events_path)],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, env=_env(),
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"ws server did not start: {line!r} {self.log_path.read_text()}")
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                piece = os.read(self.process.stdout.fileno(), 1)
                if not piece:
                    continue
                line += piece
        self.port = int(line.split()[1])
        return self

    def events(self) -> List[Dict[str, Any]]:
        text = self.events_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_event(self, kind: str, path: str, timeout: float = 5.0) -> Dict[str, Any]:
        from speedproxy.testing import wait_until

        def found() -> Optional[Dict[str, Any]]:
            for event in self.events():
                if event["event"] == kind and event["path"] == path:
                    return event
            return None

        return wait_until(found, timeout, f"ws server event {kind} on {path}")

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if getattr(self, "_log", None) is not None:
            self._log.close()


def run_ws_client(url: str, scenarios: Sequence[str], timeout: float = 30.0) -> Dict[str, Any]:
    """Run the autobahn client subprocess; return its JSON report."""
    done = subprocess.run(
        [sys.executable, SCRIPT, "ws-client", url, *scenarios],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_env(), timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"ws client exited {done.returncode}: {done.stderr.decode()[-3000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


# -- the WebSocket subprocesses (their own reactor) --------------------------------------

#: Binary payload of the echo scenario and the frame size it is cut into.
ECHO_SIZE = 1024 * 1024
FRAME_SIZE = 64 * 1024
TEXT = "héllo through the proxy ✓"


def _ws_server(events_path: str) -> None:  # pragma: no cover - runs in a subprocess
    import txaio

    txaio.use_twisted()
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    events = open(events_path, "a", encoding="utf-8")

    def record(**event: Any) -> None:
        event["t"] = time.monotonic()
        events.write(json.dumps(event) + "\n")
        events.flush()

    class Echo(WebSocketServerProtocol):
        path = "?"

        def onConnect(self, request: Any) -> None:
            self.path = request.path
            record(event="open", path=self.path, headers={k: v for k, v in request.headers.items()})

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if not isBinary and payload == b"close-me":
                self.sendClose(4000, "server bye")
            elif not isBinary and payload == b"drop-me":
                self.transport.loseConnection()
            else:
                self.sendMessage(payload, isBinary)

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            record(event="closed", path=self.path, wasClean=wasClean, code=code, reason=reason)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    factory.setProtocolOptions(autoFragmentSize=FRAME_SIZE)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    sys.stdout.write("port %d\n" % port.getHost().port)
    sys.stdout.flush()
    reactor.run()


def _ws_client(url: str, scenarios: Sequence[str]) -> None:  # pragma: no cover - runs in a subprocess
    import hashlib

    import txaio

    txaio.use_twisted()
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, inlineCallbacks

    report: Dict[str, Any] = {}

    class Client(WebSocketClientProtocol):
        scenario = ""
        done: Deferred

        def onOpen(self) -> None:
            self.outcome: Dict[str, Any] = {"opened": True}
            self.binary = hashlib.sha256()
            self.binary_size = 0
            self.binary_messages = 0
            self.frames_sent = 0
            self.texts: List[str] = []
            self.close_started = 0.0
            scenario = self.scenario
            if scenario == "echo":
                self.payload = os.urandom(ECHO_SIZE)
                self.sendMessage(self.payload, isBinary=True)
                self.sendMessage(TEXT.encode("utf-8"), isBinary=False)
            elif scenario == "server-close":
                self.close_started = time.monotonic()
                self.sendMessage(b"close-me", isBinary=False)
            elif scenario == "server-drop":
                self.close_started = time.monotonic()
                self.sendMessage(b"drop-me", isBinary=False)
            elif scenario == "client-drop":
                self.close_started = time.monotonic()
                self.transport.abortConnection()

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if isBinary:
                self.binary.update(payload)
                self.binary_size += len(payload)
                self.binary_messages += 1
            else:
                self.texts.append(payload.decode("utf-8"))
            if self.scenario == "echo" and self.binary_size >= ECHO_SIZE and self.texts:
                self.outcome.update(
                    echo_match=self.binary.hexdigest() == hashlib.sha256(self.payload).hexdigest(),
                    echo_size=self.binary_size,
                    binary_messages=self.binary_messages,
                    texts=self.texts,
                )
                self.close_started = time.monotonic()
                self.sendClose(1000, "client bye")

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            self.outcome.setdefault("opened", False)
            self.outcome.update(
                wasClean=wasClean, code=code, reason=reason,
                close_seconds=time.monotonic() - self.close_started if self.close_started else None,
            )
            report[self.scenario] = self.outcome
            if not self.done.called:
                self.done.callback(None)

    @inlineCallbacks
    def run() -> Any:
        try:
            for scenario in scenarios:
                factory = WebSocketClientFactory(f"{url}/{scenario}")
                factory.setProtocolOptions(autoFragmentSize=FRAME_SIZE)
                done: Deferred = Deferred()

                class Bound(Client):
                    pass

                Bound.scenario = scenario
                Bound.done = done
                Bound.outcome = {}
                factory.protocol = Bound
                connectWS(factory, timeout=5)
                timer = reactor.callLater(10.0, lambda d=done, s=scenario: d.called or (
                    report.__setitem__(s, {"timeout": True}), d.callback(None)))
                yield done
                if timer.active():
                    timer.cancel()
        finally:
            sys.stdout.write(json.dumps(report) + "\n")
            sys.stdout.flush()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1] == "ws-server":
        _ws_server(sys.argv[2])
    elif sys.argv[1] == "ws-client":
        _ws_client(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
