"""Access log in combined log format, plus request time and upstream address.

Example line::

    127.0.0.1 - - [23/Nov/2026:11:05:47 +0000] "GET / HTTP/1.1" 200 1024 "-" "curl/8.0" rt=0.002 upstream=127.0.0.1:8081 trace=4bf92f3577b34da6a3ce929d0e0e4736 rid=ab12-1

``trace=`` is the request's W3C trace id (the client's ``traceparent``, or
the trace the proxy started); a request refused before it was parsed has none.

A gRPC call relayed on a gRPC route also has ``grpc=`` after ``upstream=``:
its gRPC status code (``grpc_status`` in the JSON format)::

    ... "POST /demo.Echo/Unary HTTP/2.0" 200 12 "-" "grpc-python/1.85.3" rt=0.004 upstream=127.0.0.1:50051 grpc=0 trace=... rid=ab12-3

A request that waited for a backend slot (every backend at ``max_conn``) also
has ``qt=`` after ``rt=``: the seconds it spent in the queue (part of ``rt``)::

    ... "curl/8.0" rt=0.815 qt=0.812 upstream=127.0.0.1:8081 rid=ab12-2
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, List, Optional

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
    if b'"' in value or b"\\" in value:
        return value.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')
    return value.decode("latin-1")


#: Request methods and versions as text, decoded once.
_TEXT = {
    word: word.decode("ascii")
    for word in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"HTTP/1.1", b"HTTP/1.0")
}


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
        host: bytes = b"",
        trace: bytes = b"",
        grpc_status: Optional[int] = None,
    ) -> str:
        """One line; ``queued``: seconds spent waiting for a backend slot, if it waited.

        ``host`` is not part of the combined format (the JSON one has it).
        ``trace`` (the W3C trace id) is written as ``trace=`` between
        ``upstream=`` and ``rid=``, which stays last."""
        if grpc_status is not None:
            upstream = "%s grpc=%d" % (upstream or "-", grpc_status)
        now = self._wall_clock()
        stamp = self._stamp if int(now) == self._second else self.timestamp()
        # The common case inline (this runs once per request): targets and
        # agents without '"' or '\\', response times as whole milliseconds
        # (int arithmetic: "%.3f" costs as much as the rest of the line).
        text = target.decode("latin-1") or "-"
        if '"' in text or "\\" in text:
            text = _quote(target)
        if user_agent:
            agent = user_agent.decode("latin-1")
            if '"' in agent or "\\" in agent:
                agent = _quote(user_agent)
        else:
            agent = "-"
        milliseconds = int(seconds * 1000.0 + 0.5) if seconds > 0.0 else 0
        return _COMBINED % (
            client_ip,
            stamp,
            _TEXT.get(method) or method.decode("latin-1"),
            text,
            _TEXT.get(version) or version.decode("latin-1"),
            status,
            size,
            _quote(referer) if referer else "-",
            agent,
            milliseconds // 1000,
            milliseconds % 1000,
            "" if queued is None else " qt=%.3f" % queued,
            upstream or "-",
            " trace=" + trace.decode("ascii") if trace else "",
            request_id.decode("ascii"),
        )


#: A combined-format line (see :meth:`AccessLogFormatter.format`).
_COMBINED = '%s - - [%s] "%s %s %s" %d %d "%s" "%s" rt=%d.%03d%s upstream=%s%s rid=%s'


#: Buffered access log bytes that trigger a write before the next sweep.
FLUSH_SIZE = 256 * 1024


class JsonAccessLogFormatter(AccessLogFormatter):
    """Formats one JSON object per line (``server.access_log_format: json``)."""

    def format(  # type: ignore[override]
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
        host: bytes = b"",
        trace: bytes = b"",
        grpc_status: Optional[int] = None,
    ) -> str:
        record = {
            "time": self.iso_time(),
            "client": client_ip,
            "method": method.decode("latin-1"),
            "host": host.decode("latin-1"),
            "target": target.decode("latin-1"),
            "version": version.decode("latin-1"),
            "status": status,
            "bytes": size,
            "referer": referer.decode("latin-1") if referer else None,
            "user_agent": user_agent.decode("latin-1") if user_agent else None,
            "rt": round(seconds, 6),
            "upstream": upstream or None,
            "rid": request_id.decode("ascii"),
        }
        if queued is not None:
            record["qt"] = round(queued, 6)
        if trace:
            record["trace_id"] = trace.decode("ascii")
        if grpc_status is not None:
            record["grpc_status"] = grpc_status
        return json.dumps(record, separators=(",", ":"))

    def iso_time(self) -> str:
        now = self._wall_clock()
        second = int(now)
        if second != self._iso_second:
            self._iso_second = second
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%03dZ" % (self._iso, int((now - second) * 1000))

    _iso_second = -1
    _iso = ""


class _Buffered:
    """Lines are kept in memory and written together: by the worker's sweep
    (every 0.25 s), when 256 KiB have piled up, and on close, so a line costs a
    list append rather than a write."""

    def __init__(self) -> None:
        self._lines: List[str] = []
        self._size = 0

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines = []
            self._size = 0
            self._emit(text)

    def _emit(self, text: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.flush()

    def reopen(self) -> None:
        """Reopen the destination (log rotation); nothing buffered is lost."""
        self.flush()


@implementer(IAccessLog)
class TwistedLogAccessLog(_Buffered):
    """Sends lines to twistd's log (``access_log: "-"``), one event per batch.

    A batch of lines is one log event, so in a twistd log file the lines
    after the first of a batch are indented with a tab (each keeps its own
    timestamp in the line).  For log processing, write to a file.
    """

    def __init__(self) -> None:
        super().__init__()
        from twisted.logger import Logger

        self._log = Logger(namespace="speedproxy.access")

    def _emit(self, text: str) -> None:
        self._log.info("{lines}", lines=text[:-1])


class _ToDescriptor(_Buffered):
    """Batches written whole to a file descriptor."""

    _fd = -1

    def _emit(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            try:
                written = os.write(self._fd, data)
            except InterruptedError:
                continue
            except OSError:
                return  # a full disk (or a gone master) loses the lines, never the request
            data = data[written:]


@implementer(IAccessLog)
class FileAccessLog(_ToDescriptor):
    """Appends lines to a file; each write holds whole lines (``O_APPEND``),
    so the workers sharing one file never tear each other's lines."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it): flush to the old one first."""
        self.flush()
        try:
            fd = self._open()
        except OSError:
            return  # keep writing to the old file rather than lose lines
        os.close(self._fd)
        self._fd = fd


@implementer(IAccessLog)
class PipeAccessLog(_ToDescriptor):
    """A worker's access log going to twistd's log through the master.

    Batches of lines are written to a pipe the master reads
    (:data:`ACCESS_LOG_FD`); the master logs each batch as one event.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd


#: The file descriptor on which a worker sends its access log to the master.
ACCESS_LOG_FD = 5


def open_access_log(setting: str, pipe: Optional[int] = None) -> Optional[IAccessLog]:
    """Return the access log for a ``server.access_log`` setting (None: off).

    ``pipe``: in a worker process, the descriptor that leads to the master's
    twistd log (used for ``-``).
    """
    if setting == "off":
        return None
    if setting in ("-", ""):
        if pipe is not None:
            return PipeAccessLog(pipe)
        return TwistedLogAccessLog()
    return FileAccessLog(setting)
