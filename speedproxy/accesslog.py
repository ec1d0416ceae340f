"""Access log in combined log format, plus request time and upstream address.

Example line::

    127.0.0.1 - - [23/Nov/2026:11:05:47 +0000] "GET / HTTP/1.1" 200 1024 "-" "curl/8.0" rt=0.002 upstream=127.0.0.1:8081 rid=ab12-1

A request that waited for a backend slot (every backend at ``max_conn``) also
has ``qt=`` after ``rt=``: the seconds it spent in the queue (part of ``rt``)::

    ... "curl/8.0" rt=0.815 qt=0.812 upstream=127.0.0.1:8081 rid=ab12-2
"""

from __future__ import annotations

import time
from typing import IO, Callable, Optional

from zope.interface import Interface, implementer


class IAccessLog(Interface):
    """Where access log lines go."""

    def write(line: str) -> None:
        """Record one formatted line (no trailing newline)."""

    def flush() -> None:
        """Push buffered lines out."""

    def close() -> None:
        """Flush and release resources."""


def _quote(value: Optional[bytes]) -> str:
    if not value:
        return "-"
    return value.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')


class AccessLogFormatter:
    """Formats combined-log lines; the timestamp is formatted once a second."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._second = -1
        self._stamp = ""

    def timestamp(self) -> str:
        now = int(self._wall_clock())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
        return self._stamp

    def format(
        self,
        client_ip: str,
        method: bytes,
        target: bytes,
        version: bytes,
        status: int,
        size: int,
        referer: Optional[bytes],
        user_agent: Optional[bytes],
        seconds: float,
        upstream: str,
        request_id: bytes,
        queued: Optional[float] = None,
    ) -> str:
        """One line; ``queued``: seconds spent waiting for a backend slot, if it waited."""
        if queued is not None:
            return '%s - - [%s] "%s %s %s" %d %d "%s" "%s" rt=%.3f qt=%.3f upstream=%s rid=%s' % (
                client_ip,
                self.timestamp(),
                method.decode("latin-1"),
                _quote(target),
                version.decode("latin-1"),
                status,
                size,
                _quote(referer),
                _quote(user_agent),
                seconds,
                queued,
                upstream or "-",
                request_id.decode("ascii"),
            )
        return '%s - - [%s] "%s %s %s" %d %d "%s" "%s" rt=%.3f upstream=%s rid=%s' % (
            client_ip,
            self.timestamp(),
            method.decode("latin-1"),
            _quote(target),
            version.decode("latin-1"),
            status,
            size,
            _quote(referer),
            _quote(user_agent),
            seconds,
            upstream or "-",
            request_id.decode("ascii"),
        )


@implementer(IAccessLog)
class TwistedLogAccessLog:
    """Sends lines to twistd's log (the default)."""

    def __init__(self) -> None:
        from twisted.logger import Logger

        self._log = Logger(namespace="speedproxy.access")

    def write(self, line: str) -> None:
        self._log.info("{line}", line=line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@implementer(IAccessLog)
class FileAccessLog:
    """Appends lines to a file, buffered and flushed by the worker's sweep."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] = open(path, "a", buffering=64 * 1024, encoding="utf-8")

    def write(self, line: str) -> None:
        self._file.write(line + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def reopen(self) -> None:
        """Reopen the file (log rotation)."""
        self._file.close()
        self._file = open(self.path, "a", buffering=64 * 1024, encoding="utf-8")


def open_access_log(setting: str) -> Optional[IAccessLog]:
    """Return the access log for a ``server.access_log`` setting (None: off)."""
    if setting == "off":
        return None
    if setting in ("-", ""):
        return TwistedLogAccessLog()
    return FileAccessLog(setting)
