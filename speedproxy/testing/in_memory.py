"""The data path on a ``MemoryReactorClock``: a proxy core, clients and backends in memory (no sockets, no threads)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from speedproxy.config import parse_config
from speedproxy.proxy.client import ClientConnection
from speedproxy.proxy.core import ProxyCore
from speedproxy.proxy.server import ProxyServerFactory
from speedproxy.proxy.upstream import UpstreamConnection


#
# An :class:`InMemoryProxy` runs a :class:`~speedproxy.proxy.core.ProxyCore`
# on a ``MemoryReactorClock``; clients and backends are ``StringTransport``s
# that the tests drive by hand.  For fast unit tests of protocol and state
# logic; the end-to-end tests use :class:`ProxyProcess` and real sockets.

IN_MEMORY_CONFIG = """\
server:
  max_header_size: 4KiB
  upstream_read_timeout: 60s
  upstream_connect_timeout: 5s
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""

#: One backend and one route with its cache on (memory tier), for cache tests.
IN_MEMORY_CACHED_CONFIG = """\
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin, cache: {enabled: true}}
"""


@dataclass
class ParsedResponse:
    status: int
    reason: bytes
    headers: List[Tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: bytes) -> List[bytes]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Dict[str, str]:
        return json.loads(self.body)


def parse_responses(data: bytes, head_request: bool = False, until_close: bool = False) -> List[ParsedResponse]:
    """Split the bytes a client received into responses (a test-side parser)."""
    responses: List[ParsedResponse] = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, "incomplete response head: %r" % head
        lines = head.split(b"\r\n")
        _, status, reason = (lines[0].split(b" ", 2) + [b""])[:3]
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        response = ParsedResponse(int(status), reason, headers, b"")  # type: ignore[arg-type]
        if 100 <= response.status < 200:
            responses.append(response)
            continue
        te = response.header(b"transfer-encoding")
        cl = response.header(b"content-length")
        if head_request or response.status in (204, 304):
            pass
        elif te is not None:
            assert te == b"chunked"
            response.chunked = True
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    assert data.startswith(b"\r\n"), data[:20]
                    data = data[2:]
                    break
                body += data[:size]
                assert data[size : size + 2] == b"\r\n"
                data = data[size + 2 :]
            response.body = body
        elif cl is not None:
            response.body, data = data[: int(cl)], data[int(cl) :]
            assert len(response.body) == int(cl)
        else:
            assert until_close, "response without length: %r" % head
            response.body, data = data, b""
        responses.append(response)
    return responses


class _InMemoryPeer:
    """One end the tests drive: bytes in with :meth:`send`, out in the transport."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        return self.transport.value()

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data


class InMemoryBackend(_InMemoryPeer):
    """One accepted upstream connection as seen by the test."""

    def __init__(self, protocol: UpstreamConnection, transport: StringTransport, host: str, port: int) -> None:
        super().__init__(protocol, transport)
        self.host = host
        self.port = port

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def request_head(self) -> Tuple[bytes, List[Tuple[bytes, bytes]]]:
        head = self.received().split(b"\r\n\r\n", 1)[0]
        lines = head.split(b"\r\n")
        return lines[0], [tuple(line.split(b": ", 1)) for line in lines[1:]]  # type: ignore[misc]


class InMemoryClient(_InMemoryPeer):
    """One client connection to the proxy."""

    protocol: ClientConnection

    def responses(self, **kwargs: bool) -> List[ParsedResponse]:
        return parse_responses(self.transport.value(), **kwargs)

    def response(self, **kwargs: bool) -> ParsedResponse:
        responses = self.responses(**kwargs)
        assert len(responses) == 1, responses
        return responses[0]

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class InMemoryProxy:
    def __init__(self, config_text: str = IN_MEMORY_CONFIG) -> None:
        self.reactor = MemoryReactorClock()
        self.config = parse_config(textwrap.dedent(config_text))
        self.core = ProxyCore(self.reactor, self.config)
        self.factory = ProxyServerFactory(self.core)
        self._next_port = 50000
        self._accepted = 0

    def client(self, host: str = "127.0.0.1") -> InMemoryClient:
        self._next_port += 1
        address = IPv4Address("TCP", host, self._next_port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=address, lenient=True
        )
        protocol.makeConnection(transport)
        return InMemoryClient(protocol, transport)

    @property
    def connects(self) -> List[Tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def pending_connects(self) -> int:
        return len(self.reactor.tcpClients) - self._accepted

    def accept(self) -> InMemoryBackend:
        """Complete the oldest connectTCP not yet answered."""
        host, port, factory, timeout, _ = self.reactor.tcpClients[self._accepted]
        self._accepted += 1
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address, lenient=True)
        protocol.makeConnection(transport)
        return InMemoryBackend(protocol, transport, host, port)

    def refuse(self, reason: Optional[Exception] = None) -> None:
        """Fail the oldest connectTCP not yet answered."""
        _, _, factory, _, _ = self.reactor.tcpClients[self._accepted]
        self._accepted += 1
        factory.clientConnectionFailed(None, Failure(reason or ConnectionRefusedError()))

    def backend(self, backend_id: str):
        for group in self.core.groups.values():
            found = group.get(backend_id)
            if found is not None:
                return found
        raise KeyError(backend_id)
