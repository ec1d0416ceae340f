"""Tests for :mod:`speedproxy.proxy.errors`."""

from __future__ import annotations

import json

import pytest

from speedproxy.proxy.errors import REASONS, error_body, error_response
from speedproxy.proxy.http1 import parse_response_head

TAG = b"X-Speedproxy: 1.2.3\r\nVia: 1.1 speedproxy\r\n"


def split(data: bytes):
    head, _, body = data.partition(b"\r\n\r\n")
    return parse_response_head(head), body


def test_error_body_shape() -> None:
    body = error_body("bad_gateway", "backend said \"no\"", b"abc-1")
    assert body.endswith(b"\n")
    assert json.loads(body) == {"error": "bad_gateway", "detail": 'backend said "no"', "request_id": "abc-1"}


@pytest.mark.parametrize("status", sorted(REASONS))
def test_error_response_for_every_status(status: int) -> None:
    data = error_response(status, "some_code", "detail text", b"rid-9", TAG, keep_alive=True)
    response, body = split(data)
    assert response.status == status
    assert response.reason == REASONS[status]
    assert response.content_length == len(body)
    assert response.keep_alive
    fields = {name.lower(): value for name, value in response.headers}
    assert fields[b"content-type"] == b"application/json"
    assert fields[b"cache-control"] == b"no-store"
    assert fields[b"x-request-id"] == b"rid-9"
    assert fields[b"x-speedproxy"] == b"1.2.3"
    assert fields[b"via"] == b"1.1 speedproxy"
    assert json.loads(body) == {"error": "some_code", "detail": "detail text", "request_id": "rid-9"}


def test_error_response_close() -> None:
    response, _ = split(error_response(502, "bad_gateway", "x", b"r", TAG, keep_alive=False))
    assert not response.keep_alive
    assert (b"Connection", b"close") in response.headers


def test_error_response_head_only_keeps_length_of_body() -> None:
    full = error_response(404, "no_route", "x", b"r", TAG, keep_alive=True)
    head_only = error_response(404, "no_route", "x", b"r", TAG, keep_alive=True, head_only=True)
    assert full.startswith(head_only)
    assert head_only.endswith(b"\r\n\r\n")
    response, body = split(head_only)
    assert body == b""
    assert response.content_length == len(full) - len(head_only)


def test_unknown_status_reason() -> None:
    assert error_response(599, "x", "y", b"r", TAG, True).startswith(b"HTTP/1.1 599 Error\r\n")


def test_detail_with_non_ascii_is_valid_json() -> None:
    body = error_body("bad_request", "invalid header field name 'n\xe4me'", b"r")
    assert json.loads(body.decode("utf-8"))["detail"] == "invalid header field name 'n\xe4me'"
