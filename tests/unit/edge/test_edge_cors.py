"""Tests for :mod:`speedproxy.edge.cors`: preflights here, CORS headers on every answer."""

from __future__ import annotations

import pytest

from speedproxy.config.model import CorsConfig
from speedproxy.edge.cors import CorsPolicy

from edge_support import error_of, proxy_with, refused

ROUTES = """\
api:
  path: /api/
  upstream: default
  cors:
    origins: ["https://player.example.com", "https://*.example.org", "http://localhost:8000"]
    methods: [GET, HEAD, POST]
    headers: [Range, X-Player]
    expose: [Content-Length, Content-Range]
    max_age: 10m
cached:
  path: /cached/
  upstream: default
  cache: {enabled: true}
  cors: {origins: ["https://player.example.com"], credentials: true}
plain: {path: /, upstream: default}
"""

PREFLIGHT = (
    b"OPTIONS /api/x HTTP/1.1\r\nHost: h\r\nOrigin: %s\r\nAccess-Control-Request-Method: %s\r\n"
    b"Access-Control-Request-Headers: %s\r\n\r\n"
)


@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("https://player.example.com", True),
        ("https://PLAYER.example.com", True),
        ("http://player.example.com", False),  # another scheme is another origin
        ("https://player.example.com:8443", False),
        ("https://a.example.org", True),
        ("https://a.b.example.org", True),
        ("https://example.org", False),  # *. needs a subdomain
        ("https://evil-example.org", False),
        ("https://a.example.org:444", False),
        ("http://localhost:8000", True),
        ("http://localhost", False),
        ("null", False),
    ],
)
def test_origins_match_exactly_or_by_subdomain(origin: str, allowed: bool) -> None:
    policy = CorsPolicy(
        CorsConfig(origins=("https://player.example.com", "https://*.example.org", "http://localhost:8000"))
    )
    assert policy.allows(origin.encode()) is allowed


def test_every_origin_without_credentials_is_answered_with_a_wildcard() -> None:
    policy = CorsPolicy(CorsConfig(origins=("*",)))
    assert policy.answer_lines(b"https://x.test") == [(b"Access-Control-Allow-Origin", b"*")]
    assert policy.answer_lines(None) == []


def test_a_listed_preflight_is_answered_here_with_204() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("192.0.2.1")
    client.send(PREFLIGHT % (b"https://player.example.com", b"GET", b"range, x-player"))
    response = client.response()
    assert response.status == 204
    assert response.header(b"access-control-allow-origin") == b"https://player.example.com"
    assert response.header(b"access-control-allow-methods") == b"GET, HEAD, POST"
    assert response.header(b"access-control-allow-headers") == b"range, x-player"
    assert response.header(b"access-control-max-age") == b"600"
    assert response.header(b"access-control-allow-credentials") is None
    assert b"Origin" in response.header(b"vary")
    assert response.header(b"content-length") is None and response.body == b""
    assert proxy.pending_connects() == 0
    assert refused(proxy, "api")["cors"] == 0


@pytest.mark.parametrize(
    "origin, method, headers, detail",
    [
        (b"https://evil.example.net", b"GET", b"range", b"origin"),
        (b"https://player.example.com", b"DELETE", b"range", b"method"),
        (b"https://player.example.com", b"GET", b"range, x-secret", b"x-secret"),
    ],
)
def test_a_refused_preflight_is_a_403_without_cors_headers(origin: bytes, method: bytes, headers: bytes, detail: bytes) -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("192.0.2.1")
    client.send(PREFLIGHT % (origin, method, headers))
    response = client.response()
    assert response.status == 403
    assert error_of(response) == "cors_refused" and detail in response.body
    assert not [name for name, _ in response.headers if name.lower().startswith(b"access-control-")]
    assert proxy.pending_connects() == 0
    assert refused(proxy, "api")["cors"] == 1


def test_a_listed_origin_gets_cors_headers_on_the_backend_answer_and_backend_ones_are_dropped() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("192.0.2.1")
    client.send(b"GET /api/x HTTP/1.1\r\nHost: h\r\nOrigin: https://a.example.org\r\n\r\n")
    backend = proxy.accept()
    backend.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nAccess-Control-Allow-Origin: *\r\n"
        b"Access-Control-Allow-Credentials: true\r\nVary: Accept-Encoding\r\n\r\nok"
    )
    response = client.response()
    assert response.all(b"access-control-allow-origin") == [b"https://a.example.org"]
    assert response.header(b"access-control-allow-credentials") is None
    assert response.header(b"access-control-expose-headers") == b"Content-Length, Content-Range"
    assert response.all(b"vary") == [b"Accept-Encoding", b"Origin"]
    assert response.body == b"ok"


