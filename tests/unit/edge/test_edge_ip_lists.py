"""Tests for :mod:`speedproxy.edge.ip_lists`: allow/deny per route and for the host."""

from __future__ import annotations

import pytest

from speedproxy.edge.ip_lists import DENIED, NOT_ALLOWED, AddressRules, IpListFilter, parse_address

from edge_support import error_of, proxy_with, refused

ROUTES = """\
lan:
  path: /lan/
  upstream: default
  allow: ["192.0.2.0/24", "2001:db8::/32"]
  deny: ["192.0.2.66"]
open: {path: /, upstream: default}
"""


@pytest.mark.parametrize(
    "address, verdict",
    [
        ("192.0.2.7", None),
        ("192.0.2.66", DENIED),
        ("198.51.100.1", NOT_ALLOWED),
        ("2001:db8::1", None),
        ("2001:db9::1", NOT_ALLOWED),
        ("::ffff:192.0.2.7", None),  # IPv4-mapped: matched as IPv4
    ],
)
def test_deny_wins_and_an_allow_list_keeps_everyone_else_out(address: str, verdict: str) -> None:
    rules = AddressRules(["192.0.2.0/24", "2001:db8::/32"], ["192.0.2.66/32"])
    assert rules.verdict(parse_address(address)) == verdict


def test_an_empty_allow_list_lets_every_address_not_denied_in() -> None:
    rules = AddressRules((), ["10.0.0.0/8"])
    assert rules.verdict(parse_address("10.2.3.4")) == DENIED
    assert rules.verdict(parse_address("11.2.3.4")) is None
    assert not AddressRules()


def test_host_lists_apply_before_the_route_lists_and_both_must_pass() -> None:
    host = AddressRules(["10.0.0.0/8"], ["10.9.0.0/16"])
    route = AddressRules(["10.1.0.0/16", "10.9.0.0/16"])
    flt = IpListFilter(None, [host, route])
    assert flt.verdict("10.1.2.3") is None
    assert flt.verdict("10.2.2.3") == NOT_ALLOWED  # host allows it, the route does not
    assert flt.verdict("10.9.1.1") == DENIED  # the route allows it, the host denies it
    assert flt.verdict("not an address") == NOT_ALLOWED


def test_verdicts_are_remembered_but_the_memory_is_bounded() -> None:
    from speedproxy.edge import ip_lists

    flt = IpListFilter(None, [AddressRules(["10.0.0.0/8"])])
    for n in range(ip_lists.MEMO + 10):
        flt.verdict("10.0.%d.%d" % (n // 256, n % 256))
    assert len(flt._memo) <= ip_lists.MEMO


def test_a_refused_address_gets_a_json_403_and_no_backend_is_asked() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("198.51.100.9")
    client.send(b"GET /lan/x HTTP/1.1\r\nHost: h\r\n\r\n")
    response = client.response()
    assert response.status == 403
    assert response.header(b"content-type") == b"application/json"
    assert error_of(response) == "ip_refused"
    assert b"198.51.100.9" in response.body
    assert proxy.pending_connects() == 0
    assert refused(proxy, "lan")["ip"] == 1
    assert refused(proxy, "open")["ip"] == 0


def test_an_allowed_address_goes_to_the_backend() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("192.0.2.7")
    client.send(b"GET /lan/x HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.response().body == b"ok"


def test_the_real_client_address_is_checked_not_the_trusted_proxy() -> None:
    proxy = proxy_with(ROUTES)
    client = proxy.client("127.0.0.1")  # a trusted proxy (the default trusted_proxies)
    client.send(b"GET /lan/x HTTP/1.1\r\nHost: h\r\nX-Real-IP: 192.0.2.66\r\n\r\n")
    response = client.response()
    assert response.status == 403 and b"192.0.2.66 is denied" in response.body


def test_a_route_without_lists_has_no_filter_unless_the_host_has_lists() -> None:
    proxy = proxy_with(ROUTES)
    routes = {route.name: route for route in proxy.core.routes}
    assert routes["open"].filters is None  # the bare path
    proxy = proxy_with(ROUTES, server="deny: ['203.0.113.0/24']\n")
    routes = {route.name: route for route in proxy.core.routes}
    assert routes["open"].filters is not None
    client = proxy.client("203.0.113.5")
    client.send(b"GET /anything HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.response().status == 403
    assert refused(proxy, "open")["ip"] == 1
