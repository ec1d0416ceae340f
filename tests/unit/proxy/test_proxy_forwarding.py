"""Tests for :mod:`speedproxy.proxy.forwarding`."""

from __future__ import annotations

import ipaddress
from typing import Dict, List, Tuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from speedproxy.proxy.forwarding import (
    HOP_BY_HOP,
    ClientAddressResolver,
    client_response_head,
    sane_request_id,
    upstream_request_head,
)
from speedproxy.proxy.http1 import parse_request_head, parse_response_head

TAG = b"X-Speedproxy: 9.9\r\nVia: 1.1 speedproxy\r\n"


def upstream(headers: List[Tuple[bytes, bytes]], tokens: Tuple[bytes, ...] = (), **overrides: object) -> bytes:
    kwargs: Dict[str, object] = dict(
        peer="192.0.2.1",
        client_ip="198.51.100.7",
        scheme=b"http",
        host=b"example.com",
        request_id=b"rid-1",
        framing=b"",
    )
    kwargs.update(overrides)
    return upstream_request_head(b"GET", b"/p?q", headers, tokens, **kwargs)  # type: ignore[arg-type]


def fields(head: bytes) -> List[Tuple[bytes, bytes]]:
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")[1:]
    return [tuple(line.split(b": ", 1)) for line in lines]  # type: ignore[misc]


def names(head: bytes) -> List[bytes]:
    return [name.lower() for name, _ in fields(head)]


def values(head: bytes, name: bytes) -> List[bytes]:
    return [value for n, value in fields(head) if n.lower() == name]


# -- upstream request head ---------------------------------------------------------


