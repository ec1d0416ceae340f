"""Fakes shared by the unit tests of the edge limit filters."""

from __future__ import annotations

from typing import Optional

from speedproxy.filters.messages import FilterRequest
from speedproxy.proxy.http1 import parse_request_head


class FakeExchange:
    """What :class:`FilterRequest` reads of an exchange."""

    def __init__(self, head: bytes, client_ip: str = "192.0.2.7", client: object = None) -> None:
        self.request = parse_request_head(head)
        self.client_ip = client_ip
        self.request_id = b"rid-1"
        self.route = None
        self.client = client if client is not None else object()


def filter_request(
    path: str = "/a", headers: str = "", client_ip: str = "192.0.2.7", client: Optional[object] = None
) -> FilterRequest:
    head = f"GET {path} HTTP/1.1\r\nHost: h\r\n{headers}".rstrip("\r\n").encode("latin-1")
    return FilterRequest(FakeExchange(head, client_ip, client))


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
