"""Test doubles for speedproxy: a proxy process, backends and a raw client.

Everything here is blocking and thread based so that integration tests can
drive a real ``twistd speedproxy`` process from plain pytest tests without a
reactor in the test process:

* :func:`free_port` picks a free TCP port.
* :class:`ProxyProcess` writes a YAML config, runs ``twistd -n speedproxy``
  as a subprocess and waits for its readiness line.
* :class:`HTTPBackend` is a threaded HTTP/1.1 origin server that records every
  request and counts TCP connections; its answers are pluggable behaviours
  (:func:`echo`, :func:`fixed_body`, :func:`streaming`, :func:`stall`,
  :func:`close_mid_response`, :func:`delayed`, ...).
* :class:`RawBackend` hands each accepted socket to a test-supplied function,
  for malformed answers.
* :class:`RawClient` speaks HTTP/1.1 over one socket, byte by byte under the
  test's control (pipelining, smuggling attempts, partial heads).

No reactor is imported here, at module level or anywhere else.  Every wait is
bounded.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import yaml
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from speedproxy.config import parse_config
from speedproxy.proxy.client import ClientConnection
from speedproxy.proxy.core import ProxyCore
from speedproxy.proxy.server import ProxyServerFactory
from speedproxy.proxy.upstream import UpstreamConnection

__all__ = [
    "IN_MEMORY_CONFIG",
    "InMemoryBackend",
    "InMemoryClient",
    "InMemoryProxy",
    "ParsedResponse",
    "parse_responses",
    "BackendRequest",
    "BackendExchange",
    "HTTPBackend",
    "ProxyProcess",
    "ProxyReloadError",
    "ProxyStartError",
    "RawHandler",
    "RawBackend",
    "RawClient",
    "RawResponse",
    "Behaviour",
    "backend_entry",
    "check_config",
    "close_mid_response",
    "delayed",
    "deep_merge",
    "echo",
    "fixed_body",
    "free_port",
    "parse_cache_status",
    "path_body",
    "path_pattern",
    "pattern_chunks",
    "paced",
    "pattern_sha256",
    "proxy_config",
    "read_request_head",
    "raw_response",
    "stall",
    "streaming",
    "twistd_command",
    "upload_digest",
    "wait_until",
]

#: The line ``ProxyProcess`` waits for, as logged by the worker service.
READY_PATTERN = re.compile(r"speedproxy \S+ serving on (\S+):(\d+)")

#: Default bound of every wait in this module, in seconds.
DEFAULT_TIMEOUT = 10.0

_POLL = 0.02


# -- small helpers ---------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    :raises TimeoutError: when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(_POLL)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Return ``base`` updated with ``override``, merging nested mappings."""
    result: Dict[str, Any] = dict(base)
    for key, value in override.items():
        current = result.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            result[key] = deep_merge(current, value)
        else:
            result[key] = value
    return result


