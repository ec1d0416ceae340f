"""Zero-copy local response bodies with ``sendfile(2)`` (large disk cache hits).

:class:`SendFile` writes a response head and then ``length`` bytes of a file
straight from the page cache into a plain TCP client socket, as nginx's
``sendfile on`` does.  Like :class:`~speedproxy.proxy.splicing.Splice`, it
takes over the client transport's write events while the socket is full,
so the reactor still does all the waiting, and hands the transport back
untouched when it is done or cancelled.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional

from speedproxy.proxy.splicing import nothing_queued

#: Bytes asked of one sendfile call.
CHUNK = 1 << 20

_MSG_MORE = getattr(socket, "MSG_MORE", None)


def sendfile_supported() -> bool:
    return hasattr(os, "sendfile")


class SendFile:
    """Sends ``head`` then ``length`` bytes of ``fd`` from ``offset`` into ``sink``."""

    __slots__ = ("sink", "head", "fd", "offset", "remaining", "keep", "on_done", "on_blocked", "active", "blocked")

    def __init__(
        self,
        sink: Any,
        head: bytes,
        fd: int,
        offset: int,
        length: int,
        keep: Any,
        on_done: Callable[[], None],
        on_blocked: Callable[[bool], None],
    ) -> None:
        self.sink = sink
        self.head = head
        self.fd = fd
        self.offset = offset
        self.remaining = length
        #: Holds the file open while its bytes are sent.
        self.keep = keep
        self.on_done = on_done
        #: Told True when the client stops taking bytes, False when it goes on.
        self.on_blocked = on_blocked
        self.active = False
        self.blocked = False

    @staticmethod
    def possible(sink: Any) -> bool:
        """Only on a plain TCP socket with nothing queued by Twisted."""
        return sendfile_supported() and nothing_queued(sink) and getattr(sink, "connected", False)

    def start(self) -> None:
        self.active = True
        self._pump()

    def cancel(self) -> None:
        if self.active:
            self._release()

    def _pump(self) -> None:
        sink = self.sink
        out = sink.fileno()
        while self.active:
            try:
                if self.head:
                    # MSG_MORE: the head leaves with the body's first bytes,
                    # not as a segment of its own (nginx's TCP_NOPUSH).
                    sent = os.write(out, self.head) if _MSG_MORE is None else sink.socket.send(self.head, _MSG_MORE)
                    self.head = self.head[sent:]
                    if self.head:
                        self._block()
                        return
                    continue
                if not self.remaining:
                    self._release()
                    self.on_done()
                    return
                sent = os.sendfile(out, self.fd, self.offset, min(self.remaining, CHUNK))
            except BlockingIOError:
                self._block()
                return
            except OSError:
                self._release()
                sink.abortConnection()  # the client is gone: its connectionLost ends the exchange
                return
            if not sent:  # the file is shorter than it said: never send a torn body
                self._release()
                sink.abortConnection()
                return
            self.offset += sent
            self.remaining -= sent

    def _block(self) -> None:
        if not self.blocked:
            self.blocked = True
            self.sink.doWrite = self._writable
            self.sink.startWriting()
            self.on_blocked(True)

    def _unblock(self) -> None:
        if self.blocked:
            self.blocked = False
            sink = self.sink
            if sink.__dict__.get("doWrite") == self._writable:
                del sink.__dict__["doWrite"]
            if not getattr(sink, "_aborting", False) and (nothing_queued(sink) or not sink.connected):
                sink.stopWriting()
            self.on_blocked(False)

    def _writable(self) -> Optional[Any]:
        self._unblock()
        self._pump()
        return None

    def _release(self) -> None:
        self.active = False
        self._unblock()
        keep, self.keep = self.keep, None
        close = getattr(keep, "close", None)
        if close is not None:
            close()
