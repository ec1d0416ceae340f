"""Helpers for the multi-worker end-to-end tests (test_e2e_workers.py).

Blocking and thread based like :mod:`speedproxy.testing`; every wait is
bounded.  Process facts come from ``/proc`` (Linux only).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from prometheus_client.parser import text_string_to_metric_families

from speedproxy.testing import ProxyProcess, RawClient, wait_until

# -- admin API -----------------------------------------------------------------


def admin_get(proxy: ProxyProcess, path: str, timeout: float = 5.0) -> bytes:
    url = f"http://127.0.0.1:{proxy.admin_port}{path}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200, (path, response.status)
        return response.read()


def stats(proxy: ProxyProcess) -> Dict[str, Any]:
    return json.loads(admin_get(proxy, "/stats"))


def metrics(proxy: ProxyProcess) -> Dict[str, List[Tuple[str, Dict[str, str], float]]]:
    """``/metrics`` parsed with prometheus_client: family name → samples."""
    text = admin_get(proxy, "/metrics").decode("utf-8")
    families: Dict[str, List[Tuple[str, Dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [(s.name, dict(s.labels), s.value) for s in family.samples]
    return families


def sample_sum(families: Dict[str, Any], family: str, sample_name: Optional[str] = None) -> float:
    """Sum of the samples of ``family`` (only those named ``sample_name`` if given)."""
    samples = families.get(family)
    assert samples is not None, f"no metric family {family!r} in {sorted(families)}"
    return sum(value for name, _, value in samples if sample_name is None or name == sample_name)


def ready_workers(proxy: ProxyProcess) -> Dict[int, int]:
    """``{slot: pid}`` of the workers /stats reports as ready."""
    return {w["slot"]: w["pid"] for w in stats(proxy)["workers"] if w["ready"] and w["pid"]}


def wait_workers(proxy: ProxyProcess, count: int, timeout: float = 5.0) -> Dict[int, int]:
    """Wait (bounded) until exactly ``count`` workers are listed and ready."""

    def check() -> Optional[Dict[int, int]]:
        listed = stats(proxy)["workers"]
        if len(listed) == count and all(w["ready"] for w in listed):
            return {w["slot"]: w["pid"] for w in listed}
        return None

    return wait_until(check, timeout, f"{count} ready workers")


def reload(proxy: ProxyProcess, timeout: float = 5.0) -> Tuple[str, float]:
    """SIGHUP the master; wait for the outcome line; return it and when it was seen.

    The config file must already be written.
    """
    mark = proxy.log_mark()
    proxy.signal(signal.SIGHUP)

    def outcome() -> Optional[str]:
        text = proxy.log_text()[mark:]
        for needle in ("is live", "config reload refused", "config reload failed"):
            index = text.find(needle)
            if index >= 0:
                start = text.rfind("\n", 0, index) + 1
                end = text.find("\n", index)
                return text[start : end if end >= 0 else len(text)]
        return None

    line = wait_until(outcome, timeout, "the reload outcome in the log")
    return line, time.monotonic()


# -- processes and sockets (/proc) ------------------------------------------------


def proc_state(pid: int) -> Optional[Tuple[str, int]]:
    """``(state, ppid)`` of ``pid`` from /proc, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    state = proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def socket_inodes(pid: int) -> Set[int]:
    """Inodes of the sockets open in ``pid``."""
    inodes = set()
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, ProcessLookupError):
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(directory, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


@dataclass
class TcpEntry:
    local_port: int
    remote_port: int
    state: str
    inode: int


def tcp_table() -> List[TcpEntry]:
    entries = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, encoding="ascii") as handle:
                lines = handle.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            entries.append(TcpEntry(int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode))
    return entries


TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


def listener_inodes(port: int) -> Set[int]:
    return {e.inode for e in tcp_table() if e.local_port == port and e.state == TCP_LISTEN and e.inode}


def accepted_owners(port: int, pids: Iterable[int]) -> Dict[int, Optional[int]]:
    """For each established server-side socket on ``port``: client port → owning pid.

    ``None`` when none of ``pids`` holds it.
    """
    owners_by_inode: Dict[int, int] = {}
    for pid in pids:
        for inode in socket_inodes(pid):
            owners_by_inode[inode] = pid
    return {
        e.remote_port: owners_by_inode.get(e.inode)
        for e in tcp_table()
        if e.local_port == port and e.state == TCP_ESTABLISHED
    }


# -- load --------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float
    finished: float
    connection: int
    ok: bool
    status: int = 0
    backend: str = ""
    error: str = ""


