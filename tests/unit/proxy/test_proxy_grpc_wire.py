"""gRPC over HTTP/2 details: content types, ``grpc-timeout``, statuses and messages."""

from __future__ import annotations

import pytest

from speedproxy.proxy.grpc_wire import encode_message, format_timeout, is_grpc, parse_timeout, status_of, trailers_only


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"application/grpc;charset=utf-8", True),
        (b"application/grpc-web", False),
        (b"application/grpc-web-text", False),
        (b"application/grpcx", False),
        (b"application/json", False),
        (None, False),
    ],
)
def test_is_grpc(value, expected) -> None:
    assert is_grpc(value) is expected


@pytest.mark.parametrize(
    "value, seconds",
    [(b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"250m", 0.25), (b"100u", 1e-4), (b"5n", 5e-9), (b"99999999S", 99999999.0)],
)
def test_parse_timeout(value, seconds) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"10", b"S", b"123456789S", b"1s", b"-1S", b"1.5S", b"1 S"])
def test_malformed_timeouts_are_ignored(value) -> None:
    assert parse_timeout(value) is None


@pytest.mark.parametrize(
    "seconds",
    # (and just below a unit's limit: rounded up to 100000000 it would be nine digits)
    [1e-9, 0.0123, 0.25, 1.5, 99.0, 1000.0, 86400.0 * 400, 1e12, 0.09999999999, 99.9999999995, 99999.99999995],
)
def test_format_timeout_round_trips_rounding_up(seconds) -> None:
    text = format_timeout(seconds)
    assert len(text) <= 9 and parse_timeout(text) is not None
    assert parse_timeout(text) >= seconds * (1 - 1e-9) or text.endswith(b"H")


def test_messages_are_percent_encoded() -> None:
    assert encode_message("plain text: ok") == b"plain text: ok"
    assert encode_message("100% sure\n") == b"100%25 sure%0A"
    assert encode_message("caf\u00e9") == b"caf%C3%A9"


def test_status_of_and_trailers_only() -> None:
    assert status_of([(b"grpc-status", b"5")]) == 5
    assert status_of([(b"grpc-status", b"x")]) is None and status_of([]) is None
    assert trailers_only(14, "down") == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"down"),
    ]


def test_malformed_fields() -> None:
    from speedproxy.proxy.grpc_wire import malformed_field

    assert malformed_field([(b":status", b"200"), (b"grpc-status", b"0")], True) is None
    assert malformed_field([(b":status", b"200")], False) == b":status"  # not in trailers
    assert malformed_field([(b":path", b"/")], True) == b":path"
    assert malformed_field([(b"Upper", b"1")], False) == b"Upper"
    assert malformed_field([(b"x-a", b"1\r\nx-b: 2")], False) == b"x-a"
    assert malformed_field([(b"x-a", b"nul\0")], False) == b"x-a"
