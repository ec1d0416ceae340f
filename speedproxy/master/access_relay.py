"""The workers' access log lines into twistd's log (``access_log: "-"``), a few events a second.

A worker writes its lines in batches (every 0.25 s, or each 256 KiB; see
:class:`speedproxy.accesslog.PipeAccessLog`) to a pipe of its own,
:class:`AccessLogPipe` in the master reads it up to 512 KiB at a time
(where a Twisted process reader takes 8 KiB per wake-up), and the relay
gathers the whole lines of every worker into one log event when
:data:`FLUSH_BYTES` have piled up or :data:`FLUSH_DELAY` seconds after the
first line of a batch arrived: the log observers run a few times a
second, not once per read.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IReadDescriptor
from zope.interface import implementer

#: Pending bytes that are logged at once.
FLUSH_BYTES = 256 * 1024
#: Seconds a line may wait in the master before it is logged.
FLUSH_DELAY = 0.1


class AccessLogRelay:
    """Gathers whole access log lines and hands them to ``emit`` in batches.

    ``emit`` receives the text of a batch without its final newline.
    """

    def __init__(self, clock: IReactorTime, emit: Callable[[str], None]) -> None:
        self._clock = clock
        self._emit = emit
        self._pending: List[bytes] = []
        self._size = 0
        self._timer: Optional[Any] = None

    def lines(self, data: bytes) -> None:
        """Whole lines from one worker (newline-separated, no final newline)."""
        self._pending.append(data)
        self._size += len(data) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(FLUSH_DELAY, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Log everything pending now, as one event."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        text = b"\n".join(self._pending).decode("utf-8", "replace")
        self._pending = []
        self._size = 0
        self._emit(text)


#: Capacity asked for a worker's access log pipe: a worker's batch goes in
#: with one write, and a busy master reads several batches at once.
PIPE_SIZE = 1024 * 1024
#: Bytes read from a worker's pipe per wake-up (Twisted's own process
#: readers read 8 KiB, eight wake-ups per batch); PyPy allocates the whole
#: size for every read, so not the pipe's whole capacity.
READ_SIZE = 512 * 1024


def open_access_pipe() -> Tuple[int, int]:
    """A pipe for one worker's access log: ``(read end, write end)``.

    The read end is non-blocking (the master's); the write end, given to
    the worker, stays blocking.  Its capacity is raised to
    :data:`PIPE_SIZE` where the system allows (Linux ``F_SETPIPE_SZ``,
    up to ``/proc/sys/fs/pipe-max-size``).
    """
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, False)
    os.set_blocking(read_end, False)
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        try:
            fcntl.fcntl(write_end, set_size, PIPE_SIZE)
        except OSError:
            pass  # above pipe-max-size: the default capacity works, in more wake-ups
    return read_end, write_end


@implementer(IReadDescriptor)
class AccessLogPipe:
    """The master's end of one worker's access log pipe: whole lines go to ``relay``.

    Closes itself (and forgets a last line without its newline) when the
    worker's end is closed.
    """

    def __init__(self, reactor: Any, fd: int, relay: AccessLogRelay) -> None:
        self._reactor = reactor
        self._fd = fd
        self._relay = relay
        self._partial = b""

    def start(self) -> None:
        self._reactor.addReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "AccessLogPipe"

    def doRead(self) -> Optional[Any]:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        except OSError as error:
            return error
        if not data:
            return _closed
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial += data
            return None
        if self._partial:
            data = self._partial + data
            cut += len(self._partial)
        self._partial = data[cut + 1 :]
        self._relay.lines(data[:cut])
        return None

    def connectionLost(self, reason: Any) -> None:
        self._reactor.removeReader(self)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_closed = ConnectionDone("the worker closed its access log pipe")
