"""Listening sockets, bound once by the master and inherited by workers."""

from __future__ import annotations

import socket
from typing import Tuple


def bind_listener(host: str, port: int, backlog: int = 1024) -> Tuple[socket.socket, str]:
    """Bind and listen on ``host:port``; return the socket and its family name.

    The master keeps this socket open for its whole life, so while a worker
    is being replaced the kernel keeps queueing connections for the others.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock, "inet6" if family == socket.AF_INET6 else "inet"


def parse_listen(value: str) -> Tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``."""
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
    return host, int(port)
