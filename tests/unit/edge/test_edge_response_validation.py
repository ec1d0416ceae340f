"""``expect_content_type``: answers of another type are backend failures
(:mod:`speedproxy.edge.response_validation`, ``Exchange.unexpected_response``)."""

from __future__ import annotations

import json

import pytest

from speedproxy.edge.response_validation import ContentTypeCheck
from speedproxy.proxy.http1 import ResponseHead
from speedproxy.testing import InMemoryProxy

CONFIG = """\
server: {retries: %d}
backends:
  images:
    - {id: b1, host: 10.1.0.1, port: 8081}
    - {id: b2, host: 10.1.0.2, port: 8081}
upstreams:
  images: {expect_content_type: [image/*, application/octet-stream]}
routing:
  images: {path: /, upstream: images, load_balancer: round_robin, cache: {enabled: true, default_ttl: 1h}}
"""

GET = b"GET /t/p/w500/poster.jpg HTTP/1.1\r\nHost: h\r\n\r\n"
HTML = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: max-age=600\r\nContent-Length: 12\r\n\r\n<html>x</html>"[:-2]
JPEG = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nCache-Control: max-age=600\r\nContent-Length: 4\r\n\r\nJPEG"


def head(status: int, content_type: bytes = b"") -> ResponseHead:
    made = ResponseHead()
    made.status = status
    made.headers = [(b"Content-Type", content_type)] if content_type else []
    made.lowered = [b"content-type"] if content_type else []
    return made


@pytest.mark.parametrize(
    "status,content_type,rejected",
    [
        (200, b"image/jpeg", False),
        (200, b"IMAGE/PNG; charset=binary", False),
        (206, b"image/webp", False),
        (200, b"application/octet-stream", False),
        (200, b"text/html; charset=utf-8", True),
        (200, b"application/json", True),
        (200, b"", True),  # no Content-Type at all
        (203, b"text/html", True),
        (204, b"", False),
        (304, b"", False),
        (302, b"text/html", False),
        (404, b"application/json", False),
        (503, b"text/html", False),
    ],
)
def test_rejects(status: int, content_type: bytes, rejected: bool) -> None:
    check = ContentTypeCheck(("image/*", "application/octet-stream"))
    assert check.rejects(head(status, content_type)) is rejected


def test_reason_names_what_came_and_what_was_expected() -> None:
    check = ContentTypeCheck(("image/*",))
    assert check.reason(head(200, b"text/html")) == "the backend answered with Content-Type text/html, expected image/*"
    assert check.reason(head(200)) == "the backend answered with Content-Type none, expected image/*"


def test_a_wrong_type_is_retried_on_the_next_backend_and_never_stored() -> None:
    proxy = InMemoryProxy(CONFIG % 2)
    client = proxy.client()
    client.send(GET)
    first = proxy.accept()
    first.send(HTML)
    assert first.protocol.transport.disconnecting or first.transport.disconnecting  # its body is dropped
    second = proxy.accept()
    assert second.port == 8081 and second.host != first.host
    second.send(JPEG)
    response = client.response()
    assert response.status == 200 and response.body == b"JPEG"
    assert b"stored" in response.header(b"Cache-Status")
    assert proxy.backend(first.host == "10.1.0.1" and "b1" or "b2").consecutive_failures == 1
    # What is stored is the image, never the page.
    again = proxy.client()
    again.send(GET)
    hit = again.response()
    assert hit.header(b"Cache-Status").startswith(b"speedproxy; hit") and hit.body == b"JPEG"


def test_when_no_retry_is_left_the_client_gets_a_502_naming_the_type() -> None:
    proxy = InMemoryProxy(CONFIG % 0)
    client = proxy.client()
    client.send(GET)
    proxy.accept().send(HTML)
    response = client.response()
    assert response.status == 502
    body = json.loads(response.body)
    assert body["error"] == "bad_gateway"
    assert body["detail"] == "the backend answered with Content-Type text/html, expected image/*, application/octet-stream"
    assert proxy.core.cache.memory.peek(b"http://h/t/p/w500/poster.jpg") is None
    assert proxy.pending_connects() == 0


TWO = """\
server: {retries: 0}
backends:
  images:
    - {id: b1, host: 10.1.0.1, port: 8081, health_check: {passive_failures: 3}}
    - {id: b2, host: 10.1.0.2, port: 8081, health_check: {passive_failures: 3}}
upstreams:
  images: {expect_content_type: [image/*]}
routing:
  images: {path: /, upstream: images, load_balancer: round_robin}
"""


def _serve(proxy: InMemoryProxy, connections: list) -> int:
    """One request; b1 answers a page, b2 an image; returns the status."""
    client = proxy.client()
    client.send(b"GET /a.jpg HTTP/1.1\r\nHost: h\r\n\r\n")
    if proxy.pending_connects():
        connections.append(proxy.accept())
    connection = next(c for c in connections if c.received())
    connection.take()
    connection.send(HTML if connection.host == "10.1.0.1" else JPEG)
    return client.response().status


def test_passive_health_takes_a_backend_answering_wrong_types_out() -> None:
    proxy = InMemoryProxy(TWO)
    connections: list = []
    statuses = [_serve(proxy, connections) for _ in range(6)]  # round robin: 3 each
    assert sorted(statuses) == [200, 200, 200, 502, 502, 502]
    assert proxy.backend("b1").consecutive_failures == 3
    assert not proxy.backend("b1").available
    before = len([c for c in connections if c.host == "10.1.0.1"])
    assert [_serve(proxy, connections) for _ in range(4)] == [200] * 4  # only b2 is asked now
    assert len([c for c in connections if c.host == "10.1.0.1"]) == before
