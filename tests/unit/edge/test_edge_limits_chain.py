"""The limit filters on a route's chain, through an in-memory proxy: order, bare path, reload, counts."""

from __future__ import annotations

from speedproxy.config import parse_config
from speedproxy.edge.connection_limit import ConnectionLimitFilter
from speedproxy.edge.rate_limit import RateLimitFilter
from speedproxy.edge.sessions import SessionsFilter

from edge_support import BASE, error_of, proxy_with, refused

ROUTES = """\
limited:
  path: /v/
  upstream: default
  signed_urls: {secrets: ["0123456789abcdef0123"]}
  sessions: {required: false}
  rate_limit: {requests: 2, per: 1h, key: session}
  connection_limit: {per_client: 5}
open: {path: /, upstream: default}
"""


def _route(proxy, name):
    return next(route for route in proxy.core.routes if route.name == name)


def test_order_and_the_bare_path() -> None:
    proxy = proxy_with(ROUTES)
    kinds = [type(f).__name__ for f in _route(proxy, "limited").filters.filters]
    assert kinds == ["SignedUrlFilter", "SessionsFilter", "RateLimitFilter", "ConnectionLimitFilter"]
    assert _route(proxy, "open").filters is None  # nothing added to a route without the keys


def test_refusals_are_counted_per_route_and_reason() -> None:
    proxy = proxy_with("v: {path: /, upstream: default, rate_limit: {requests: 1, per: 1h}}\n")
    client = proxy.client("192.0.2.7")
    client.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    client.take()
    client.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    response = client.response()
    assert response.status == 429 and error_of(response) == "rate_limited"
    assert response.header(b"retry-after") == b"3600"
    assert proxy.pending_connects() == 0
    assert refused(proxy, "v")["rate_limit"] == 1


def test_a_reload_keeps_the_chain_unless_a_limit_changed() -> None:
    proxy = proxy_with(ROUTES)
    before = _route(proxy, "limited").filters
    proxy.core.apply_config(proxy.config)
    assert _route(proxy, "limited").filters is before
    changed = parse_config(BASE + "routing:\n  limited: {path: /v/, upstream: default, rate_limit: {requests: 9}}\n")
    proxy.core.apply_config(changed)
    filters = _route(proxy, "limited").filters.filters
    assert [type(f) for f in filters] == [RateLimitFilter]
    assert filters[0].config.requests == 9
    assert not any(isinstance(f, (SessionsFilter, ConnectionLimitFilter)) for f in filters)
