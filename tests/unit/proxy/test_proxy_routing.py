"""Tests for :mod:`speedproxy.routing` (the Router the data path uses)."""

from __future__ import annotations

import textwrap
from typing import Optional

import pytest

from speedproxy.config import parse_config
from speedproxy.routing import Router, build_routes, normalise_host
from speedproxy.upstreams import build_groups

CONFIG = """\
backends:
  default:
    - {id: d1, host: 10.9.0.1, port: 80}
  api:
    - {id: a1, host: 10.9.0.2, port: 80}
  apiv2:
    - {id: a2, host: 10.9.0.3, port: 80}
  static:
    - {id: s1, host: 10.9.0.4, port: 80}
  tenant:
    - {id: t1, host: 10.9.0.5, port: 80}
  exact:
    - {id: e1, host: 10.9.0.6, port: 80}
routing:
  root: {path: /, upstream: default}
  api: {path: /api, upstream: api}
  apiv2: {path: /api/v2, upstream: apiv2}
  static_host: {path: /, host: static.example.com, upstream: static}
  tenant: {path: /, host: "*.tenants.example.com", upstream: tenant}
  exact_api: {path: /api/v2/special, host: Exact.Example.COM, upstream: exact}
"""


def make_router(text: str = CONFIG) -> Router:
    config = parse_config(textwrap.dedent(text))
    groups = build_groups(config.backends)
    return Router(build_routes(config.routing, groups))


def routed(router: Router, host: bytes, path: bytes) -> Optional[str]:
    route = router.match(host, path)
    return None if route is None else route.name


@pytest.mark.parametrize(
    "host,path,expected",
    [
        (b"www.example.com", b"/", "root"),
        (b"www.example.com", b"/index.html", "root"),
        (b"www.example.com", b"/api", "api"),
        (b"www.example.com", b"/api/users", "api"),
        (b"www.example.com", b"/api/v2/users", "apiv2"),
        (b"www.example.com", b"/api/v2/special", "apiv2"),
        (b"static.example.com", b"/api/v2/x", "static_host"),
        (b"STATIC.example.com", b"/", "static_host"),
        (b"static.example.com:8080", b"/a", "static_host"),
        (b"a.tenants.example.com", b"/api", "tenant"),
        (b"a.b.tenants.example.com:443", b"/", "tenant"),
        (b"tenants.example.com", b"/api", "api"),  # the wildcard needs a label
        (b"xtenants.example.com", b"/", "root"),
        (b"exact.example.com", b"/api/v2/special/x", "exact_api"),
        (b"exact.example.com", b"/api/v2", "apiv2"),  # host route's path misses: fall back
        (b"", b"/api", "api"),
    ],
)
def test_routing(host: bytes, path: bytes, expected: str) -> None:
    assert routed(make_router(), host, path) == expected


def test_host_routes_sorted_first_then_longest_prefix() -> None:
    router = make_router()
    names = [route.name for route in router.routes]
    assert names[:3] == ["exact_api", "static_host", "tenant"]
    assert names[3:] == ["apiv2", "api", "root"]


def test_no_match() -> None:
    router = make_router(
        """\
        backends:
          default: [{id: d1, host: 10.9.0.1, port: 80}]
        routing:
          api: {path: /api, upstream: default}
          h: {path: /, host: only.example.com, upstream: default}
        """
    )
    assert routed(router, b"other.example.com", b"/") is None
    assert routed(router, b"other.example.com", b"/ap") is None
    assert routed(router, b"only.example.com", b"/") == "h"


def test_single_hostless_route() -> None:
    router = make_router(
        """\
        backends:
          default: [{id: d1, host: 10.9.0.1, port: 80}]
        routing:
          api: {path: /api, upstream: default}
        """
    )
    assert routed(router, b"anything", b"/api/x") == "api"
    assert routed(router, b"anything", b"/x") is None


def test_single_host_route() -> None:
    router = make_router(
        """\
        backends:
          default: [{id: d1, host: 10.9.0.1, port: 80}]
        routing:
          h: {path: /, host: a.example.com, upstream: default}
        """
    )
    assert routed(router, b"a.example.com:80", b"/") == "h"
    assert routed(router, b"b.example.com", b"/") is None


def test_route_groups() -> None:
    route = make_router().match(b"x", b"/api/v2")
    assert route is not None
    assert [b.id for b in route.http.group.backends] == ["a2"]
    assert route.http.balancer_name == "least_connections_weight"
    assert route.websocket.balancer_name == "ip_hash"
    assert route.sse.balancer_name == "ip_hash"


@pytest.mark.parametrize(
    "host,expected",
    [
        (b"Example.COM", b"example.com"),
        (b"example.com:8080", b"example.com"),
        (b"[::1]:8080", b"[::1]"),
        (b"[2001:DB8::1]", b"[2001:db8::1]"),
        (b"10.0.0.1:80", b"10.0.0.1"),
        (b"", b""),
    ],
)
def test_normalise_host(host: bytes, expected: bytes) -> None:
    assert normalise_host(host) == expected