_PATTERN_BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern_chunks(size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """Yield ``size`` bytes of a deterministic pattern, ``chunk`` bytes at a time.

    Large bodies are generated on the fly and never held whole in memory.
    """
    block = _PATTERN_BLOCK
    if chunk != len(block):
        block = (block * (chunk // len(block) + 1))[:chunk]
    remaining = size
    while remaining > 0:
        piece = block if remaining >= len(block) else block[:remaining]
        remaining -= len(piece)
        yield piece


def pattern_sha256(size: int) -> str:
    """The hex sha256 of ``size`` bytes of :func:`pattern_chunks`."""
    digest = hashlib.sha256()
    for piece in pattern_chunks(size):
        digest.update(piece)
    return digest.hexdigest()


def backend_entry(server: Union["HTTPBackend", "RawBackend", Tuple[str, int]], id: str = "", **extra: Any) -> Dict[str, Any]:
    """A ``backends.<group>[]`` config entry for a test backend or ``(host, port)``."""
    if isinstance(server, tuple):
        host, port = server
        name = id or f"b{port}"
    else:
        host, port = server.host, server.port
        name = id or server.name
    entry: Dict[str, Any] = {"id": name, "host": host, "port": port}
    entry.update(extra)
    return entry


def proxy_config(
    *servers: Union["HTTPBackend", "RawBackend", Tuple[str, int]],
    load_balancer: str = "round_robin",
    **server_settings: Any,
) -> Dict[str, Any]:
    """A config mapping with one ``default`` upstream and route for ``servers``.

    Keyword arguments become ``server.*`` settings.
    """
    config: Dict[str, Any] = {
        "backends": {"default": [backend_entry(server, id=f"b{index}") for index, server in enumerate(servers)]},
        "routing": {"default": {"path": "/", "upstream": "default", "load_balancer": load_balancer}},
    }
    if server_settings:
        config["server"] = dict(server_settings)
    return config


# -- the proxy process -------------------------------------------------------------


class ProxyStartError(RuntimeError):
    """``twistd speedproxy`` exited or did not become ready in time."""


class ProxyReloadError(RuntimeError):
    """The proxy logged that it refused a reloaded config."""


#: Log fragments saying a SIGHUP reload took effect (master / single process).
RELOAD_APPLIED: Tuple[str, ...] = (" is live", "config reloaded")
#: Log fragments saying a SIGHUP reload was refused or failed.
RELOAD_REFUSED: Tuple[str, ...] = ("config reload refused", "config reload failed")


def _repo_root() -> Path:
    """The checkout holding ``twisted/plugins/speedproxy_plugin.py``."""
    return Path(__file__).resolve().parent.parent


def twistd_command() -> List[str]:
    """The argv prefix that runs this interpreter's ``twistd``."""
    candidate = Path(sys.executable).parent / "twistd"
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("twistd")
    if found and Path(found).parent == Path(sys.executable).parent:
        return [found]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def _subprocess_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    root = str(_repo_root())
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root if not existing else root + os.pathsep + existing
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def check_config(path: Union[str, Path], timeout: float = 30.0) -> "subprocess.CompletedProcess[str]":
    """Run ``twistd speedproxy --config PATH --check`` and return its result."""
    argv = twistd_command() + ["-n", "--pidfile=", "-l", "-", "speedproxy", "--config", str(path), "--check"]
    return subprocess.run(
        argv,
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
        cwd=str(Path(path).parent),
    )


class ProxyProcess:
    """A ``twistd -n speedproxy`` subprocess with a generated config.

    ``config`` is merged over test defaults (listen on 127.0.0.1 on a free
    port, the admin API on another free port, access log to the twistd log,
    one worker, a 2 s shutdown grace)::

        with ProxyProcess(proxy_config(backend)) as proxy:
            urllib.request.urlopen(proxy.url + "/")

    Output (stdout and stderr) goes to ``proxy.log_path``.
    """

    def __init__(
        self,
        config: Optional[Mapping[str, Any]] = None,
        *,
        directory: Optional[Union[str, Path]] = None,
        ready_timeout: float = 20.0,
        env: Optional[Mapping[str, str]] = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="speedproxy-test-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.admin_port = free_port(self.host)
        defaults: Dict[str, Any] = {
            "server": {
                "host": self.host,
                "port": self.port,
                "workers": 1,
                "access_log": "-",
                # Teardown must not wait out a 30 s drain of leftover connections.
                "shutdown_grace": "2s",
            },
            "admin": {"listen": f"{self.host}:{self.admin_port}"},
        }
        self.config: Dict[str, Any] = deep_merge(defaults, config or {})
        server = self.config.get("server", {})
        self.host = str(server.get("host", self.host))
        self.port = int(server.get("port", self.port))
        self.config_path = self.directory / "speedproxy.yaml"
        self.log_path = self.directory / "twistd.log"
        self.ready_timeout = ready_timeout
        self._env = dict(env or {})
        self._extra_args = list(extra_args)
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self._log_file: Optional[IO[bytes]] = None
        self.returncode: Optional[int] = None

    # -- config ------------------------------------------------------------

    def write_config(self, config: Optional[Mapping[str, Any]] = None) -> Path:
        """Write ``config`` (default: the current one) to :attr:`config_path`."""
        if config is not None:
            self.config = dict(config)
        text = yaml.safe_dump(self.config, sort_keys=False, default_flow_style=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config_path)
        return self.config_path

    def write_config_text(self, text: str) -> Path:
        """Replace the config file with raw ``text`` (for invalid configs)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config_path)
        return self.config_path

    def reload(self, config: Optional[Mapping[str, Any]] = None, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Write ``config`` merged over the current one, SIGHUP, wait for the outcome.

        Returns the log line saying the new config is live.

        :raises ProxyReloadError: if the proxy logged that it refused the file.
        """
        if config is not None:
            self.write_config(deep_merge(self.config, config))
        mark = self.log_mark()
        self.signal(signal.SIGHUP)
        line = self.wait_for_log(RELOAD_APPLIED + RELOAD_REFUSED, timeout, since=mark)
        if any(marker in line for marker in RELOAD_REFUSED):
            raise ProxyReloadError(f"reload refused: {line}\n{self.log_tail()}")
        return line

    # -- life cycle ----------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy listener."""
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> Tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the proxy is not started")
        return self.process.pid

    def start(self) -> "ProxyProcess":
        """Start twistd and wait (bounded) for the readiness line."""
        if self.process is not None:
            raise RuntimeError("already started")
        self.write_config()
        argv = twistd_command() + [
            "-n",
            "--pidfile=",
            "-l",
            "-",
            "speedproxy",
            "--config",
            str(self.config_path),
            *self._extra_args,
        ]
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_subprocess_env(self._env),
            cwd=str(self.directory),
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(timeout=5.0)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            match = READY_PATTERN.search(self.log_text())
            if match is not None:
                if int(match.group(2)) != self.port:
                    raise ProxyStartError(
                        f"proxy serves on port {match.group(2)}, expected {self.port}\n{self.log_tail()}"
                    )
                return
            code = self.process.poll() if self.process is not None else None
            if code is not None:
                self.returncode = code
                raise ProxyStartError(f"twistd speedproxy exited with {code} before it was ready:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise ProxyStartError(
                    f"twistd speedproxy not ready after {self.ready_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def running(self) -> bool:
        """Is the process still alive?"""
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process."""
        if self.process is None:
            raise RuntimeError("the proxy is not started")
        self.process.send_signal(sig)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait (bounded) for the process to exit on its own; return its code."""
        if self.process is None:
            raise RuntimeError("the proxy is not started")
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"proxy still running after {timeout}s:\n{self.log_tail()}") from None
        return self.returncode

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code."""
        process = self.process
        if process is None:
            return self.returncode
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):  # workers too: they would be orphaned
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                process.wait(10.0)
        self.returncode = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.returncode

    def cleanup(self) -> None:
        """Stop the process and remove the directory if this object made it."""
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "ProxyProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # -- the log -------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for failure messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_mark(self) -> int:
        """The current length of the log; pass as ``since=`` to see only new lines."""
        return len(self.log_text())

    def wait_for_log(
        self, substring: Union[str, Sequence[str]], timeout: float = DEFAULT_TIMEOUT, since: int = 0
    ) -> str:
        """Wait (bounded) for a log line containing ``substring``; return the line.

        ``substring`` may be a sequence: the first line containing any of them
        is returned.  Only text after character offset ``since`` (see
        :meth:`log_mark`) is searched.
        """
        wanted = (substring,) if isinstance(substring, str) else tuple(substring)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()[since:]
            found = [index for index in (text.find(item) for item in wanted) if index >= 0]
            if found:
                index = min(found)
                start = text.rfind("\n", 0, index) + 1
                end = text.find("\n", index)
                return text[start : end if end >= 0 else len(text)]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{substring!r} not logged within {timeout}s; log tail:\n{self.log_tail()}")
            time.sleep(_POLL)

    # -- process facts -------------------------------------------------------

    def pids(self) -> List[int]:
        """The process and all its live descendants (the master and its workers)."""
        from speedproxy.admin.procinfo import process_tree

        return list(process_tree(self.pid)) or [self.pid]

    def worker_pids(self) -> List[int]:
        """Descendant processes only (empty when the proxy serves in-process)."""
        return self.pids()[1:]

    def rss_bytes(self) -> int:
        """Total resident set size of :meth:`pids` (``VmRSS`` in ``/proc``)."""
        from speedproxy.admin.procinfo import rss_bytes

        return sum(rss_bytes(pid) or 0 for pid in self.pids())


# -- threaded HTTP backend ---------------------------------------------------------


@dataclass
class BackendRequest:
    """One request as a test backend received it."""

    method: str
    path: str
    version: str
    headers: List[Tuple[str, str]]
    body_sha256: str
    body_length: int
    chunked: bool
    #: Serial number of the TCP connection it came on (1, 2, ...).
    connection: int
    client_address: Tuple[str, int]

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_names(self) -> List[str]:
        """Lower-cased names of every header received."""
        return [key.lower() for key, _ in self.headers]


class BackendExchange:
    """What a behaviour gets: the recorded request and ways to answer it."""

    def __init__(self, backend: "HTTPBackend", handler: "_Handler", request: BackendRequest) -> None:
        self.backend = backend
        self.handler = handler
        self.request = request

    @property
    def stopping(self) -> threading.Event:
        """Set when the backend is being stopped: long waits must watch it."""
        return self.backend.stopping

    def write(self, data: bytes) -> None:
        """Write raw bytes to the connection."""
        self.handler.wfile.write(data)
        self.handler.wfile.flush()

    def send_head(
        self,
        status: int = 200,
        headers: Sequence[Tuple[str, str]] = (),
        reason: Optional[str] = None,
        body: bytes = b"",
    ) -> None:
        """Write a status line and headers (framing headers are the caller's).

        ``body`` bytes, if given, leave in the same write as the head.
        """
        phrase = reason if reason is not None else http.server.BaseHTTPRequestHandler.responses.get(status, ("OK",))[0]
        lines = [f"HTTP/1.1 {status} {phrase}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines.append("\r\n")
        self.write("".join(lines).encode("latin-1") + body)

    def send(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Sequence[Tuple[str, str]] = (),
        content_type: str = "text/plain",
    ) -> None:
        """Answer with a whole Content-Length framed response."""
        all_headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + list(headers)
        self.send_head(status, all_headers, body=b"" if self.request.method == "HEAD" else body)

    def send_json(self, value: Any, status: int = 200, headers: Sequence[Tuple[str, str]] = ()) -> None:
        self.send(status, json.dumps(value).encode("utf-8"), headers, "application/json")

    def close(self) -> None:
        """Close this connection after the behaviour returns (or abruptly now)."""
        self.handler.close_connection = True

    def abort(self) -> None:
        """Close the TCP connection at once (RST if possible)."""
        self.handler.close_connection = True
        sock = self.handler.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


#: A backend behaviour: answers one request.
Behaviour = Callable[[BackendExchange], None]


def echo(status: int = 200, headers: Sequence[Tuple[str, str]] = ()) -> Behaviour:
    """Answer with JSON describing the request (method, path, headers, body digest)."""

    def behaviour(exchange: BackendExchange) -> None:
        request = exchange.request
        exchange.send_json(
            {
                "method": request.method,
                "path": request.path,
                "headers": request.headers,
                "body_sha256": request.body_sha256,
                "body_length": request.body_length,
                "connection": request.connection,
                "backend": exchange.backend.name,
            },
            status,
            headers,
        )

    return behaviour


def fixed_body(size: int, chunked: bool = False, content_type: str = "application/octet-stream") -> Behaviour:
    """Answer with ``size`` bytes of :func:`pattern_chunks` (streamed, not held)."""

    def behaviour(exchange: BackendExchange) -> None:
        if chunked:
            exchange.send_head(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
        else:
            exchange.send_head(200, [("Content-Type", content_type), ("Content-Length", str(size))])
        if exchange.request.method == "HEAD":
            return
        for piece in pattern_chunks(size):
            if exchange.stopping.is_set():
                exchange.abort()
                return
            exchange.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            exchange.write(b"0\r\n\r\n")

    return behaviour


def streaming(pieces: Callable[[], Iterable[bytes]], content_type: str = "text/plain") -> Behaviour:
    """Answer chunked, one chunk per item of ``pieces()``, written as it comes.

    ``pieces`` is called per request; it may block between items (on a
    :class:`threading.Event` the test sets), which is how a test controls
    pacing.  Blocking must be bounded.
    """

    def behaviour(exchange: BackendExchange) -> None:
        exchange.send_head(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
        for piece in pieces():
            if piece:
                exchange.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        exchange.write(b"0\r\n\r\n")

    return behaviour


def paced(
    pieces: Sequence[bytes],
    gates: Sequence[Optional[threading.Event]],
    timeout: float = DEFAULT_TIMEOUT,
) -> Behaviour:
    """Answer chunked with ``pieces``; piece ``i`` waits for ``gates[i]`` first.

    A ``None`` gate sends at once.  Each wait is bounded by ``timeout``; the
    names of gates that timed out are appended to ``HTTPBackend.errors``.
    """

    def generate_for(exchange: BackendExchange) -> Callable[[], Iterable[bytes]]:
        def generate() -> Iterator[bytes]:
            for index, piece in enumerate(pieces):
                gate = gates[index] if index < len(gates) else None
                if gate is not None and not gate.wait(timeout):
                    exchange.backend.errors.append(f"gate {index} not set within {timeout}s")
                yield piece

        return generate

    def behaviour(exchange: BackendExchange) -> None:
        streaming(generate_for(exchange))(exchange)

    return behaviour


def upload_digest() -> Behaviour:
    """Answer with JSON ``{"sha256": ..., "length": ...}`` of the request body."""

    def behaviour(exchange: BackendExchange) -> None:
        request = exchange.request
        exchange.send_json({"sha256": request.body_sha256, "length": request.body_length, "chunked": request.chunked})

    return behaviour


def stall() -> Behaviour:
    """Read the request and never answer (until the backend stops)."""

    def behaviour(exchange: BackendExchange) -> None:
        exchange.backend._note_stalled()
        exchange.stopping.wait()
        exchange.close()

    return behaviour


def close_mid_response(total: int = 1 << 20, sent: int = 64 * 1024) -> Behaviour:
    """Promise ``total`` bytes with Content-Length, send ``sent``, then close."""

    def behaviour(exchange: BackendExchange) -> None:
        exchange.send_head(200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(total))])
        for piece in pattern_chunks(sent):
            exchange.write(piece)
        exchange.close()
        exchange.abort()

    return behaviour


def delayed(seconds: float, then: Optional[Behaviour] = None) -> Behaviour:
    """Wait ``seconds`` (cut short if the backend stops), then behave as ``then``."""
    inner = then if then is not None else echo()

    def behaviour(exchange: BackendExchange) -> None:
        exchange.stopping.wait(seconds)
        inner(exchange)

    return behaviour


def raw_response(data: bytes, close: bool = True) -> Behaviour:
    """Write ``data`` verbatim as the answer (malformed answers)."""

    def behaviour(exchange: BackendExchange) -> None:
        exchange.write(data)
        if close:
            exchange.close()

    return behaviour


class _Handler(http.server.BaseHTTPRequestHandler):
    """Request handler of :class:`HTTPBackend`; one instance per connection."""

    protocol_version = "HTTP/1.1"
    server: "_Server"
    #: Bounds every blocking read; a stalled peer never blocks a thread forever.
    timeout = 30

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.connection_number = self.server.backend._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.backend._connection_closed(self.connection, self.connection_number)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def handle_expect_100(self) -> bool:
        self.server.backend.expect_continue_seen += 1
        return super().handle_expect_100()

    def _read_body(self) -> Tuple[str, int, bool]:
        """Consume the request body streaming; return (sha256, length, chunked)."""
        digest = hashlib.sha256()
        length = 0
        encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if encoding == "chunked":
            while True:
                line = self.rfile.readline(4096)
                if not line.endswith(b"\r\n"):
                    raise ValueError("malformed chunk size line")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:  # trailers
                        trailer = self.rfile.readline(4096)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 256 * 1024))
                    if not data:
                        raise ValueError("body cut short")
                    digest.update(data)
                    remaining -= len(data)
                    length += len(data)
                if self.rfile.read(2) != b"\r\n":
                    raise ValueError("missing CRLF after chunk")
            return digest.hexdigest(), length, True
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            data = self.rfile.read(min(remaining, 256 * 1024))
            if not data:
                raise ValueError("body cut short")
            digest.update(data)
            remaining -= len(data)
            length += len(data)
        return digest.hexdigest(), length, False

    def _serve(self) -> None:
        backend = self.server.backend
        backend._record_head(self.command, self.path, self.connection_number)
        digest, length, chunked = self._read_body()
        request = BackendRequest(
            method=self.command,
            path=self.path,
            version=self.request_version,
            headers=list(self.headers.items()),
            body_sha256=digest,
            body_length=length,
            chunked=chunked,
            connection=self.connection_number,
            client_address=tuple(self.client_address[:2]),  # type: ignore[arg-type]
        )
        backend._record(request)
        behaviour = backend.behaviour_for(request.path)
        behaviour(BackendExchange(backend, self, request))
        if self.request_version != "HTTP/1.1" and (self.headers.get("Connection") or "").lower() != "keep-alive":
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    backend: "HTTPBackend"

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.backend.errors.append(repr(sys.exc_info()[1]))


class HTTPBackend:
    """A threaded HTTP/1.1 origin on 127.0.0.1 for integration tests.

    Every request is recorded (:attr:`requests`) after its body has been read
    streaming and hashed; distinct TCP connections are counted
    (:attr:`connections_opened`, :attr:`connections_closed`).  The answer is
    chosen by the longest matching path prefix among :meth:`route`-registered
    behaviours, else :attr:`behaviour` (default :func:`echo`).
    """

    def __init__(self, behaviour: Optional[Behaviour] = None, name: str = "backend", host: str = "127.0.0.1") -> None:
        self.name = name
        self.behaviour: Behaviour = behaviour if behaviour is not None else echo()
        self.routes: Dict[str, Behaviour] = {}
        self.host = host
        self.port = 0
        self.requests: List[BackendRequest] = []
        #: ``(method, path)`` of every request head, recorded before its body is read.
        self.heads: List[Tuple[str, str]] = []
        #: The connection serial number of each entry of :attr:`heads`.
        self.head_connections: List[int] = []
        #: Serial numbers of the connections that have closed.
        self.closed_connections: List[int] = []
        self.errors: List[str] = []
        self.connections_opened = 0
        self.connections_closed = 0
        self.expect_continue_seen = 0
        self.stalled = 0
        self.stopping = threading.Event()
        self._condition = threading.Condition()
        self._sockets: Dict[int, socket.socket] = {}
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- configuration -------------------------------------------------------

    def route(self, prefix: str, behaviour: Behaviour) -> "HTTPBackend":
        """Answer requests whose path starts with ``prefix`` with ``behaviour``."""
        self.routes[prefix] = behaviour
        return self

    def behaviour_for(self, path: str) -> Behaviour:
        best = ""
        for prefix in self.routes:
            if path.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return self.routes[best] if best else self.behaviour

    # -- life cycle ------------------------------------------------------------

    def start(self) -> "HTTPBackend":
        """Bind a free port and serve in a daemon thread."""
        server = _Server((self.host, 0), _Handler)
        server.backend = self
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.name}-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, wake stalled behaviours and close open connections."""
        self.stopping.set()
        server = self._server
        if server is None:
            return
        self._server = None
        server.shutdown()
        server.server_close()
        with self._condition:
            sockets = list(self._sockets.values())
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        wait_until(lambda: not self._sockets, timeout, "backend connections to close")

    def __enter__(self) -> "HTTPBackend":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- bookkeeping (called from handler threads) --------------------------

    def _connection_opened(self, sock: socket.socket) -> int:
        with self._condition:
            self.connections_opened += 1
            number = self.connections_opened
            self._sockets[id(sock)] = sock
            self._condition.notify_all()
            return number

    def _connection_closed(self, sock: socket.socket, number: int) -> None:
        with self._condition:
            self.connections_closed += 1
            self.closed_connections.append(number)
            self._sockets.pop(id(sock), None)
            self._condition.notify_all()

    def _record_head(self, method: str, path: str, connection: int) -> None:
        with self._condition:
            self.heads.append((method, path))
            self.head_connections.append(connection)
            self._condition.notify_all()

    def _record(self, request: BackendRequest) -> None:
        with self._condition:
            self.requests.append(request)
            self._condition.notify_all()

    def _note_stalled(self) -> None:
        with self._condition:
            self.stalled += 1
            self._condition.notify_all()

    # -- waiting -------------------------------------------------------------

    def wait_for(self, predicate: Callable[["HTTPBackend"], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition") -> Any:
        """Block (bounded) until ``predicate(self)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"backend {self.name}: timed out after {timeout}s waiting for {what}")
                self._condition.wait(min(left, 0.1))

    def wait_for_requests(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> List[BackendRequest]:
        """Wait until ``count`` requests were recorded; return them all."""
        self.wait_for(lambda b: len(b.requests) >= count, timeout, f"{count} requests")
        return list(self.requests)

    @property
    def open_connections(self) -> int:
        with self._condition:
            return len(self._sockets)

    def reset(self) -> None:
        """Forget recorded requests and counters (connections stay open)."""
        with self._condition:
            self.requests.clear()
            self.heads.clear()
            self.head_connections.clear()
            self.errors.clear()
            self.expect_continue_seen = 0
            self.stalled = 0

    @property
    def last_request(self) -> BackendRequest:
        with self._condition:
            if not self.requests:
                raise AssertionError(f"backend {self.name} received no request")
            return self.requests[-1]


# -- raw socket backend ------------------------------------------------------------

RawHandler = Callable[[socket.socket, threading.Event], None]


class RawBackend:
    """A TCP server on 127.0.0.1 handing each connection to ``handler(sock, stopping)``.

    The handler runs in its own thread and owns the socket (it is closed
    after the handler returns).  ``stopping`` is set on :meth:`stop`; handlers
    that wait must watch it.
    """

    def __init__(self, handler: RawHandler, name: str = "raw", host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.name = name
        self.host = host
        self.port = 0
        self.connections = 0
        self.received: List[bytes] = []
        self.errors: List[str] = []
        self.stopping = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._workers: List[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> "RawBackend":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self.stopping.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            worker = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._workers.append(worker)
            worker.start()

    def _run(self, sock: socket.socket) -> None:
        sock.settimeout(10.0)
        try:
            self.handler(sock, self.stopping)
        except Exception as error:  # recorded for the test to inspect
            self.errors.append(repr(error))
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for worker in self._workers:
            worker.join(timeout)

    def __enter__(self) -> "RawBackend":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_request_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """Read from ``sock`` up to and including the blank line ending a request head."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            break
        data += piece
        if len(data) > limit:
            break
    return data


# -- raw client ----------------------------------------------------------------------


@dataclass
class RawResponse:
    """A response read by :class:`RawClient`."""

    version: str
    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes = b""
    #: Interim (1xx) responses seen before this one, as status codes.
    interim: List[int] = field(default_factory=list)
    #: ``True`` when the body ended early because the connection closed.
    truncated: bool = False

    def header(self, name: str) -> Optional[str]:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_list(self, name: str) -> List[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class RawClient:
    """One TCP connection to the proxy and a strict, buffered response reader."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.closed_by_peer = False

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def settimeout(self, timeout: Optional[float]) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Sequence[Tuple[str, str]] = (),
        body: bytes = b"",
        host: Optional[str] = "test.local",
    ) -> None:
        """Send a simple request (Content-Length framed if it has a body)."""
        lines = [f"{method} {path} HTTP/1.1\r\n"]
        if host is not None:
            lines.append(f"Host: {host}\r\n")
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        self.send("".join(lines).encode("latin-1") + body)

    # -- reading --------------------------------------------------------------

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_by_peer = True
            return False
        self._buffer += data
        return True

    def _read_line(self) -> bytes:
        while True:
            index = self._buffer.find(b"\r\n")
            if index >= 0:
                line = self._buffer[:index]
                self._buffer = self._buffer[index + 2 :]
                return line
            if not self._fill():
                raise ConnectionError(f"connection closed while reading a line; got {self._buffer[:200]!r}")

    def _read_exact(self, size: int) -> Tuple[bytes, bool]:
        while len(self._buffer) < size:
            if not self._fill():
                data, self._buffer = self._buffer, b""
                return data, True
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data, False

    def read_head(self) -> RawResponse:
        """Read one status line and header block (may be a 1xx)."""
        line = self._read_line()
        version, _, rest = line.decode("latin-1").partition(" ")
        status, _, reason = rest.partition(" ")
        headers = []
        while True:
            header = self._read_line()
            if not header:
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers.append((name, value.strip()))
        return RawResponse(version, int(status), reason, headers)

    def _read_exactly_into(self, size: int, sink: Callable[[bytes], None]) -> bool:
        """Pass the next ``size`` bytes to ``sink``; False if the peer closed first."""
        remaining = size
        while remaining:
            if not self._buffer and not self._fill():
                return False
            take = self._buffer[:remaining]
            self._buffer = self._buffer[len(take) :]
            remaining -= len(take)
            sink(take)
        return True

    def read_response(self, head_only: bool = False, body_sink: Optional[Callable[[bytes], None]] = None) -> RawResponse:
        """Read one whole final response, skipping (and noting) interim ones.

        With ``body_sink`` the body is passed to it piece by piece instead of
        being kept in :attr:`RawResponse.body`.
        """
        interim = []
        while True:
            response = self.read_head()
            if 100 <= response.status < 200 and response.status != 101:
                interim.append(response.status)
                continue
            break
        response.interim = interim
        if head_only or response.status in (204, 304):
            return response
        pieces: List[bytes] = []
        sink = body_sink if body_sink is not None else pieces.append
        encoding = (response.header("Transfer-Encoding") or "").lower()
        length = response.header("Content-Length")
        if encoding == "chunked":
            while True:
                size_line = self._read_line()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self._read_line():
                        pass
                    break
                if not self._read_exactly_into(size, sink):
                    response.truncated = True
                    break
                if self._read_line() != b"":
                    raise ValueError("chunk data longer than its size")
        elif length is not None:
            if not self._read_exactly_into(int(length), sink):
                response.truncated = True
        else:
            while True:
                if self._buffer:
                    sink(self._buffer)
                    self._buffer = b""
                if not self._fill():
                    break
        if body_sink is None:
            response.body = b"".join(pieces)
        return response

    def read_chunk(self) -> bytes:
        """Read the next chunk of a chunked body (after :meth:`read_head`); ``b""`` at its end."""
        size = int(self._read_line().split(b";")[0], 16)
        if size == 0:
            while self._read_line():
                pass
            return b""
        data, truncated = self._read_exact(size)
        if truncated:
            raise ConnectionError("connection closed inside a chunk")
        if self._read_line() != b"":
            raise ValueError("chunk data longer than its size")
        return data

    def recv_some(self, limit: int = 256 * 1024) -> bytes:
        """Buffered bytes if any, else one ``recv`` (``b""`` when the peer closed)."""
        if self._buffer:
            data, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return data
        try:
            data = self.sock.recv(limit)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_by_peer = True
        return data

    def read_available(self, timeout: float = 0.2) -> bytes:
        """Whatever arrives within ``timeout`` (buffered bytes first)."""
        previous = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    if not self._fill():
                        break
                except socket.timeout:
                    break
        finally:
            self.sock.settimeout(previous)
        data, self._buffer = self._buffer, b""
        return data

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Read until the peer closes (bounded); return the bytes received meanwhile.

        :raises TimeoutError: if the connection is still open after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        previous = self.sock.gettimeout()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"connection still open after {timeout}s")
                self.sock.settimeout(left)
                try:
                    if not self._fill():
                        break
                except socket.timeout:
                    raise TimeoutError(f"connection still open after {timeout}s") from None
        finally:
            self.sock.settimeout(previous)
        data, self._buffer = self._buffer, b""
        return data


# -- in memory: the data path on a MemoryReactorClock ----------------------------
#
# An :class:`InMemoryProxy` runs a :class:`~speedproxy.proxy.core.ProxyCore`
# on a ``MemoryReactorClock``; clients and backends are ``StringTransport``s
# that the tests drive by hand.  For fast unit tests of protocol and state
# logic; the end-to-end tests use :class:`ProxyProcess` and real sockets.

IN_MEMORY_CONFIG = """\
server:
  max_header_size: 4KiB
  upstream_read_timeout: 60s
  upstream_connect_timeout: 5s
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""


@dataclass
class ParsedResponse:
    status: int
    reason: bytes
    headers: List[Tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: bytes) -> List[bytes]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Dict[str, str]:
        return json.loads(self.body)


def parse_responses(data: bytes, head_request: bool = False, until_close: bool = False) -> List[ParsedResponse]:
    """Split the bytes a client received into responses (a test-side parser)."""
    responses: List[ParsedResponse] = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, "incomplete response head: %r" % head
        lines = head.split(b"\r\n")
        _, status, reason = (lines[0].split(b" ", 2) + [b""])[:3]
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        response = ParsedResponse(int(status), reason, headers, b"")  # type: ignore[arg-type]
        if 100 <= response.status < 200:
            responses.append(response)
            continue
        te = response.header(b"transfer-encoding")
        cl = response.header(b"content-length")
        if head_request or response.status in (204, 304):
            pass
        elif te is not None:
            assert te == b"chunked"
            response.chunked = True
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    assert data.startswith(b"\r\n"), data[:20]
                    data = data[2:]
                    break
                body += data[:size]
                assert data[size : size + 2] == b"\r\n"
                data = data[size + 2 :]
            response.body = body
        elif cl is not None:
            response.body, data = data[: int(cl)], data[int(cl) :]
            assert len(response.body) == int(cl)
        else:
            assert until_close, "response without length: %r" % head
            response.body, data = data, b""
        responses.append(response)
    return responses


class _InMemoryPeer:
    """One end the tests drive: bytes in with :meth:`send`, out in the transport."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        return self.transport.value()

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data


class InMemoryBackend(_InMemoryPeer):
    """One accepted upstream connection as seen by the test."""

    def __init__(self, protocol: UpstreamConnection, transport: StringTransport, host: str, port: int) -> None:
        super().__init__(protocol, transport)
        self.host = host
        self.port = port

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def request_head(self) -> Tuple[bytes, List[Tuple[bytes, bytes]]]:
        head = self.received().split(b"\r\n\r\n", 1)[0]
        lines = head.split(b"\r\n")
        return lines[0], [tuple(line.split(b": ", 1)) for line in lines[1:]]  # type: ignore[misc]


class InMemoryClient(_InMemoryPeer):
    """One client connection to the proxy."""

    protocol: ClientConnection

    def responses(self, **kwargs: bool) -> List[ParsedResponse]:
        return parse_responses(self.transport.value(), **kwargs)

    def response(self, **kwargs: bool) -> ParsedResponse:
        responses = self.responses(**kwargs)
        assert len(responses) == 1, responses
        return responses[0]

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class InMemoryProxy:
    def __init__(self, config_text: str = IN_MEMORY_CONFIG) -> None:
        self.reactor = MemoryReactorClock()
        self.config = parse_config(textwrap.dedent(config_text))
        self.core = ProxyCore(self.reactor, self.config)
        self.factory = ProxyServerFactory(self.core)
        self._next_port = 50000
        self._accepted = 0

    def client(self, host: str = "127.0.0.1") -> InMemoryClient:
        self._next_port += 1
        address = IPv4Address("TCP", host, self._next_port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=address, lenient=True
        )
        protocol.makeConnection(transport)
        return InMemoryClient(protocol, transport)

    @property
    def connects(self) -> List[Tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def pending_connects(self) -> int:
        return len(self.reactor.tcpClients) - self._accepted

    def accept(self) -> InMemoryBackend:
        """Complete the oldest connectTCP not yet answered."""
        host, port, factory, timeout, _ = self.reactor.tcpClients[self._accepted]
        self._accepted += 1
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address, lenient=True)
        protocol.makeConnection(transport)
        return InMemoryBackend(protocol, transport, host, port)

    def refuse(self, reason: Optional[Exception] = None) -> None:
        """Fail the oldest connectTCP not yet answered."""
        _, _, factory, _, _ = self.reactor.tcpClients[self._accepted]
        self._accepted += 1
        factory.clientConnectionFailed(None, Failure(reason or ConnectionRefusedError()))

    def backend(self, backend_id: str):
        for group in self.core.groups.values():
            found = group.get(backend_id)
            if found is not None:
                return found
        raise KeyError(backend_id)


# -- HTTP cache helpers ----------------------------------------------------------------


def path_pattern(path: str, size: int) -> bytes:
    """``size`` bytes that depend on ``path`` and on each byte's position.

    Each 32-byte block is ``sha256(path + block number)``, so a body that is
    cut, shifted or mixed with another path's is told apart from the right
    one.  For cache tests: the origin answers a path with its pattern and the
    client checks it got exactly that.
    """
    prefix = path.encode("utf-8") + b"\0"
    blocks = (size + 31) // 32
    return b"".join(hashlib.sha256(prefix + b"%d" % index).digest() for index in range(blocks))[:size]


def path_body(size: int, headers: Sequence[Tuple[str, str]] = (), chunked: bool = False) -> Behaviour:
    """Answer with :func:`path_pattern` of the request path (query included) and ``headers``."""

    def behaviour(exchange: BackendExchange) -> None:
        body = path_pattern(exchange.request.path, size)
        if not chunked:
            exchange.send(200, body, headers, "application/octet-stream")
            return
        exchange.send_head(
            200, [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")] + list(headers)
        )
        if exchange.request.method == "HEAD":
            return
        for start in range(0, size, 64 * 1024):
            piece = body[start : start + 64 * 1024]
            exchange.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        exchange.write(b"0\r\n\r\n")

    return behaviour


def _split_outside_quotes(text: str, separator: str) -> List[str]:
    parts: List[str] = []
    current: List[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _sf_bare_item(text: str) -> Any:
    text = text.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text == "?1":
        return True
    if text == "?0":
        return False
    return text


def parse_cache_status(value: str) -> List[Tuple[str, Dict[str, Any]]]:
    """Parse a ``Cache-Status`` field value (RFC 9211) into ``[(cache, params)]``.

    Members come in field order (the cache nearest the client last); a
    parameter without a value is ``True``.  E.g.
    ``speedproxy; fwd=miss; fwd-status=200; stored`` gives
    ``[("speedproxy", {"fwd": "miss", "fwd-status": 200, "stored": True})]``.
    """
    members: List[Tuple[str, Dict[str, Any]]] = []
    for member in _split_outside_quotes(value, ","):
        if not member.strip():
            continue
        parts = _split_outside_quotes(member, ";")
        params: Dict[str, Any] = {}
        for part in parts[1:]:
            name, equals, item = part.strip().partition("=")
            params[name.strip()] = _sf_bare_item(item) if equals else True
        members.append((str(_sf_bare_item(parts[0])), params))
    return members
