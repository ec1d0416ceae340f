"""Helpers shared by tools/test-package.py and tools/test-pypy.py.

Standard library only: these scripts run with the system's python3 on a
clean machine, before (and apart from) any virtual environment.
"""

from __future__ import annotations

import http.server
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence


class Failed(Exception):
    """A check failed; the message says what was expected and what was seen."""


class Steps:
    """Runs named steps, prints ``== name`` / ``ok (12.3s)`` / ``FAILED``, keeps timings."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.timings: List[tuple] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, action: Callable[[], Any]) -> Any:
        if self.left() <= 0:
            raise Failed(f"out of time before step '{name}'")
        print(f"\n== {name}", flush=True)
        started = time.monotonic()
        try:
            result = action()
        except Exception as error:  # noqa: BLE001 - every failure is reported the same way
            elapsed = time.monotonic() - started
            self.timings.append((name, elapsed, False))
            if not isinstance(error, Failed):
                traceback.print_exc()
                error = Failed(f"{type(error).__name__}: {error}")
            print(f"FAILED: {name}: {error}", flush=True)
            raise error
        elapsed = time.monotonic() - started
        self.timings.append((name, elapsed, True))
        print(f"ok: {name} ({elapsed:.1f}s)", flush=True)
        return result

    def summary(self) -> None:
        print("\n== timings", flush=True)
        for name, elapsed, ok in self.timings:
            print(f"  {elapsed:7.1f}s  {'ok    ' if ok else 'FAILED'}  {name}")


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    what: str = "",
    check: bool = True,
    log: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[str] = None,
    quiet: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess:
    """Run *argv*, bounded by *timeout*; output to *log* (a file) or captured.

    With *check*, a non-zero exit raises :class:`Failed` with the command,
    the exit code and the last lines of its output.
    """
    label = what or " ".join(shlex.quote(part) for part in argv)
    if not quiet:
        print(f"$ {label}", flush=True)
    handle = open(log, "ab") if log else None
    try:
        completed = subprocess.run(
            list(argv),
            stdout=handle or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            env=env,
            cwd=cwd,
            **kwargs,
        )
    except subprocess.TimeoutExpired:
        raise Failed(f"{label}: still running after {timeout:.0f}s" + (f" (output: {log})" if log else "")) from None
    finally:
        if handle:
            handle.close()
    output = completed.stdout.decode("utf-8", "replace") if completed.stdout is not None else ""
    completed.text = output  # type: ignore[attr-defined]
    if check and completed.returncode != 0:
        tail = tail_of(log) if log else "\n".join(output.splitlines()[-40:])
        raise Failed(f"{label}: exit {completed.returncode}\n--- last output ---\n{tail}\n---")
    return completed


def tail_of(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError as error:
        return f"({path}: {error})"
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll *check* until it returns something truthy; :class:`Failed` after *timeout*."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as error:  # noqa: BLE001 - reported below
            last = f"{type(error).__name__}: {error}"
        if time.monotonic() >= deadline:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class Origin:
    """A local origin on 127.0.0.1: every GET answers 200 with a fixed body."""

    BODY = b"hello from the origin\n"

    def __init__(self) -> None:
        body = self.BODY
        self.requests: List[str] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                seen.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Origin":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_get(url: str, timeout: float = 5.0) -> tuple:
    """``(status, headers, body)`` of a GET (any status, no exception for 4xx/5xx)."""
    request = urllib.request.Request(url, headers={"User-Agent": "speedproxy-ci"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(url: str, timeout: float = 5.0) -> Any:
    status, _, body = http_get(url, timeout)
    if status != 200:
        raise Failed(f"GET {url}: status {status}: {body[:200]!r}")
    return json.loads(body)


def proxied_request(port: int, path: str = "/ci-check") -> None:
    """One request through the proxy on *port*: the origin's answer, marked by speedproxy."""
    status, headers, body = http_get(f"http://127.0.0.1:{port}{path}")
    if status != 200 or body != Origin.BODY:
        raise Failed(f"GET {path} through the proxy: status {status}, body {body[:200]!r}")
    if "X-Speedproxy" not in headers:
        raise Failed(f"GET {path}: no X-Speedproxy header in {headers}")
    print(f"proxied GET {path}: 200, X-Speedproxy: {headers['X-Speedproxy']}")


def allowed_cpus(pid: int) -> List[int]:
    """``Cpus_allowed_list`` of *pid* from /proc, expanded (``0-2,5``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("Cpus_allowed_list:"))
    cpus: List[int] = []
    for part in line.split(":", 1)[1].strip().split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def proc_status(pid: int) -> Dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def apt_install(packages: Sequence[str], timeout: float, log: str) -> None:
    """``apt-get install`` (after one ``apt-get update``) of Debian packages."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], timeout=timeout, log=log, env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], timeout=timeout, log=log, env=env)


def require_root() -> None:
    if os.geteuid() != 0:
        print(f"{sys.argv[0]}: must run as root (it installs Debian packages)", file=sys.stderr)
        sys.exit(2)
