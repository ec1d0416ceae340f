"""Test helpers for the fleet: real ``redis-server`` and Sentinel processes.

``ensure_redis_server()`` finds (or, as root, installs with apt) Debian's
``redis-server``; :class:`RedisServer` runs one on a free loopback port in
a temporary directory, without persistence; :class:`RedisSentinel` runs a
Sentinel watching it.  :func:`redis_command` is a tiny blocking RESP
client for tests to look at and change what is stored.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, List, Optional, Sequence

from speedproxy.testing.programs import ProgramMissing, ensure_program
from speedproxy.testing.support import free_port, wait_until

class RedisUnavailable(RuntimeError):
    """``redis-server`` is missing and could not be installed."""


def ensure_redis_server() -> str:
    """The ``redis-server`` binary, installing Debian's package if it is missing (as root)."""
    try:
        return ensure_program("redis-server", "redis-server", "the fleet tests (a real Redis)")
    except ProgramMissing as missing:
        raise RedisUnavailable(str(missing)) from None


def _encode(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size + 2:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.buffer += data
        data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply {line!r}")


class RedisReplyError(Exception):
    """An error reply."""


def redis_command(port: int, *args: Any, timeout: float = 5.0, db: int = 0) -> Any:
    """Run one command on ``127.0.0.1:port`` (blocking); return the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = _Reader(sock)
        if db:
            sock.sendall(_encode(["SELECT", db]))
            reader.reply()
        sock.sendall(_encode(args))
        return reader.reply()


def _answers(port: int) -> bool:
    try:
        return redis_command(port, "PING", timeout=0.5) == "PONG"
    except (OSError, ConnectionError, RedisReplyError):
        return False


class _Process:
    """One ``redis-server`` process (a server or a Sentinel)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.process: Optional[subprocess.Popen] = None
        self.directory = Path(tempfile.mkdtemp(prefix=f"speedproxy-{name}-"))
        self.log_path = self.directory / "redis.log"

    def _run(self, args: List[str], timeout: float = 15.0) -> None:
        binary = ensure_redis_server()
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [binary, *args], cwd=self.directory, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            wait_until(lambda: self.process.poll() is not None or _answers(self.port), timeout, f"{self.name} to answer")
        except TimeoutError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.process.returncode}: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()

    def command(self, *args: Any) -> Any:
        return redis_command(self.port, *args)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisServer(_Process):
    """A ``redis-server`` on ``127.0.0.1`` and a free port, no persistence."""

    def __init__(self, name: str = "redis") -> None:
        super().__init__(name)

    def start(self, port: int = 0, replica_of: Optional[int] = None) -> "RedisServer":
        """Start (again: on the same port by default)."""
        self.port = port or self.port or free_port()
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--protected-mode", "no"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._run(args)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class RedisSentinel(_Process):
    """A Sentinel (quorum 1, 1 s down-after) monitoring ``master_port`` as ``service``."""

    def __init__(self, master_port: int, service: str = "mymaster", name: str = "sentinel") -> None:
        super().__init__(name)
        self.master_port = master_port
        self.service = service

    def start(self) -> "RedisSentinel":
        self.port = self.port or free_port()
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.directory}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        self._run([str(config), "--sentinel"])
        return self

    def master(self) -> Optional[int]:
        """The port the Sentinel calls master now."""
        answer = self.command("SENTINEL", "get-master-addr-by-name", self.service)
        return int(answer[1]) if answer else None


def wait_for_replica(master: RedisServer, timeout: float = 15.0) -> None:
    """Until ``master`` says a replica is connected and in sync."""

    def synced() -> bool:
        info = master.command("INFO", "replication").decode()
        return "connected_slaves:1" in info and "state=online" in info

    wait_until(synced, timeout, "the replica to sync")
