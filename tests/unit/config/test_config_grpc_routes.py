"""gRPC routes in the config: ``protocols.grpc``, ``h2c``/``h2`` backends and the checks between them."""

from __future__ import annotations

import textwrap
from typing import List

import pytest

from speedproxy.config import ConfigError, config_from_mapping, config_to_mapping, parse_config

GOOD = """\
backends:
  web: [{id: w1, host: 127.0.0.1, port: 8081}]
  rpc:
    - {id: g1, host: 127.0.0.1, port: 50051, scheme: h2c}
    - {id: g2, host: rpc.example, port: 443, scheme: h2}
routing:
  default: {path: /, upstream: web}
  rpc:
    path: /pkg.Svc/
    upstream: rpc
    protocols: {grpc: least_connections}
"""


def problems(text: str) -> List[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(textwrap.dedent(text), "speedproxy.yaml")
    return raised.value.problems


def test_a_grpc_route_and_its_backends() -> None:
    config = parse_config(GOOD)
    assert config.routing["rpc"].protocols.grpc == "least_connections"
    assert config.routing["default"].protocols.grpc == "off"
    assert [backend.scheme for backend in config.backends["rpc"]] == ["h2c", "h2"]


def test_written_back_the_same_and_off_not_shown() -> None:
    config = parse_config(GOOD)
    data = config_to_mapping(config)
    assert data["routing"]["rpc"]["protocols"]["grpc"] == "least_connections"
    assert "grpc" not in data["routing"]["default"]["protocols"]
    assert config_from_mapping(data) == config


def test_a_grpc_route_needs_http2_backends() -> None:
    found = problems(GOOD.replace("upstream: rpc\n", "upstream: web\n"))
    assert found == [
        "speedproxy.yaml:11: routing.rpc.protocols.grpc: a gRPC route needs backends with scheme h2c or h2; "
        "upstream 'web' has 'w1' (http)"
    ]


def test_http2_backends_serve_only_grpc_routes() -> None:
    found = problems(GOOD + "  other: {path: /other/, upstream: rpc}\n")
    assert found == [
        "speedproxy.yaml:12: routing.other.upstream: upstream 'rpc' has HTTP/2 backends ('g1' (h2c), 'g2' (h2)), "
        "which serve only gRPC calls: set protocols.grpc (a balancer name) on this route, or give them scheme http/https"
    ]


def test_an_unknown_balancer_is_named_once() -> None:
    found = problems(GOOD.replace("grpc: least_connections", "grpc: fastest"))
    assert found == [
        "speedproxy.yaml:11: routing.rpc.protocols.grpc: unknown load balancer 'fastest' (valid: round_robin, "
        "weight, ip_hash, least_connections, least_connections_weight, performance, off)"
    ]


def test_an_unknown_scheme() -> None:
    found = problems(GOOD.replace("scheme: h2c", "scheme: grpc"))
    assert found[0].startswith("speedproxy.yaml:4: backends.rpc[0].scheme: unknown scheme 'grpc' (valid: http, https, h2c, h2)")


@pytest.mark.parametrize(
    "setting, key",
    [
        ("cache: {enabled: true}", "cache"),
        ("allow: [10.0.0.0/8]", "allow"),
        ("rate_limit: {requests: 5}", "rate_limit"),
        ("cors: {origins: ['*']}", "cors"),
    ],
)
def test_a_grpc_route_runs_no_filters(setting: str, key: str) -> None:
    found = problems(GOOD + "    " + setting + "\n")
    assert any(
        problem.startswith(f"speedproxy.yaml:12: routing.rpc.{key}: not applied to gRPC calls") for problem in found
    ), found


def test_server_lists_do_not_cover_grpc_calls() -> None:
    found = problems("server: {allow: [10.0.0.0/8]}\n" + GOOD)
    assert found == [
        "speedproxy.yaml:12: routing.rpc.protocols.grpc: server.allow is not applied to gRPC calls: "
        "remove it, or this route's protocols.grpc"
    ]


def test_no_active_health_check_on_http2_backends() -> None:
    found = problems(GOOD.replace("scheme: h2c}", "scheme: h2c, health_check: {path: /h}}"))
    assert found == [
        "speedproxy.yaml:4: backends.rpc[0].health_check: active health checks are HTTP/1.1 GETs, which a scheme "
        "h2c backend cannot answer (passive checks apply to it without this section)"
    ]


def test_the_admin_api_gets_the_same_checks() -> None:
    data = config_to_mapping(parse_config(GOOD))
    data["backends"]["rpc"].append({"id": "g3", "host": "127.0.0.1", "port": 8082, "scheme": "http"})
    with pytest.raises(ConfigError) as raised:
        config_from_mapping(data)
    assert raised.value.problems == [
        "<api>: routing.rpc.protocols.grpc: a gRPC route needs backends with scheme h2c or h2; upstream 'rpc' has 'g3' (http)"
    ]


@pytest.mark.parametrize("key", ["set_headers: {authorization: Bearer-x}", "add_query: {k: v}", "expect_content_type: [image/*]"])
def test_upstream_rules_of_a_grpc_upstream_are_refused(key: str) -> None:
    """The relay sends a call's metadata as the client sent it: ``upstreams.<group>``
    rules for a gRPC route's backends would be silently dropped (a credential the
    backend never gets), so --check names them."""
    found = problems(GOOD + "upstreams:\n  rpc: {" + key + "}\n")
    name = key.partition(":")[0]
    assert found == [
        f"speedproxy.yaml:13: upstreams.rpc.{name}: not applied to gRPC calls (the relay sends a call's "
        "metadata as the client sent it): remove it, or give these backends scheme http/https"
    ]
    assert parse_config(GOOD + "upstreams:\n  web: {" + key + "}\n").upstreams["web"]