class Load:
    """``connections`` client threads sending GETs through the proxy.

    Each thread keeps its connection alive (or opens a fresh one per request
    with ``keepalive=False``); on any error it records a failure and
    reconnects.  Every thread stops on :meth:`stop`, after ``max_requests``
    requests, or after ``max_seconds`` in any case.
    """

    def __init__(
        self,
        proxy: ProxyProcess,
        connections: int = 8,
        path: str = "/load",
        keepalive: bool = True,
        max_requests: Optional[int] = None,
        max_seconds: float = 15.0,
        timeout: float = 5.0,
    ) -> None:
        self.address = proxy.address
        self.connections = connections
        self.path = path
        self.keepalive = keepalive
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.outcomes: List[Outcome] = []
        #: Client-side port of every connection: serial number → port.
        self.ports: Dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._serial = 0
        self._sent = 0

    def start(self, ramp: bool = False, timeout: float = 10.0) -> "Load":
        """Start the client threads; return once each answered its first request.

        With ``ramp`` the next client connects only after the previous one got
        its first answer, as clients arriving one by one do; otherwise they all
        connect at once (one burst).
        """
        started = []
        deadline = time.monotonic() + timeout
        for index in range(self.connections):
            first = threading.Event()
            thread = threading.Thread(target=self._run, args=(first,), name=f"load-{index}", daemon=True)
            self._threads.append(thread)
            started.append(first)
            thread.start()
            if ramp and not first.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load client {index} got no first answer")
        for index, first in enumerate(started):
            if not first.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load client {index} got no first answer")
        return self

    def _take(self) -> bool:
        with self._lock:
            if self.max_requests is not None and self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _connect(self) -> Tuple[RawClient, int]:
        client = RawClient(*self.address, timeout=self.timeout)
        with self._lock:
            self._serial += 1
            serial = self._serial
            self.ports[serial] = client.sock.getsockname()[1]
        return client, serial

    def _run(self, first: threading.Event) -> None:
        deadline = time.monotonic() + self.max_seconds
        client: Optional[RawClient] = None
        serial = 0
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if client is None:
                    try:
                        client, serial = self._connect()
                    except OSError as error:
                        self._record(Outcome(time.monotonic(), time.monotonic(), 0, False, error=repr(error)))
                        self._stop.wait(0.01)
                        continue
                if not self._take():
                    break
                started = time.monotonic()
                try:
                    client.request("GET", self.path, headers=() if self.keepalive else (("Connection", "close"),))
                    response = client.read_response()
                except (OSError, ConnectionError, ValueError) as error:
                    self._record(Outcome(started, time.monotonic(), serial, False, error=repr(error)))
                    first.set()
                    client.close()
                    client = None
                    continue
                backend = ""
                ok = response.status == 200 and not response.truncated
                if ok:
                    try:
                        backend = response.json()["backend"]
                    except (ValueError, KeyError) as error:
                        ok = False
                        backend = repr(error)
                self._record(
                    Outcome(started, time.monotonic(), serial, ok, response.status, backend,
                            "" if ok else response.body[:200].decode("latin-1"))
                )
                first.set()
                if not self.keepalive or response.header("Connection") == "close":
                    client.close()
                    client = None
        finally:
            first.set()
            if client is not None:
                client.close()

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def snapshot(self) -> List[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_count(self, count: int, timeout: float = 10.0) -> None:
        wait_until(lambda: len(self.snapshot()) >= count, timeout, f"{count} load requests")

    def stop(self, timeout: float = 15.0) -> List[Outcome]:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "load threads did not stop"
        return self.snapshot()

    def join(self, timeout: float = 15.0) -> List[Outcome]:
        """Wait for the threads to end on their own (``max_requests``)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "load threads did not finish"
        return self.snapshot()

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def failures(outcomes: Iterable[Outcome]) -> List[Outcome]:
    return [o for o in outcomes if not o.ok]


class MetricsSampler:
    """Scrapes ``/metrics`` every ``interval`` seconds in a thread."""

    def __init__(self, proxy: ProxyProcess, interval: float = 0.05) -> None:
        self.proxy = proxy
        self.interval = interval
        self.samples: List[Tuple[float, float, float]] = []  # (requests_total, histogram count, restarts)
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 30.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                families = metrics(self.proxy)
                self.samples.append(
                    (
                        sample_sum(families, "speedproxy_requests"),
                        sample_sum(families, "speedproxy_request_duration_seconds",
                                   "speedproxy_request_duration_seconds_count"),
                        sample_sum(families, "speedproxy_worker_restarts"),
                    )
                )
            except Exception as error:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(error))
            self._stop.wait(self.interval)

    def start(self) -> "MetricsSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


def kill_leftovers(pids: Iterable[int]) -> None:
    """SIGKILL the given (worker) pids if they still run; for test cleanup."""
    for pid in pids:
        if pid and alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def holds(predicate: Any, seconds: float) -> bool:
    """``True`` if ``predicate()`` stays truthy for ``seconds`` (a bounded negative check)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.02)
    return bool(predicate())


def connect_refused(address: Tuple[str, int], timeout: float = 1.0) -> bool:
    """Try one TCP connect; ``True`` if it was refused."""
    with socket.socket() as probe:
        probe.settimeout(timeout)
        return probe.connect_ex(address) != 0
