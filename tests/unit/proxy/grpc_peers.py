"""In-memory peers of the gRPC relay's unit tests: an HTTP/2 client of the proxy and
HTTP/2 backends (the h2 library on both), on :class:`speedproxy.testing.InMemoryProxy`."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)

from speedproxy.testing import InMemoryProxy

CONFIG = """
server:
  max_header_size: 4KiB
  upstream_connect_timeout: 5s
  retries: 2
backends:
  web: [{id: w1, host: 10.1.0.1, port: 8081}]
  rpc: [{id: g1, host: 10.2.0.1, port: 50051, scheme: h2c}]
  pair:
    - {id: p1, host: 10.3.0.1, port: 50051, scheme: h2c}
    - {id: p2, host: 10.3.0.2, port: 50051, scheme: h2c}
routing:
  web: {path: /, upstream: web}
  rpc: {path: /pkg.Svc/, upstream: rpc, protocols: {grpc: round_robin}}
  pair: {path: /pkg.Pair/, upstream: pair, protocols: {grpc: round_robin}}
"""
GRPC = (b"content-type", b"application/grpc")


def message(data: bytes) -> bytes:
    """One length-prefixed gRPC message."""
    return b"\0" + len(data).to_bytes(4, "big") + data


class Client:
    """An HTTP/2 client on an in-memory connection to the proxy."""

    def __init__(self, proxy: InMemoryProxy, reading: bool = True) -> None:
        self.proxy = proxy
        self.memory = proxy.client("10.9.9.9")
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.events: List[Any] = []
        self.reading = reading
        self.memory.send(self.h2.data_to_send())
        self.pump()

    @property
    def protocol(self) -> Any:
        return getattr(self.memory.transport, "protocol", self.memory.protocol)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.protocol.dataReceived(data)

    def pump(self) -> List[Any]:
        self.proxy.reactor.advance(0)
        data = self.memory.transport.value()
        self.memory.transport.clear()
        new = self.h2.receive_data(data) if data else []
        self.events += new
        if self.reading:
            for event in new:
                if isinstance(event, DataReceived) and event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        return new

    def call(self, path: str = "/pkg.Svc/Do", body: Optional[bytes] = b"hi", extra: Tuple = (), end: bool = True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        fields = [(b":method", b"POST"), (b":path", path.encode()), (b":scheme", b"http"),
                  (b":authority", b"api.test"), GRPC, (b"te", b"trailers")] + list(extra)
        self.h2.send_headers(stream_id, fields, end_stream=body is None and end)
        if body is not None:
            self.h2.send_data(stream_id, message(body), end_stream=end)
        self.flush()
        self.pump()
        return stream_id

    def answer(self, stream_id: int) -> Dict[str, Any]:
        got: Dict[str, Any] = {"head": None, "body": b"", "trailers": None, "ended": False, "reset": None}
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, ResponseReceived):
                got["head"] = dict(event.headers)
                if event.stream_ended is not None:
                    got["trailers"] = got["head"]  # trailers-only
            elif isinstance(event, DataReceived):
                got["body"] += event.data
            elif isinstance(event, TrailersReceived):
                got["trailers"] = dict(event.headers)
            elif isinstance(event, StreamEnded):
                got["ended"] = True
            elif isinstance(event, StreamReset):
                got["reset"] = event.error_code
        return got


class Backend:
    """An accepted upstream connection, served with h2 (server side)."""

    def __init__(self, proxy: InMemoryProxy, settings: Optional[dict] = None) -> None:
        self.memory = proxy.accept()
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.events: List[Any] = []
        self.send()
        self.pump()

    @property
    def address(self) -> Tuple[str, int]:
        return self.memory.host, self.memory.port

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.memory.send(data)

    def pump(self) -> List[Any]:
        data = self.memory.take()
        new = self.h2.receive_data(data) if data else []
        self.events += new
        self.send()
        return new

    def request(self, stream_id: int = 1) -> Dict[bytes, bytes]:
        self.pump()
        for event in self.events:
            if isinstance(event, RequestReceived) and event.stream_id == stream_id:
                return dict(event.headers)
        raise AssertionError("no request on stream %d" % stream_id)

    def body(self, stream_id: int = 1) -> bytes:
        return b"".join(event.data for event in self.events if isinstance(event, DataReceived) and event.stream_id == stream_id)

    def reset_codes(self, stream_id: int = 1) -> List[int]:
        return [event.error_code for event in self.events if isinstance(event, StreamReset) and event.stream_id == stream_id]

    def respond(self, stream_id: int = 1, body: bytes = b"", status: bytes = b"0", end: bool = True) -> None:
        self.h2.send_headers(stream_id, [(b":status", b"200"), GRPC, (b"x-initial", b"1")])
        if body:
            self.h2.send_data(stream_id, message(body))
        if end:
            self.h2.send_headers(stream_id, [(b"grpc-status", status), (b"grpc-message", b"fine"), (b"x-trailer", b"2")], end_stream=True)
        self.send()


class Log:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
