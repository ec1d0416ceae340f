"""Strict parsing: ambiguous or malformed requests are refused and never forwarded."""

from __future__ import annotations

import pytest

from speedproxy import __version__
from speedproxy.testing import HTTPBackend, ProxyProcess, RawClient, RawResponse

MAX_HEADER = 4 * 1024
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def strict(module_stack):
    origin = module_stack.backend(name="strict-origin")
    proxy = module_stack.proxy(origin, max_header_size="4KiB", max_body_size="64KiB")
    return proxy, origin


def _warm(proxy: ProxyProcess) -> None:
    """Leave an idle pooled upstream connection, so nothing hides behind a slow connect."""
    with RawClient(*proxy.address) as client:
        client.request("GET", "/warm")
        assert client.read_response().status == 200


def _refused(proxy: ProxyProcess, origin: HTTPBackend, data: bytes) -> RawResponse:
    _warm(proxy)
    origin.reset()
    with RawClient(*proxy.address) as client:
        client.send(data)
        response = client.read_response()
        # The connection is closed after a refusal: nothing else follows.
        assert client.wait_closed(5.0) == b""
    return response


def _assert_json_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.header("Content-Type") == "application/json"
    assert response.header("X-Speedproxy") == __version__
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.header("X-Request-Id")


HEAD_ATTACKS = {
    "cl-and-te": b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    "te-and-cl": b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two-content-lengths": b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "cl-abc": b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc",
    "cl-negative": b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nabc",
    "cl-list": b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\na",
    "obs-fold": b"GET /s HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  continued\r\n\r\n",
    "space-before-colon": b"GET /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "missing-host": b"GET /s HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
    "two-hosts": b"GET /s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}

BODY_ATTACKS = {
    "chunk-size-zz": b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-0x10": b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n0123456789abcdef\r\n0\r\n\r\n",
    "chunk-bare-lf": b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
}

@pytest.mark.parametrize("data", HEAD_ATTACKS.values(), ids=HEAD_ATTACKS.keys())
def test_ambiguous_head_is_refused(strict, data: bytes) -> None:
    proxy, origin = strict
    response = _refused(proxy, origin, data)
    _assert_json_error(response, 400, "bad_request")
    assert origin.heads == []
    assert origin.requests == []


@pytest.mark.parametrize("data", BODY_ATTACKS.values(), ids=BODY_ATTACKS.keys())
def test_malformed_chunking_is_refused(strict, data: bytes) -> None:
    proxy, origin = strict
    response = _refused(proxy, origin, data)
    _assert_json_error(response, 400, "bad_request")
    # Even with an idle pooled upstream connection ready, not even the head
    # of a request whose first body bytes are malformed reaches a backend.
    assert origin.heads == []
    assert origin.requests == []


def test_bad_chunk_after_forwarded_head_drops_the_upstream_connection(strict) -> None:
    proxy, origin = strict
    _warm(proxy)
    origin.reset()
    with RawClient(*proxy.address) as client:
        client.send(b"POST /late-bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        # A streamed body: the head (and first chunk) go upstream at once.
        origin.wait_for(lambda b: ("POST", "/late-bad") in b.heads, 5.0, "the forwarded head")
        carrying = origin.head_connections[origin.heads.index(("POST", "/late-bad"))]
        client.send(b"zz\r\nabc\r\n0\r\n\r\n")
        response = client.read_response()
        assert client.wait_closed(5.0) == b""
    _assert_json_error(response, 400, "bad_request")
    assert origin.requests == []  # the backend never got a complete request
    # The upstream connection holding the half request is closed, not leaked.
    origin.wait_for(lambda b: carrying in b.closed_connections, 3.0, "the upstream connection to close")


def test_oversized_head_is_431(strict) -> None:
    proxy, origin = strict
    data = b"GET /big-head HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * (MAX_HEADER + 100) + b"\r\n\r\n"
    response = _refused(proxy, origin, data)
    _assert_json_error(response, 431, "request_header_fields_too_large")
    assert origin.heads == []


def test_oversized_head_without_end_is_431(strict) -> None:
    proxy, origin = strict
    origin.reset()
    with RawClient(*proxy.address) as client:
        client.send(b"GET /big-head HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * (MAX_HEADER + 100))
        response = client.read_response()
    _assert_json_error(response, 431, "request_header_fields_too_large")
    assert origin.heads == []


def test_head_just_under_limit_is_accepted(strict) -> None:
    proxy, origin = strict
    with RawClient(*proxy.address) as client:
        client.request("GET", "/medium-head", headers=[("X-Filler", "a" * (MAX_HEADER - 200))])
        response = client.read_response()
    assert response.status == 200


def test_content_length_over_max_body_is_413(strict) -> None:
    proxy, origin = strict
    data = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    response = _refused(proxy, origin, data + b"x" * 1000)
    _assert_json_error(response, 413, "content_too_large")
    assert origin.requests == []


def test_chunked_over_max_body_is_413(strict) -> None:
    proxy, origin = strict
    origin.reset()
    chunk = b"a" * 16 * 1024
    with RawClient(*proxy.address) as client:
        client.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        response = None
        try:
            for _ in range(8):  # 128 KiB, twice the limit
                client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            client.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = client.read_response()
    _assert_json_error(response, 413, "content_too_large")
    assert origin.requests == []


def test_body_at_max_body_is_accepted(strict) -> None:
    proxy, origin = strict
    with RawClient(*proxy.address) as client:
        client.request("POST", "/upload-ok", body=b"b" * MAX_BODY)
        response = client.read_response()
    assert response.status == 200
    assert response.json()["body_length"] == MAX_BODY
