"""speedproxy.master.listeners: the sockets the master binds once for its workers."""

from __future__ import annotations

import socket

import pytest

from speedproxy.master.listeners import bind_listener, parse_listen


@pytest.mark.parametrize(
    "value, expected",
    [
        ("127.0.0.1:9901", ("127.0.0.1", 9901)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8443", ("::1", 8443)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_listen(value: str, expected: tuple) -> None:
    assert parse_listen(value) == expected


def test_bind_listener_listens_non_blocking_and_accepts() -> None:
    sock, family = bind_listener("127.0.0.1", 0)
    try:
        assert family == "inet"
        assert sock.getblocking() is False
        port = sock.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.settimeout(5)
        accepted, _ = sock.accept()
        accepted.close()
        client.close()
    finally:
        sock.close()


def test_bind_listener_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        sock, family = bind_listener("::1", 0)
    except OSError as error:
        pytest.skip(f"::1 unavailable: {error}")
    try:
        assert family == "inet6"
        assert sock.family == socket.AF_INET6
    finally:
        sock.close()


def test_a_taken_port_raises_and_leaks_no_socket() -> None:
    first, _ = bind_listener("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError):
            bind_listener("127.0.0.1", port)
    finally:
        first.close()
