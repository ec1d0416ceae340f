"""Listening sockets, bound once at start-up and handed to whoever serves them.

``twistd speedproxy`` binds every listener (proxy, admin API, demo origin)
with :func:`bind_all` before anything is started: if one address cannot be
used, nothing listened and start-up stops with one line naming the address,
the config key and the reason (:class:`ListenError`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import List, Sequence, Tuple

# The config's own parser of listen addresses, for the callers of bind_all.
from speedproxy.config.units import parse_listen  # noqa: F401

#: Backlog of every listener we bind.
BACKLOG = 1024


class ListenError(SystemExit):
    """A listener could not be bound: start-up stops.

    A :class:`SystemExit` whose code is the message, so that it ends the
    process with exit status 1 and the message on stderr, no traceback.
    """

    def __init__(self, host: str, port: int, key: str, reason: BaseException) -> None:
        self.host = host
        self.port = port
        self.key = key
        self.reason = reason
        super().__init__(f"speedproxy: cannot listen on {format_address(host, port)} ({key}): {reason}")

    def __str__(self) -> str:
        return str(self.code)


@dataclass
class Listener:
    """One bound, listening socket and the config key it came from."""

    key: str
    sock: socket.socket

    @property
    def family_name(self) -> str:
        """``inet`` or ``inet6``, as the worker's ``--family`` takes it."""
        return "inet6" if self.sock.family == socket.AF_INET6 else "inet"

    def close(self) -> None:
        self.sock.close()


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bound(host: str, port: int) -> socket.socket:
    """A non-blocking socket bound to ``host:port``, not listening yet."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_all(addresses: Sequence[Tuple[str, str, int]], backlog: int = BACKLOG) -> List[Listener]:
    """Bind and listen on every ``(config key, host, port)``, all or none.

    Every address is bound first and only then do they all listen, so a
    client never reaches a listener of a start-up that then fails: until
    all are bound, a connection attempt is refused.

    :raises ListenError: naming the first address that could not be used;
        the sockets already bound are closed.
    """
    bound: List[Tuple[str, str, int, socket.socket]] = []

    def give_up(host: str, port: int, key: str, reason: BaseException) -> ListenError:
        for *_, sock in bound:
            sock.close()
        return ListenError(host, port, key, reason)

    for key, host, port in addresses:
        try:
            bound.append((key, host, port, _bound(host, port)))
        except (OSError, OverflowError) as error:
            raise give_up(host, port, key, error) from None
    for key, host, port, sock in bound:
        try:
            sock.listen(backlog)
        except OSError as error:
            raise give_up(host, port, key, error) from None
    return [Listener(key, sock) for key, _, _, sock in bound]


def bind_listener(host: str, port: int, backlog: int = BACKLOG) -> Tuple[socket.socket, str]:
    """Bind and listen on ``host:port``; return the socket and its family name.

    The master keeps this socket open for its whole life, so while a worker
    is being replaced the kernel keeps queueing connections for the others.

    :raises OSError: the address cannot be used (no socket is left open).
    """
    sock = _bound(host, port)
    try:
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, "inet6" if sock.family == socket.AF_INET6 else "inet"


#: The config keys named when a listener cannot be bound.
PROXY_KEY = "server.host/server.port"
ADMIN_KEY = "admin.listen"
DEMO_KEY = "--demo-origin"
