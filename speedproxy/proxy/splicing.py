"""Zero-copy relay of large response bodies with ``splice(2)``.

A response body framed by ``Content-Length`` between two plain TCP sockets
does not need to pass through the worker: the kernel can move it from the
backend socket into a pipe and from the pipe into the client socket, page
references rather than copies (HAProxy's ``option splice-response``).
Moving a 100 KiB body this way instead of ``recv`` plus ``send`` costs
about a quarter of the CPU in isolation. In the whole proxy it saves ~45
µs per request on PyPy, whose socket reads copy twice, and only 2-4 µs on
CPython, where the Python per-request work dominates (bench/RESULTS.md).

:class:`Splice` drives one body: it takes over the backend transport's read
events and, while the client cannot take more, the client transport's
write events, so Twisted's reactor still does all the waiting.  It never
reads past the body, so the backend connection stays reusable, and it
leaves both transports exactly as it found them when it is done or
cancelled.  :class:`PipePool` keeps each worker's pipes for reuse.

``os.splice`` is Linux and Python 3.10+ only; on Linux with an older
Python or PyPy 3.9 the C library's ``splice`` is called through cffi or
ctypes.  Elsewhere :func:`splice_supported` is false and bodies are copied
as before.
"""

from __future__ import annotations

import fcntl
import os
import sys
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from zope.interface import Interface

#: Response bodies at least this long (after the first read) are spliced.
MIN_SPLICE_SIZE = 16 * 1024

#: Bytes read from a backend while waiting for a response head when the
#: body may be spliced: the head and the start of the body come as usual,
#: the rest stays in the kernel.
HEAD_READ_SIZE = 16 * 1024

#: Pipe capacity asked for (the kernel may grant less; 64 KiB is the floor).
#: Pipe buffers count against a per-user budget (``fs.pipe-user-pages-soft``,
#: 64 MiB by default) shared by every worker, so they are kept modest.
PIPE_SIZE = 256 * 1024

#: Idle pipes kept per worker.
MAX_IDLE_PIPES = 16

#: Pipes in use at once per worker (two file descriptors each); bodies
#: beyond that are copied, so stalled clients cannot exhaust descriptors.
MAX_PIPES_IN_USE = 1024

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def _libc_splice() -> Optional[Callable[..., int]]:
    """``splice(2)`` from the C library, for interpreters without ``os.splice``.

    Python 3.9 and PyPy 3.9 lack ``os.splice``; cffi (built into PyPy) or
    ctypes call the same system call with the same result: bytes moved, or
    :class:`OSError` with the errno (``BlockingIOError`` for ``EAGAIN``).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import cffi
    except ImportError:
        cffi = None
    if cffi is not None:
        ffi = cffi.FFI()
        ffi.cdef("ssize_t splice(int, void *, int, void *, size_t, unsigned int);")
        try:
            libc = ffi.dlopen(None)
            call = libc.splice
        except (OSError, AttributeError):
            return None
        null = ffi.NULL

        def cffi_splice(src: int, dst: int, count: int, flags: int = 0) -> int:
            size = call(src, null, dst, null, count, flags)
            if size < 0:
                code = ffi.errno
                raise OSError(code, os.strerror(code))
            return size

        return cffi_splice
    import ctypes
    import ctypes.util

    try:
        libc_c = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call_c = libc_c.splice
    except (OSError, AttributeError):
        return None
    call_c.restype = ctypes.c_ssize_t
    call_c.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
    ]

    def ctypes_splice(src: int, dst: int, count: int, flags: int = 0) -> int:
        size = call_c(src, None, dst, None, count, flags)
        if size < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return size

    return ctypes_splice


_splice: Optional[Callable[..., int]] = getattr(os, "splice", None) or _libc_splice()

Pipe = Tuple[int, int, int]  # read end, write end, capacity in bytes


def splice_supported() -> bool:
    """Can this interpreter splice sockets (Linux: ``os.splice``, or libc's)?"""
    return _splice is not None and sys.platform.startswith("linux")


def plain_tcp(transport: Any) -> bool:
    """Is ``transport`` a plain (not TLS) TCP connection of Twisted's?"""
    from twisted.internet.tcp import Connection

    return isinstance(transport, Connection) and not getattr(transport, "TLS", False)


def nothing_queued(transport: Any) -> bool:
    """Has ``transport`` written everything it was given?"""
    return (
        not transport._tempDataLen
        and len(transport.dataBuffer) == transport.offset
        and transport.connected
        and not transport.disconnecting
    )


class PipePool:
    """Non-blocking pipes of one worker, reused from one body to the next."""

    def __init__(
        self, size: int = PIPE_SIZE, keep: int = MAX_IDLE_PIPES, limit: int = MAX_PIPES_IN_USE
    ) -> None:
        self.size = size
        self.keep = keep
        self.limit = limit
        self._idle: List[Pipe] = []
        #: Pipes handed out and not yet given back (for tests and stats).
        self.in_use = 0
        #: Closed: pipes given back are closed, not kept.
        self.closed = False

    def get(self) -> Optional[Pipe]:
        """An empty pipe, or ``None`` at the limit or if the system refuses one."""
        if self.in_use >= self.limit:
            return None
        if self._idle:
            self.in_use += 1
            return self._idle.pop()
        try:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, self.size)
        except OSError:
            pass  # over the per-user pipe budget: the default size still works
        try:
            capacity = fcntl.fcntl(write_end, _F_GETPIPE_SZ)
        except OSError:
            capacity = 65536
        self.in_use += 1
        return (read_end, write_end, capacity)

    def put(self, pipe: Pipe) -> None:
        """Give back an empty pipe."""
        self.in_use -= 1
        if len(self._idle) < self.keep and not self.closed:
            self._idle.append(pipe)
        else:
            _close(pipe)

    def discard(self, pipe: Pipe) -> None:
        """Close a pipe that may still hold data."""
        self.in_use -= 1
        _close(pipe)

    def close(self) -> None:
        """Close every idle pipe, and those in use as they come back."""
        self.closed = True
        idle, self._idle = self._idle, []
        for pipe in idle:
            _close(pipe)


