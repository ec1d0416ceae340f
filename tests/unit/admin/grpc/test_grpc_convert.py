"""Tests for :mod:`speedproxy.admin.grpc.convert`."""

from __future__ import annotations

import json

import pytest
from google.protobuf.struct_pb2 import Struct

import grpc_unit_support  # noqa: F401  (skips on PyPy)

from speedproxy.admin.grpc import admin_pb2, convert
from speedproxy.admin.json_resource import APIError


@pytest.mark.parametrize(
    "error, code",
    [
        (APIError(400, "bad_request", "x", "weight"), "INVALID_ARGUMENT"),
        (APIError(400, "invalid_config", "x", "server.port"), "INVALID_ARGUMENT"),
        (APIError(401, "unauthorized", "x"), "UNAUTHENTICATED"),
        (APIError(404, "not_found", "x", "backend_id"), "NOT_FOUND"),
        (APIError(409, "conflict", "x", "id"), "ALREADY_EXISTS"),
        (APIError(409, "conflict", "x", "config_version"), "ABORTED"),
        (APIError(409, "no_room", "x"), "FAILED_PRECONDITION"),
        (APIError(409, "ssl_disabled", "x", "ssl.enabled"), "FAILED_PRECONDITION"),
        (APIError(413, "payload_too_large", "x"), "RESOURCE_EXHAUSTED"),
        (APIError(418, "teapot", "x"), "INVALID_ARGUMENT"),
        (APIError(500, "apply_failed", "x"), "INTERNAL"),
        (APIError(599, "odd", "x"), "INTERNAL"),
    ],
)
def test_status_codes(error: APIError, code: str) -> None:
    assert convert.code_name(error) == code


def test_the_trailer_is_the_json_error_body() -> None:
    error = APIError(400, "invalid_config", "server.port: bad", "server.port", {"problems": ["a", "b"]})
    ((key, value),) = convert.error_trailer(error)
    assert key == "x-error-body"
    assert json.loads(value) == {"error": "invalid_config", "detail": "server.port: bad", "field": "server.port",
                                 "problems": ["a", "b"]}


def test_struct_round_trip_makes_whole_numbers_integers_again() -> None:
    body = {"port": 8081, "weight": 1.5, "nested": [{"n": 3}, None, True], "name": "x", "big": 2.0**60}
    struct = convert.to_struct(body, Struct)
    back = convert.from_struct(struct)
    assert back == {"port": 8081, "weight": 1.5, "nested": [{"n": 3}, None, True], "name": "x", "big": 2.0**60}
    assert isinstance(back["port"], int) and isinstance(back["big"], float)
    assert convert.to_struct({"t": (1, 2)}, Struct)["t"][1] == 2  # tuples as lists


def test_replace_config_body() -> None:
    with pytest.raises(APIError) as refused:
        convert.replace_config_body(admin_pb2.ReplaceConfigRequest())
    assert refused.value.field == "config"
    request = admin_pb2.ReplaceConfigRequest(persist=True)
    request.config.update({"server": {"port": 8080}})
    assert convert.replace_config_body(request) == {"config": {"server": {"port": 8080}}, "persist": True}
    request.config_version = 0  # optional: 0 is a version given
    assert convert.replace_config_body(request)["config_version"] == 0


def test_backend_requests_give_only_what_is_set() -> None:
    assert convert.backend_values(admin_pb2.ListBackendsRequest()) == {}
    assert convert.backend_values(admin_pb2.RemoveBackendRequest(upstream="u", backend_id="b", persist=True)) == {
        "upstream": "u", "backend_id": "b", "persist": True,
    }
    update = admin_pb2.UpdateBackendRequest(upstream="u")
    update.backend.update({"id": "b1", "weight": 200})
    assert convert.update_backend_values(update) == {"upstream": "u", "backend": {"id": "b1", "weight": 200}}
    assert convert.add_backend_values(admin_pb2.AddBackendRequest(upstream="u")) == {"upstream": "u", "backend": {}}


def test_report_values_nest_the_figures_given() -> None:
    request = admin_pb2.ReportRequest(backend_id="b1", performance=admin_pb2.Performance(cpu_usage=0.0, cpu_count=4))
    assert convert.report_values(request) == {"backend_id": "b1", "performance": {"cpu_usage": 0.0, "cpu_count": 4}}
    assert convert.report_values(admin_pb2.ReportRequest(backend_id="b1")) == {"backend_id": "b1", "performance": {}}


def test_watch_interval() -> None:
    assert convert.watch_interval(0) == 5.0
    assert convert.watch_interval(0.1) == 0.1
    assert convert.watch_interval(3600) == 3600.0
    assert convert.watch_interval(0.05) is None
    assert convert.watch_interval(-1) is None
    assert convert.watch_interval(3601) is None