def test_a_backend_cors_field_is_dropped_when_it_is_the_first_field() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("192.0.2.1")
    client.send(b"GET /api/x HTTP/1.1\r\nHost: h\r\nOrigin: https://a.example.org\r\n\r\n")
    proxy.accept().send(b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nok")
    response = client.response()
    assert response.all(b"access-control-allow-origin") == [b"https://a.example.org"]
    assert response.body == b"ok"


def test_an_unlisted_origin_gets_no_cors_headers_at_all() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("192.0.2.1")
    client.send(b"GET /api/x HTTP/1.1\r\nHost: h\r\nOrigin: https://evil.example.net\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nAccess-Control-Allow-Origin: *\r\n\r\nok")
    response = client.response()
    assert response.status == 200
    assert not [name for name, _ in response.headers if name.lower().startswith(b"access-control-")]
    assert response.header(b"vary") == b"Origin"


def test_the_proxys_own_errors_carry_the_cors_headers() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("192.0.2.1")
    client.send(b"GET /api/x HTTP/1.1\r\nHost: h\r\nOrigin: https://player.example.com\r\n\r\n")
    while proxy.pending_connects():  # one backend: refused, then nothing left to try
        proxy.refuse()
    response = client.response()
    assert response.status == 502
    assert response.header(b"access-control-allow-origin") == b"https://player.example.com"


def test_cache_hits_get_the_headers_of_their_own_request() -> None:
    proxy = proxy_with(ROUTES)
    first = proxy.client("192.0.2.1")
    first.send(b"GET /cached/x HTTP/1.1\r\nHost: h\r\nOrigin: https://player.example.com\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok")
    response = first.response()
    assert response.header(b"access-control-allow-origin") == b"https://player.example.com"
    assert response.header(b"access-control-allow-credentials") == b"true"
    # A hit for another (unlisted) origin: no CORS headers, though the first answer had them.
    second = proxy.client("192.0.2.2")
    second.send(b"GET /cached/x HTTP/1.1\r\nHost: h\r\nOrigin: https://evil.example.net\r\n\r\n")
    hit = second.response()
    assert b"hit" in hit.header(b"cache-status")
    assert hit.header(b"access-control-allow-origin") is None
    assert hit.header(b"vary") == b"Origin"
    # ...and for the listed one again: its own.
    third = proxy.client("192.0.2.3")
    third.send(b"GET /cached/x HTTP/1.1\r\nHost: h\r\nOrigin: https://player.example.com\r\n\r\n")
    again = third.response()
    assert b"hit" in again.header(b"cache-status")
    assert again.all(b"access-control-allow-origin") == [b"https://player.example.com"]
    assert proxy.pending_connects() == 0


def test_a_route_without_cors_passes_preflights_to_the_backend() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("192.0.2.1")
    client.send(
        b"OPTIONS /other HTTP/1.1\r\nHost: h\r\nOrigin: https://player.example.com\r\n"
        b"Access-Control-Request-Method: GET\r\n\r\n"
    )
    backend = proxy.accept()
    assert backend.received().startswith(b"OPTIONS /other")


def test_backend_cors_fields_stored_with_a_response_are_never_shown_on_hits() -> None:
    proxy = proxy_with(ROUTES)
    first = proxy.client("192.0.2.1")
    first.send(b"GET /cached/y HTTP/1.1\r\nHost: h\r\n\r\n")
    proxy.accept().send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n"
        b"Access-Control-Allow-Origin: *\r\nX-Other: 1\r\n\r\nok"
    )
    assert first.response().header(b"access-control-allow-origin") is None
    second = proxy.client("192.0.2.2")
    second.send(b"GET /cached/y HTTP/1.1\r\nHost: h\r\nOrigin: https://evil.example.net\r\n\r\n")
    hit = second.response()
    assert b"hit" in hit.header(b"cache-status")
    assert hit.header(b"access-control-allow-origin") is None and hit.header(b"x-other") == b"1"
