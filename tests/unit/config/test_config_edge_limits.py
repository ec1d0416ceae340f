"""``rate_limit``, ``connection_limit`` and ``sessions`` in the config (:mod:`speedproxy.config.edge_limits`)."""

from __future__ import annotations

import pytest

from speedproxy.config import parse_config
from speedproxy.config.loader import ConfigError, config_from_mapping, config_to_mapping
from speedproxy.config.model import ConnectionLimitConfig, RateLimitConfig, SessionsConfig

GOOD = """\
routing:
  video:
    path: /
    upstream: default
    rate_limit: {requests: 20, per: 1s, burst: 40, key: client_ip}
    connection_limit: {per_client: 32}
    sessions: {required: true, cookie: spx_session, ttl: 4h, max_per_client: 3}
backends:
  default: [{id: a, host: 127.0.0.1, port: 8081}]
"""


def test_the_issue_example_reads_and_round_trips() -> None:
    config = parse_config(GOOD)
    route = config.routing["video"]
    assert route.rate_limit == RateLimitConfig(requests=20, per=1.0, burst=40, key="client_ip")
    assert (route.rate_limit.rate, route.rate_limit.capacity) == (20.0, 40)
    assert route.connection_limit == ConnectionLimitConfig(per_client=32, status=503)
    assert route.sessions == SessionsConfig(required=True, cookie="spx_session", ttl=4 * 3600.0, max_per_client=3)
    assert config_from_mapping(config_to_mapping(config)).routing["video"] == route


def test_defaults_and_absence() -> None:
    config = parse_config(
        "routing:\n  default: {rate_limit: {requests: 5, key: 'header:X-API-Key'}, sessions: {}}\n"
        "  other: {path: /o}\n"
    )
    route = config.routing["default"]
    assert (route.rate_limit.per, route.rate_limit.capacity, route.rate_limit.key) == (1.0, 5, "header:X-API-Key")
    assert route.sessions == SessionsConfig()
    other = config.routing["other"]
    assert (other.rate_limit, other.connection_limit, other.sessions) == (None, None, None)
    assert "rate_limit" not in config_to_mapping(config)["routing"]["other"]


@pytest.mark.parametrize(
    "route, expected",
    [
        ("rate_limit: {per: 1s}", "t.yaml:2: routing.default.rate_limit: missing required key 'requests'"),
        ("rate_limit: {requests: 0}", "t.yaml:2: routing.default.rate_limit.requests: must be between 1 and"),
        ("rate_limit: {requests: 5, per: 0s}", "t.yaml:2: routing.default.rate_limit.per: must be greater than 0"),
        ("rate_limit: {requests: 5, burst: 2}", "t.yaml:2: routing.default.rate_limit.burst: must be at least requests (5)"),
        ("rate_limit: {requests: 5, key: 'header:'}", "t.yaml:2: routing.default.rate_limit.key: expected client_ip"),
        ("rate_limit: {requests: 5, key: session}", "t.yaml:2: routing.default.rate_limit.key: key: session needs sessions"),
        ("rate_limit: {requests: 5, rate: 3}", "t.yaml:2: routing.default.rate_limit.rate: unknown key 'rate'"),
        ("connection_limit: {}", "t.yaml:2: routing.default.connection_limit: missing required key 'per_client'"),
        ("connection_limit: {per_client: 3, status: 500}", "connection_limit.status: expected 429 or 503, got 500"),
        ("sessions: {cookie: 'a;b'}", "t.yaml:2: routing.default.sessions.cookie: expected a cookie name"),
        ("sessions: {ttl: 0s}", "t.yaml:2: routing.default.sessions.ttl: must be greater than 0"),
        ("sessions: {max_per_client: 0}", "t.yaml:2: routing.default.sessions.max_per_client: must be between 1 and 16"),
        ("sessions: [1]", "t.yaml:2: routing.default.sessions: expected a mapping"),
    ],
)
def test_bad_values_name_file_line_and_key(route: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("routing:\n  default: {%s}\n" % route, "t.yaml")
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_session_key_is_fine_with_sessions() -> None:
    config = parse_config("routing:\n  default: {rate_limit: {requests: 5, key: session}, sessions: {required: false}}\n")
    assert config.routing["default"].rate_limit.key == "session"