def test_upstream_head_shape() -> None:
    head = upstream([(b"Host", b"example.com"), (b"Accept", b"*/*")], framing=b"Content-Length: 3\r\n")
    assert head == (
        b"GET /p?q HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"Accept: */*\r\n"
        b"X-Forwarded-For: 192.0.2.1\r\n"
        b"X-Real-IP: 198.51.100.7\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: example.com\r\n"
        b"Via: 1.1 speedproxy\r\n"
        b"X-Request-Id: rid-1\r\n"
        b"Content-Length: 3\r\n"
        b"\r\n"
    )
    # What we send must parse with our own strict parser.
    parsed = parse_request_head(head[:-4])
    assert parsed.content_length == 3


def test_always_sent_as_http11() -> None:
    assert upstream([]).startswith(b"GET /p?q HTTP/1.1\r\n")


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_stripped(name: bytes) -> None:
    head = upstream([(b"Host", b"h"), (name.title(), b"v"), (b"X-Keep", b"1")])
    assert name not in names(head)
    assert values(head, b"x-keep") == [b"1"]


def test_hop_by_hop_set_is_complete() -> None:
    assert HOP_BY_HOP >= {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }


def test_headers_named_in_connection_stripped() -> None:
    head = upstream(
        [(b"Connection", b"X-Secret, x-other"), (b"X-Secret", b"s"), (b"X-OTHER", b"o"), (b"X-Keep", b"k")],
        tokens=(b"x-secret", b"x-other"),
    )
    assert b"x-secret" not in names(head)
    assert b"x-other" not in names(head)
    assert b"connection" not in names(head)
    assert values(head, b"x-keep") == [b"k"]


def test_client_supplied_proxy_fields_replaced() -> None:
    head = upstream(
        [
            (b"X-Real-IP", b"6.6.6.6"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil"),
            (b"Content-Length", b"999"),
            (b"Expect", b"100-continue"),
            (b"x-request-id", b"client-id"),
        ]
    )
    assert values(head, b"x-real-ip") == [b"198.51.100.7"]
    assert values(head, b"x-forwarded-proto") == [b"http"]
    assert values(head, b"x-forwarded-host") == [b"example.com"]
    assert values(head, b"content-length") == []
    assert values(head, b"expect") == []
    assert values(head, b"x-request-id") == [b"rid-1"]


def test_xff_appended_to_existing_values() -> None:
    head = upstream([(b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3")])
    assert values(head, b"x-forwarded-for") == [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.1"]


def test_via_appended() -> None:
    head = upstream([(b"Via", b"1.0 fred"), (b"via", b"1.1 p.example.net")])
    assert values(head, b"via") == [b"1.0 fred, 1.1 p.example.net, 1.1 speedproxy"]


def test_ipv6_peer_and_https_scheme() -> None:
    head = upstream([], peer="2001:db8::1", client_ip="2001:db8::2", scheme=b"https")
    assert values(head, b"x-forwarded-for") == [b"2001:db8::1"]
    assert values(head, b"x-real-ip") == [b"2001:db8::2"]
    assert values(head, b"x-forwarded-proto") == [b"https"]


# -- client response head ------------------------------------------------------


def response(headers: List[Tuple[bytes, bytes]], tokens: Tuple[bytes, ...] = (), keep_alive: bool = True) -> bytes:
    return client_response_head(
        b"HTTP/1.1",
        200,
        b"OK",
        headers,
        tokens,
        request_id=b"rid-2",
        server_tag=TAG,
        framing=b"Content-Length: 2\r\n",
        keep_alive=keep_alive,
    )


def test_client_response_head_shape() -> None:
    head = response([(b"Content-Type", b"text/plain"), (b"Server", b"b")])
    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"Server: b\r\n"
        + TAG
        + b"X-Request-Id: rid-2\r\n"
        b"Content-Length: 2\r\n"
        b"\r\n"
    )
    assert parse_response_head(head[:-4]).content_length == 2


def test_client_response_head_strips_hop_by_hop_and_replaced() -> None:
    head = response(
        [
            (b"Connection", b"keep-alive, X-Hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"77"),
            (b"X-Hop", b"1"),
            (b"X-Request-Id", b"backend"),
            (b"X-Speedproxy", b"0.0"),
            (b"X-Keep", b"k"),
        ],
        tokens=(b"keep-alive", b"x-hop"),
    )
    lowered = names(head)
    for name in (b"connection", b"keep-alive", b"transfer-encoding", b"x-hop"):
        assert name not in lowered
    assert values(head, b"content-length") == [b"2"]
    assert values(head, b"x-request-id") == [b"rid-2"]
    assert values(head, b"x-speedproxy") == [b"9.9"]
    assert values(head, b"x-keep") == [b"k"]


def test_client_response_head_close() -> None:
    head = response([], keep_alive=False)
    assert head.endswith(b"Content-Length: 2\r\nConnection: close\r\n\r\n")
    assert not parse_response_head(head[:-4]).keep_alive


# -- request ids ----------------------------------------------------------------


@pytest.mark.parametrize("value", [b"a", b"abc-123_x.y:z", b"A" * 128, b"0f1e2d3c-4b5a"])
def test_sane_request_ids_kept(value: bytes) -> None:
    assert sane_request_id(value) == value


@pytest.mark.parametrize(
    "value", [None, b"", b"A" * 129, b"a b", b"a\tb", b"<script>", b"a\n", b"a\r\nX: y", b"\xe9", b"a,b", b'a"b']
)
def test_insane_request_ids_dropped(value: object) -> None:
    assert sane_request_id(value) is None  # type: ignore[arg-type]


# -- client address -------------------------------------------------------------

TRUSTED = ["127.0.0.1/32", "10.0.0.0/8", "2001:db8:1::/48"]


def test_is_trusted() -> None:
    resolver = ClientAddressResolver(TRUSTED, "X-Real-IP")
    assert resolver.is_trusted("127.0.0.1")
    assert resolver.is_trusted("10.200.3.4")
    assert resolver.is_trusted("2001:db8:1::5")
    assert not resolver.is_trusted("127.0.0.2")
    assert not resolver.is_trusted("11.0.0.1")
    assert not resolver.is_trusted("not-an-ip")
    assert not resolver.is_trusted("")
    assert not ClientAddressResolver([], "X-Real-IP").is_trusted("127.0.0.1")


def test_header_name_is_case_insensitive() -> None:
    resolver = ClientAddressResolver(TRUSTED, "x-REAL-ip")
    assert resolver.header == b"x-real-ip"
    assert resolver.resolve("10.0.0.1", True, [(b"X-Real-Ip", b"1.2.3.4")]) == "1.2.3.4"


def test_untrusted_peer_header_ignored() -> None:
    resolver = ClientAddressResolver(TRUSTED, "X-Real-IP")
    assert resolver.resolve("8.8.8.8", False, [(b"X-Real-IP", b"1.2.3.4")]) == "8.8.8.8"


def test_trusted_peer_x_real_ip() -> None:
    resolver = ClientAddressResolver(TRUSTED, "X-Real-IP")
    assert resolver.resolve("10.0.0.1", True, [(b"X-Real-IP", b" 1.2.3.4 ")]) == "1.2.3.4"
    assert resolver.resolve("10.0.0.1", True, [(b"X-Real-IP", b"1.1.1.1"), (b"X-Real-IP", b"2.2.2.2")]) == "2.2.2.2"
    assert resolver.resolve("10.0.0.1", True, [(b"X-Real-IP", b"2001:db8::9")]) == "2001:db8::9"


@pytest.mark.parametrize("value", [b"", b"nonsense", b"1.2.3.4:80", b"1.2.3.4, 5.6.7.8", b"999.1.1.1"])
def test_trusted_peer_invalid_x_real_ip_falls_back_to_peer(value: bytes) -> None:
    resolver = ClientAddressResolver(TRUSTED, "X-Real-IP")
    assert resolver.resolve("10.0.0.1", True, [(b"X-Real-IP", value)]) == "10.0.0.1"


def test_trusted_peer_without_header() -> None:
    resolver = ClientAddressResolver(TRUSTED, "X-Real-IP")
    assert resolver.resolve("10.0.0.1", True, [(b"X-Forwarded-For", b"1.2.3.4")]) == "10.0.0.1"


@pytest.mark.parametrize(
    "xff,expected",
    [
        (b"1.2.3.4", "1.2.3.4"),
        (b"6.6.6.6, 1.2.3.4", "1.2.3.4"),
        (b"6.6.6.6, 1.2.3.4, 10.0.0.2", "1.2.3.4"),
        (b"1.2.3.4,10.0.0.2 , 127.0.0.1", "1.2.3.4"),
        (b"10.0.0.3, 10.0.0.2", "10.0.0.3"),  # all trusted: the leftmost
        (b"garbage, 1.2.3.4", "1.2.3.4"),
        (b"1.2.3.4, garbage", "10.0.0.1"),  # an unparsable hop: stop trusting
        (b"1.2.3.4, garbage, 10.0.0.2", "10.0.0.1"),
        (b"", "10.0.0.1"),
    ],
)
def test_xff_walk(xff: bytes, expected: str) -> None:
    resolver = ClientAddressResolver(TRUSTED, "X-Forwarded-For")
    assert resolver.resolve("10.0.0.1", True, [(b"X-Forwarded-For", xff)]) == expected


def test_xff_several_headers_are_one_list() -> None:
    resolver = ClientAddressResolver(TRUSTED, "X-Forwarded-For")
    headers = [(b"X-Forwarded-For", b"6.6.6.6"), (b"x-forwarded-for", b"1.2.3.4, 10.0.0.9")]
    assert resolver.resolve("10.0.0.1", True, headers) == "1.2.3.4"


def test_xff_from_untrusted_peer_ignored() -> None:
    resolver = ClientAddressResolver(TRUSTED, "X-Forwarded-For")
    assert resolver.resolve("8.8.8.8", False, [(b"X-Forwarded-For", b"1.2.3.4")]) == "8.8.8.8"


def _untrusted_ipv4(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


untrusted_ips = st.integers(min_value=0, max_value=2**32 - 1).map(_untrusted_ipv4).filter(
    lambda ip: not ip.startswith("10.") and ip != "127.0.0.1"
)
trusted_ips = st.one_of(
    st.integers(min_value=0, max_value=2**24 - 1).map(lambda n: str(ipaddress.IPv4Address((10 << 24) + n))),
    st.just("127.0.0.1"),
)
attacker_values = st.lists(
    st.one_of(
        st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b),
        trusted_ips.map(str.encode),
        untrusted_ips.map(str.encode),
        st.just(b""),
        st.just(b","),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    attacker=untrusted_ips,
    forged=attacker_values,
    forged_as_separate_headers=st.booleans(),
    proxies=st.lists(trusted_ips, min_size=1, max_size=4),
)
def test_xff_cannot_be_spoofed(
    attacker: str, forged: List[bytes], forged_as_separate_headers: bool, proxies: List[str]
) -> None:
    """Whatever a client prepends, the first untrusted hop from the right wins.

    The attacker at ``attacker`` sends any ``X-Forwarded-For`` it likes; each
    trusted proxy in ``proxies`` appends the address it received from; the
    last proxy is our peer.
    """
    resolver = ClientAddressResolver(TRUSTED, "X-Forwarded-For")
    chain = [attacker] + proxies[:-1]
    appended = ", ".join(chain).encode()
    if forged_as_separate_headers:
        headers = [(b"X-Forwarded-For", value) for value in forged]
        headers.append((b"X-Forwarded-For", appended))
    else:
        joined = b", ".join(forged)
        headers = [(b"X-Forwarded-For", joined + b", " + appended if forged else appended)]
    assert resolver.resolve(proxies[-1], True, headers) == attacker


@settings(max_examples=200, deadline=None)
@given(peer=untrusted_ips, forged=attacker_values)
def test_untrusted_peer_always_resolves_to_itself(peer: str, forged: List[bytes]) -> None:
    for header in ("X-Forwarded-For", "X-Real-IP"):
        resolver = ClientAddressResolver(TRUSTED, header)
        assume(not resolver.is_trusted(peer))
        headers = [(header.encode(), value) for value in forged]
        assert resolver.resolve(peer, resolver.is_trusted(peer), headers) == peer
