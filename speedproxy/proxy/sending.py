"""Send on a TCP socket at once when nothing is queued.

Twisted's ``transport.write`` always queues and registers the socket for
writability, so every response costs two extra ``epoll_ctl`` calls and a
reactor turn before the first byte leaves.  When the transport's queue is
empty, sending immediately is equivalent and cheaper; whatever the kernel
does not take goes through ``transport.write`` so ordering, backpressure
and error handling stay Twisted's.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple, Union

Data = Union[bytes, memoryview]
Writer = Callable[[Data], None]
SequenceWriter = Callable[[Sequence[Data]], None]


def _queued(transport: Any) -> Tuple[Writer, SequenceWriter]:
    def write(data: Data) -> None:
        transport.write(bytes(data) if type(data) is not bytes else data)

    def write_sequence(parts: Sequence[Data]) -> None:
        transport.write(b"".join(parts))

    return write, write_sequence


def writers_for(transport: Any) -> Tuple[Writer, SequenceWriter]:
    """Return ``(write, write_sequence)`` functions for ``transport``."""
    from twisted.internet.tcp import Connection

    if not isinstance(transport, Connection) or getattr(transport, "TLS", False):
        return _queued(transport)
    sock = transport.socket
    send = sock.send
    sendmsg = getattr(sock, "sendmsg", None)
    queue = transport.write

    # "Nothing queued" is spelled out in both writers rather than in a helper:
    # it runs twice per request and the extra call is measurable.

    def write(data: Data) -> None:
        t = transport
        if (
            not t._tempDataLen
            and len(t.dataBuffer) == t.offset
            and t.connected
            and not t.disconnecting
            and not t._writeDisconnected
        ):
            try:
                sent = send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # Twisted will see the error on its own write
            if sent == len(data):
                return
            data = data[sent:]
        queue(bytes(data) if type(data) is not bytes else data)

    def write_sequence(parts: Sequence[Data]) -> None:
        t = transport
        if sendmsg is None or not (
            not t._tempDataLen
            and len(t.dataBuffer) == t.offset
            and t.connected
            and not t.disconnecting
            and not t._writeDisconnected
        ):
            write(b"".join(parts))
            return
        try:
            sent = sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0
        total = 0
        for part in parts:
            total += len(part)
        if sent == total:
            return
        queue(b"".join(parts)[sent:])

    return write, write_sequence
