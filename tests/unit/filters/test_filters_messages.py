"""Tests for :mod:`speedproxy.filters.messages` and the registry."""

from __future__ import annotations

import pytest

from speedproxy.filters import FilterResponse, LocalResponse, find_filter_kind
from speedproxy.filters.messages import FilterRequest
from speedproxy.proxy.http1 import parse_request_head, parse_response_head


class _Exchange:
    def __init__(self, head: bytes) -> None:
        self.request = parse_request_head(head)
        self.client_ip = "192.0.2.7"
        self.request_id = b"rid-1"
        self.route = None


def test_request_view() -> None:
    view = FilterRequest(_Exchange(b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nX-A: 1\r\nx-a: 2"))
    assert (view.method, view.path, view.query, view.host) == ("GET", "/a/b", "x=1", "Example.com")
    assert (view.client_ip, view.request_id, view.route) == ("192.0.2.7", "rid-1", "")
    assert view.header("X-a") == "1"
    view.set_header("X-A", "3")
    view.set_header("X-New", "v")
    assert view.headers() == [("Host", "Example.com"), ("X-A", "3"), ("X-New", "v")]
    view.remove_header("x-new")
    assert view.header("X-New") is None


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Host", "Connection", "Upgrade"])
def test_framing_fields_are_the_proxys(name: str) -> None:
    view = FilterRequest(_Exchange(b"GET / HTTP/1.1\r\nHost: h"))
    with pytest.raises(ValueError, match="cannot set"):
        view.set_header(name, "1")
    with pytest.raises(ValueError, match="cannot remove"):
        view.remove_header(name)
    with pytest.raises(ValueError, match="cannot set"):
        LocalResponse(200, [(name, "1")])


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "\x00"])
def test_no_header_injection(value: str) -> None:
    view = FilterRequest(_Exchange(b"GET / HTTP/1.1\r\nHost: h"))
    with pytest.raises(ValueError, match="control character"):
        view.set_header("X-A", value)


def test_response_view() -> None:
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: x")
    view = FilterResponse(head)
    view.status = 404
    view.set_header("Cache-Status", "speedproxy; hit")
    assert head.status == 404
    assert head.headers[-1] == (b"Cache-Status", b"speedproxy; hit")
    assert head.lowered[-1] == b"cache-status"
    with pytest.raises(ValueError):
        view.status = 101


def test_local_response_checks() -> None:
    with pytest.raises(ValueError):
        LocalResponse(101)
    with pytest.raises(TypeError):
        LocalResponse(200, body="text")  # type: ignore[arg-type]


def test_unknown_filter_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown filter 'nobody.nothing'"):
        find_filter_kind("nobody.nothing")
