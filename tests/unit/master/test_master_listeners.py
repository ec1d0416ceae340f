"""speedproxy.master.listeners: the sockets the master binds once for its workers."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from speedproxy.master.listeners import ListenError, bind_all, bind_listener, format_address, parse_listen
from speedproxy.testing import free_port


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


def _taken() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_bind_all_binds_and_listens_on_every_address_in_order() -> None:
    listeners = bind_all([("a", "127.0.0.1", 0), ("b", "127.0.0.1", 0)])
    try:
        assert [listener.key for listener in listeners] == ["a", "b"]
        for listener in listeners:
            assert listener.family_name == "inet"
            assert listener.sock.getblocking() is False
            client = socket.create_connection(listener.sock.getsockname(), timeout=5)
            client.close()
    finally:
        for listener in listeners:
            listener.close()


def test_bind_all_is_all_or_none_and_names_the_address_and_key() -> None:
    blocker = _taken()
    port = blocker.getsockname()[1]
    free = free_port()
    try:
        with pytest.raises(ListenError) as info:
            bind_all([("server.host/server.port", "127.0.0.1", free), ("admin.listen", "127.0.0.1", port)])
    finally:
        blocker.close()
    error = info.value
    assert isinstance(error, SystemExit)  # twistd exits 1 with the message, no traceback
    assert str(error) == error.code == (
        f"speedproxy: cannot listen on 127.0.0.1:{port} (admin.listen): "
        f"[Errno {errno.EADDRINUSE}] {os.strerror(errno.EADDRINUSE)}"
    )
    assert (error.host, error.port, error.key) == ("127.0.0.1", port, "admin.listen")
    # The first address was bound, then released again: it can be bound now.
    again, _ = bind_listener("127.0.0.1", free)
    again.close()


def test_bind_all_reports_an_address_not_on_this_host() -> None:
    with pytest.raises(ListenError) as info:
        bind_all([("admin.listen", "192.0.2.1", 9901)])  # TEST-NET-1: never a local address
    assert str(info.value).startswith("speedproxy: cannot listen on 192.0.2.1:9901 (admin.listen): [Errno ")


def test_format_address_brackets_ipv6() -> None:
    assert format_address("::1", 9901) == "[::1]:9901"
    assert format_address("127.0.0.1", 80) == "127.0.0.1:80"