def _close(pipe: Pipe) -> None:
    for fd in pipe[:2]:
        try:
            os.close(fd)
        except OSError:
            pass


class ISpliceOwner(Interface):
    """What a :class:`Splice` tells the connection it works for.

    :class:`UpstreamConnection <speedproxy.proxy.upstream.UpstreamConnection>`
    provides it.
    """

    def splice_received(size: int) -> None:
        """``size`` body bytes came from the backend."""

    def splice_sent(size: int) -> None:
        """``size`` body bytes went to the client."""

    def splice_blocked() -> None:
        """The client cannot take more for now; stop reading the backend."""

    def splice_unblocked() -> None:
        """The client can take more again."""

    def splice_overrun() -> None:
        """The backend sent more than the body, or closed: do not reuse it."""

    def splice_done() -> None:
        """The whole body reached the client."""


class Splice:
    """Moves exactly ``length`` bytes from ``source`` to ``sink`` in the kernel.

    ``source`` and ``sink`` are Twisted TCP transports (backend and client);
    the caller has checked both with :func:`plain_tcp` and that ``sink`` has
    nothing queued.  Call :meth:`start` once; then either the owner's
    ``splice_done`` is called, or the source is disconnected with a reason
    (backend closed or failed mid-body), or the sink is aborted (client
    gone), or someone calls :meth:`cancel`.
    """

    __slots__ = (
        "source",
        "sink",
        "owner",
        "pipes",
        "pipe",
        "to_read",
        "in_pipe",
        "source_ready",
        "sink_blocked",
        "source_stopped",
        "active",
    )

    def __init__(
        self, source: Any, sink: Any, length: int, owner: ISpliceOwner, pipes: PipePool, pipe: Pipe
    ) -> None:
        self.source = source
        self.sink = sink
        self.owner = owner
        self.pipes = pipes
        self.pipe = pipe
        #: Body bytes still in the backend socket.
        self.to_read = length
        #: Bytes in the pipe, not yet taken by the client socket.
        self.in_pipe = 0
        self.source_ready = True
        self.sink_blocked = False
        #: Reading the backend was stopped here while the client was full.
        self.source_stopped = False
        self.active = False

    def start(self) -> None:
        """Take over the backend's read events and move what is there."""
        self.active = True
        self.source.doRead = self._source_readable
        why = self._pump()
        if why is not None:
            # Not inside the backend's own read event: disconnect it ourselves.
            self.source.abortConnection()

    def cancel(self) -> None:
        """Stop, leaving both transports as they were; drop what is in the pipe."""
        if self.active:
            self._release(clean=False)

    # -- reactor events ------------------------------------------------------

    def _source_readable(self) -> Any:
        """The backend socket is readable (replaces ``source.doRead``)."""
        if not self.to_read:
            # More than the body, or the backend closed after it: the body
            # is complete, but this connection must not be reused.
            self.owner.splice_overrun()
            self.source.stopReading()
            return None
        if self.sink_blocked:
            self.source.stopReading()
            self.source_stopped = True
            return None
        self.source_ready = True
        return self._pump()

    def _sink_writable(self) -> Any:
        """The client socket can take more (replaces ``sink.doWrite``)."""
        self._unblock_sink()
        self.owner.splice_unblocked()
        if self.source_stopped and self.active:
            self.source_stopped = False
            self.source.startReading()
        if self.active and self._pump() is not None:
            self.source.abortConnection()  # not the backend's own read event
        return None

    # -- moving bytes --------------------------------------------------------

    def _pump(self) -> Any:
        """Fill the pipe and empty it into the client until either side waits.

        Returns a reason to disconnect the backend, or ``None``.
        """
        read_end, write_end, capacity = self.pipe
        source_fd = self.source.fileno()
        sink_fd = self.sink.fileno()
        while self.active:
            moved = False
            to_read = self.to_read
            if self.source_ready and to_read and self.in_pipe < capacity:
                want = capacity - self.in_pipe
                if want > to_read:
                    want = to_read
                try:
                    size = _splice(source_fd, write_end, want, flags=_FLAGS)  # type: ignore[misc]
                except BlockingIOError:
                    self.source_ready = False
                except OSError:
                    self._release(clean=False)
                    return CONNECTION_LOST
                else:
                    if not size:
                        self._release(clean=False)
                        return CONNECTION_DONE
                    self.to_read = to_read - size
                    self.in_pipe += size
                    moved = True
                    if size < want:
                        self.source_ready = False
                    self.owner.splice_received(size)
            if self.in_pipe and not self.sink_blocked:
                try:
                    size = _splice(read_end, sink_fd, self.in_pipe, flags=_FLAGS)  # type: ignore[misc]
                except BlockingIOError:
                    size = 0
                except OSError as error:
                    self._sink_failed(error)
                    return None
                if size:
                    self.in_pipe -= size
                    moved = True
                    self.owner.splice_sent(size)
                if self.in_pipe:
                    self._block_sink()
            if not self.to_read and not self.in_pipe:
                self._release(clean=True)
                self.owner.splice_done()
                return None
            if not moved:
                return None
        return None

    def _block_sink(self) -> None:
        if self.sink_blocked:
            return
        self.sink_blocked = True
        self.sink.doWrite = self._sink_writable
        self.sink.startWriting()
        self.owner.splice_blocked()

    def _unblock_sink(self) -> None:
        if not self.sink_blocked:
            return
        self.sink_blocked = False
        sink = self.sink
        if sink.__dict__.get("doWrite") == self._sink_writable:
            del sink.__dict__["doWrite"]
        if getattr(sink, "_aborting", False):
            return  # Twisted's abort already stopped it and owns doWrite now
        if nothing_queued(sink) or not sink.connected:
            sink.stopWriting()
        # else: Twisted queued data meanwhile; its own doWrite sends it.

    def _sink_failed(self, error: OSError) -> None:
        """The client is gone (EPIPE, ECONNRESET...): abort it.

        Its ``connectionLost`` then drops the backend connection, as for a
        client lost in any other way.
        """
        self._release(clean=False)
        self.sink.abortConnection()

    def _release(self, clean: bool) -> None:
        """Hand both transports back to Twisted and return or close the pipe."""
        self.active = False
        source = self.source.__dict__
        if source.get("doRead") == self._source_readable:
            # Only ours: an aborting transport has Twisted's no-op there.
            del source["doRead"]
        self._unblock_sink()
        pipe = self.pipe
        if clean and not self.in_pipe:
            self.pipes.put(pipe)
        else:
            self.pipes.discard(pipe)
