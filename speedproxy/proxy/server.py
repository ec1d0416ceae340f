"""The factory that serves client connections for a :class:`ProxyCore`."""

from __future__ import annotations

from twisted.internet.protocol import ServerFactory

from speedproxy.proxy.client import ClientConnection
from speedproxy.proxy.core import ProxyCore


class ProxyServerFactory(ServerFactory):
    """Builds a :class:`ClientConnection` per accepted client connection."""

    noisy = False

    def __init__(self, core: ProxyCore, scheme: bytes = b"http") -> None:
        self.core = core
        self.scheme = scheme

    def buildProtocol(self, addr: object) -> ClientConnection:
        connection = ClientConnection(self.core, self.scheme)
        connection.factory = self
        return connection
