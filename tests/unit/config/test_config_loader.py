"""Tests for :mod:`speedproxy.config.loader`."""

import dataclasses
import json
import string
import textwrap
from ipaddress import ip_network
from pathlib import Path
from typing import List

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speedproxy.config.loader import (
    ConfigError,
    config_from_mapping,
    config_to_mapping,
    load_config,
    parse_config,
)
from speedproxy.config.model import (
    BALANCER_NAMES,
    AdminConfig,
    BackendConfig,
    Config,
    HealthCheckConfig,
    ProtocolBalancers,
    RouteConfig,
    ServerConfig,
    SSLConfig,
)

ETC_CONFIG = Path(__file__).resolve().parents[3] / "etc" / "speedproxy.yaml"


def parse(text: str) -> Config:
    """Parse dedented YAML *text* as ``speedproxy.yaml``."""
    return parse_config(textwrap.dedent(text), "speedproxy.yaml")


def errors(text: str) -> List[str]:
    """Return the problems ``parse(text)`` raises."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def mapping_errors(data: object) -> List[str]:
    """Return the problems ``config_from_mapping(data)`` raises."""
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data)  # type: ignore[arg-type]
    return info.value.problems


DESIGN_EXAMPLE = """\
server:
  host: "0.0.0.0"
  port: 8080
  workers: auto
  read_timeout: 30s
  write_timeout: 30s
  idle_timeout: 60s
  upstream_connect_timeout: 5s
  upstream_read_timeout: 60s
  max_conn: 10000
  max_header_size: 64KiB
  max_body_size: 0
  real_ip_header: "X-Real-IP"
  trusted_proxies: ["127.0.0.1/32", "10.0.0.0/8"]
ssl:
  enabled: false
  cert_file: "certs/server.crt"
  key_file: "certs/server.key"
admin:
  listen: "127.0.0.1:9901"
  api_key: ""
backends:
  default:
    - id: "backend1"
      host: "127.0.0.1"
      port: 8081
      weight: 100
      scheme: "http"
      active: true
      max_conn: 1000
      health_check: {path: "/health", interval: 30s, timeout: 5s, failures: 3}
routing:
  default:
    path: "/"
    upstream: "default"
    load_balancer: "least_connections_weight"
    protocols: {websocket: "ip_hash", sse: "ip_hash"}
"""


# -- defaults and the documented example ---------------------------------------


@pytest.mark.parametrize("text", ["", "{}", "# only a comment\n", "server:\nssl: ~\n"])
def test_empty_gives_defaults(text):
    assert parse(text) == Config()


def test_design_example():
    config = parse(DESIGN_EXAMPLE)
    default = Config()
    assert config.server == default.server
    assert config.ssl == default.ssl
    assert config.admin == default.admin
    assert config.backends == {
        "default": (BackendConfig(id="backend1", port=8081, health_check=HealthCheckConfig()),)
    }
    assert config.routing == default.routing
    assert config.source is None


def test_server_values():
    config = parse(
        """\
        server:
          host: "::"
          port: 443
          workers: 4
          read_timeout: 250ms
          write_timeout: 1.5
          idle_timeout: 2m
          upstream_connect_timeout: 1s
          upstream_read_timeout: 1h
          upstream_keepalive_timeout: 90s
          upstream_keepalive: 0
          max_conn: 1
          max_header_size: 1KiB
          max_body_size: 10MiB
          real_ip_header: X-Forwarded-For
          trusted_proxies: [192.168.1.7, "10.1.2.3/8", "::1", "fd00::/8"]
          access_log: off
          shutdown_grace: 0
        """
    )
    assert config.server == ServerConfig(
        host="::",
        port=443,
        workers=4,
        read_timeout=0.25,
        write_timeout=1.5,
        idle_timeout=120.0,
        upstream_connect_timeout=1.0,
        upstream_read_timeout=3600.0,
        upstream_keepalive_timeout=90.0,
        upstream_keepalive=0,
        max_conn=1,
        max_header_size=1024,
        max_body_size=10 * 1024**2,
        real_ip_header="X-Forwarded-For",
        trusted_proxies=("192.168.1.7/32", "10.0.0.0/8", "::1/128", "fd00::/8"),
        access_log="off",
        shutdown_grace=0.0,
    )
    assert isinstance(config.server.trusted_proxies, tuple)


@pytest.mark.parametrize("value, workers", [("auto", None), ('"auto"', None), ("0", 0), ("1", 1), ("16", 16)])
def test_workers(value, workers):
    assert parse(f"server:\n  workers: {value}\n").server.workers == workers


# -- problem reporting ---------------------------------------------------------------


def test_problem_names_file_line_and_key():
    text = "\n".join(f"# comment {n}" for n in range(1, 11)) + "\nserver:\n  read_timeout: abc\n"
    assert errors(text) == [
        'speedproxy.yaml:12: server.read_timeout: expected a duration like "30s" or "250ms", got "abc"'
    ]


def test_all_problems_collected_in_line_order():
    problems = errors(
        """\
        server:
          port: 0
          max_conn: 0
        admin:
          listen: nowhere
        bogus: 1
        backends:
          default:
            - {id: a, host: h, port: 99999}
        """
    )
    assert [p.split(":")[1] for p in problems] == ["2", "3", "5", "6", "9"]
    assert len(problems) == 5


def test_config_error_str_joins_problems():
    error = ConfigError(["a.yaml:1: x: bad", "a.yaml:2: y: worse"])
    assert str(error) == "a.yaml:1: x: bad\na.yaml:2: y: worse"
    assert error.problems == ["a.yaml:1: x: bad", "a.yaml:2: y: worse"]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("port: 0", "must be between 1 and 65535, got 0"),
        ("port: 65536", "must be between 1 and 65535, got 65536"),
        ('port: "8080"', 'expected an integer, got "8080"'),
        ("port: true", "expected an integer, got true"),
        ("port: 80.5", "expected an integer, got 80.5"),
        ("workers: -1", 'expected "auto" or an integer >= 0, got -1'),
        ("workers: many", 'expected "auto" or an integer >= 0, got "many"'),
        ("read_timeout: 0s", 'must be greater than 0, got "0s"'),
        ("write_timeout: 0", "must be greater than 0, got 0"),
        ("idle_timeout: -5s", 'expected a non-negative duration, got "-5s"'),
        ("upstream_connect_timeout: [1]", 'expected a duration like "30s" or "250ms", got a list'),
        ("upstream_read_timeout: 5 minutes", 'expected a duration like "30s" or "250ms", got "5 minutes"'),
        ("upstream_keepalive_timeout: 0ms", 'must be greater than 0, got "0ms"'),
        ("shutdown_grace: -1", "expected a non-negative duration, got -1"),
        ("upstream_keepalive: -1", "must be at least 0, got -1"),
        ("max_conn: 0", "must be at least 1, got 0"),
        ("max_header_size: 512B", 'must be at least 1KiB, got "512B"'),
        ("max_header_size: 1000", "must be at least 1KiB, got 1000"),
        ("max_body_size: lots", 'expected a size like "64KiB" or "10MiB", got "lots"'),
        ("max_body_size: -1", "expected a non-negative size, got -1"),
        ("real_ip_header: X Real IP", 'expected an HTTP header name, got "X Real IP"'),
        ("real_ip_header: ''", 'expected an HTTP header name, got ""'),
        ("trusted_proxies: 10.0.0.0/8", 'expected a list of IP addresses or CIDR networks, got "10.0.0.0/8"'),
        ("host: [a]", "expected a string, got a list"),
        ("host: ''", "must not be empty"),
        ("host:", "expected a string, got null"),
        ("access_log: ''", "must not be empty"),
    ],
)
def test_server_rejects(setting, message):
    key = setting.split(":")[0]
    assert errors(f"server:\n  {setting}\n") == [f"speedproxy.yaml:2: server.{key}: {message}"]


def test_trusted_proxies_items_reported_at_their_lines():
    problems = errors(
        """\
        server:
          trusted_proxies:
            - 10.0.0.0/8
            - 300.1.1.1
            - {a: 1}
        """
    )
    assert problems == [
        'speedproxy.yaml:4: server.trusted_proxies[1]: expected an IP address or CIDR network, got "300.1.1.1"',
        "speedproxy.yaml:5: server.trusted_proxies[2]: expected an IP address or CIDR network, got a mapping",
    ]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("servre: {}\n", "speedproxy.yaml:1: servre: unknown key 'servre'; did you mean 'server'?"),
        ("zzz: 1\n", "speedproxy.yaml:1: zzz: unknown key 'zzz'"),
        ("server:\n  prot: 1\n", "speedproxy.yaml:2: server.prot: unknown key 'prot'; did you mean 'port'?"),
        ("ssl:\n  cert: x\n", "speedproxy.yaml:2: ssl.cert: unknown key 'cert'; did you mean 'cert_file'?"),
        ("admin:\n  apikey: x\n", "speedproxy.yaml:2: admin.apikey: unknown key 'apikey'; did you mean 'api_key'?"),
        (
            "backends:\n  default:\n    - id: a\n      host: h\n      port: 1\n      wieght: 5\n",
            "speedproxy.yaml:6: backends.default[0].wieght: unknown key 'wieght'; did you mean 'weight'?",
        ),
        (
            "backends:\n  default:\n    - id: a\n      host: h\n      port: 1\n      health_check:\n        intervall: 5s\n",
            "speedproxy.yaml:7: backends.default[0].health_check.intervall: unknown key 'intervall';"
            " did you mean 'interval'?",
        ),
        (
            "routing:\n  default:\n    name: x\n",
            "speedproxy.yaml:3: routing.default.name: unknown key 'name'",
        ),
        (
            "routing:\n  default:\n    protocols: {websockets: ip_hash}\n",
            "speedproxy.yaml:3: routing.default.protocols.websockets: unknown key 'websockets';"
            " did you mean 'websocket'?",
        ),
    ],
)
def test_unknown_keys(text, problem):
    assert errors(text) == [problem]


def test_duplicate_key_names_both_lines():
    assert errors("server:\n  port: 1\n  host: h\n  port: 2\n") == [
        "speedproxy.yaml:4: server.port: duplicate key 'port' (first defined on line 2)"
    ]


def test_top_level_must_be_a_mapping():
    # Every top-level section is named (the list grows with new sections).
    from speedproxy.config.loader import _TOP_LEVEL

    assert _TOP_LEVEL[:7] == ("server", "ssl", "admin", "backends", "routing", "cache", "tracing")
    assert errors("- server\n") == [
        f"speedproxy.yaml:1: expected a mapping with keys {', '.join(_TOP_LEVEL)}, got a list"
    ]


@pytest.mark.parametrize("section", ["server", "ssl", "admin"])
def test_section_must_be_a_mapping(section):
    assert errors(f"{section}: 5\n") == [f"speedproxy.yaml:1: {section}: expected a mapping, got 5"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("server:\n  port: [1, 2\n", "speedproxy.yaml:3: invalid YAML: "),
        ("server:\n\tport: 1\n", "speedproxy.yaml:2: invalid YAML: "),
        ("server:\n  host: 'x\n", "speedproxy.yaml:3: invalid YAML: "),
        ("a: 1\n---\nb: 2\n", "speedproxy.yaml:2: invalid YAML: "),
    ],
)
def test_yaml_syntax_error(text, problem):
    (message,) = errors(text)
    assert message.startswith(problem)


def test_unsupported_tag_and_recursive_alias():
    assert errors("server:\n  port: !env PORT\n") == ["speedproxy.yaml:2: server.port: unsupported YAML tag '!env'"]
    assert errors("server: &s\n  port: *s\n") == ["speedproxy.yaml:2: server.port: recursive alias"]


def test_plain_scalars_are_strings_where_strings_are_expected():
    config = parse(
        """\
        server: {access_log: off}
        admin: {api_key: 12345}
        backends:
          default: [{id: 1, host: yes, port: 80}]
        """
    )
    assert config.server.access_log == "off"
    assert config.admin.api_key == "12345"
    assert config.backends["default"][0].id == "1"
    assert config.backends["default"][0].host == "yes"


def test_merge_keys():
    config = parse(
        """\
        backends:
          default:
            - &base {id: a, host: h, port: 80, weight: 5}
            - {<<: *base, id: b, port: 81}
        """
    )
    assert config.backends["default"][1] == BackendConfig(id="b", host="h", port=81, weight=5)


def test_odd_keys_are_quoted_in_paths():
    assert errors('backends:\n  "my group":\n    - {id: a, host: h, port: 0}\nrouting: {}\n') == [
        'speedproxy.yaml:3: backends["my group"][0].port: must be between 1 and 65535, got 0'
    ]


# -- ssl and admin -----------------------------------------------------------------------


def test_ssl_enabled_needs_files():
    assert errors("ssl:\n  enabled: true\n  cert_file: ''\n  key_file: ''\n") == [
        "speedproxy.yaml:3: ssl.cert_file: must be set when ssl.enabled is true",
        "speedproxy.yaml:4: ssl.key_file: must be set when ssl.enabled is true",
    ]
    assert parse("ssl:\n  cert_file: ''\n").ssl.cert_file == ""
    assert parse("ssl: {enabled: true}\n").ssl == SSLConfig(enabled=True)


def test_ssl_enabled_must_be_boolean():
    assert errors('ssl:\n  enabled: "true"\n') == [
        'speedproxy.yaml:2: ssl.enabled: expected a boolean (true or false), got "true"'
    ]


@pytest.mark.parametrize("listen", ["127.0.0.1:9901", "localhost:1", "[::1]:9901", "[fe80::1%eth0]:80"])
def test_admin_listen_valid(listen):
    assert parse(f'admin:\n  listen: "{listen}"\n').admin.listen == listen


@pytest.mark.parametrize(
    "listen, message",
    [
        ("9901", 'expected "host:port" or "[ipv6]:port", got "9901"'),
        ("::1:9901", 'expected "host:port" or "[ipv6]:port", got "::1:9901"'),
        (":9901", 'expected "host:port" or "[ipv6]:port", got ":9901"'),
        ("[nope]:80", "'nope' is not an IPv6 address"),
        ("h:0", "port must be between 1 and 65535, got 0"),
    ],
)
def test_admin_listen_invalid(listen, message):
    assert errors(f'admin:\n  listen: "{listen}"\n') == [f"speedproxy.yaml:2: admin.listen: {message}"]


def test_admin_values():
    config = parse('admin: {listen: "0.0.0.0:1", api_key: s3cret, api_key_file: /run/key}\n')
    assert config.admin == AdminConfig(listen="0.0.0.0:1", api_key="s3cret", api_key_file="/run/key")


# -- backends -----------------------------------------------------------------------------


def test_backends_replace_defaults():
    config = parse(
        """\
        backends:
          default:
            - id: b1
              host: 10.0.0.1
              port: 8000
              weight: 0
              scheme: https
              active: false
              max_conn: 5
              health_check:
                path: /ping
                interval: 10s
                timeout: 500ms
                failures: 1
                successes: 1
                expected_status: [200, 204]
            - {id: b2, host: 10.0.0.2, port: 8000, health_check: {expected_status: "200-299"}}
          empty: []
        """
    )
    assert config.backends == {
        "default": (
            BackendConfig(
                id="b1",
                host="10.0.0.1",
                port=8000,
                weight=0,
                scheme="https",
                active=False,
                max_conn=5,
                health_check=HealthCheckConfig("/ping", 10.0, 0.5, 1, 1, (200, 204)),
            ),
            BackendConfig(id="b2", host="10.0.0.2", port=8000, health_check=HealthCheckConfig(expected_status=(200, 299))),
        ),
        "empty": (),
    }
    assert isinstance(config.backends["default"], tuple)
    assert isinstance(config.backends["default"][0].health_check.expected_status, tuple)


def test_health_check_null_and_empty():
    config = parse(
        """\
        backends:
          default:
            - {id: a, host: h, port: 1, health_check: null}
            - {id: b, host: h, port: 1, health_check: {}}
            - {id: c, host: h, port: 1}
        """
    )
    assert [b.health_check for b in config.backends["default"]] == [None, HealthCheckConfig(), None]


def backend_error(setting: str) -> List[str]:
    return errors(f"backends:\n  default:\n    - id: a\n      host: h\n      port: 80\n      {setting}\n")


@pytest.mark.parametrize(
    "setting, message",
    [
        ("weight: -1", "weight: must be at least 0, got -1"),
        ("weight: heavy", 'weight: expected an integer, got "heavy"'),
        ("scheme: ftp", "scheme: unknown scheme 'ftp' (valid: http, https, h2c, h2)"),
        ('active: "no"', 'active: expected a boolean (true or false), got "no"'),
        ("max_conn: 0", "max_conn: must be at least 1, got 0"),
        ("health_check: 5", "health_check: expected a mapping, got 5"),
        ("health_check: {path: health}", 'health_check.path: must start with "/", got "health"'),
        ("health_check: {interval: 0s}", 'health_check.interval: must be greater than 0, got "0s"'),
        ("health_check: {timeout: soon}", 'health_check.timeout: expected a duration like "30s" or "250ms", got "soon"'),
        ("health_check: {failures: 0}", "health_check.failures: must be at least 1, got 0"),
        ("health_check: {successes: 0}", "health_check.successes: must be at least 1, got 0"),
        (
            "health_check: {expected_status: 200}",
            'health_check.expected_status: expected a status range like "200-399" or [200, 399], got 200',
        ),
        (
            "health_check: {expected_status: [200]}",
            'health_check.expected_status: expected a status range like "200-399" or [200, 399], got a list',
        ),
        (
            "health_check: {expected_status: 2xx}",
            'health_check.expected_status: expected a status range like "200-399" or [200, 399], got "2xx"',
        ),
        (
            "health_check: {expected_status: [399, 200]}",
            "health_check.expected_status: expected 100 <= low <= high <= 599, got 399-200",
        ),
        (
            "health_check: {expected_status: 200-600}",
            "health_check.expected_status: expected 100 <= low <= high <= 599, got 200-600",
        ),
    ],
)
def test_backend_rejects(setting, message):
    assert backend_error(setting) == [f"speedproxy.yaml:6: backends.default[0].{message}"]


def test_backend_required_keys():
    assert errors("backends:\n  default:\n    - weight: 1\n    - {id: '', host: h, port: 1}\n") == [
        "speedproxy.yaml:3: backends.default[0]: missing required key 'id'",
        "speedproxy.yaml:3: backends.default[0]: missing required key 'host'",
        "speedproxy.yaml:3: backends.default[0]: missing required key 'port'",
        "speedproxy.yaml:4: backends.default[1].id: must not be empty",
    ]
    assert backend_error("host: ''") == [
        "speedproxy.yaml:6: backends.default[0].host: duplicate key 'host' (first defined on line 4)"
    ]
    assert errors("backends:\n  default:\n    - {id: a, host: '', port: 1}\n") == [
        "speedproxy.yaml:3: backends.default[0].host: must not be empty"
    ]


def test_backend_ids_unique_within_group():
    problems = errors(
        """\
        backends:
          default:
            - {id: a, host: h, port: 1}
            - {id: a, host: h, port: 2}
          other:
            - {id: a, host: h, port: 3}
        """
    )
    assert problems == ["speedproxy.yaml:4: backends.default[1].id: duplicate backend id 'a' (also used by backends.default[0])"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("backends: [a]\n", "speedproxy.yaml:1: backends: expected a mapping of upstream names to lists, got a list"),
        ("backends:\n  default: {id: a}\n", "speedproxy.yaml:2: backends.default: expected a list of backends, got a mapping"),
        ("backends:\n  default:\n    - a\n", 'speedproxy.yaml:3: backends.default[0]: expected a mapping, got "a"'),
    ],
)
def test_backends_shape(text, problem):
    assert errors(text) == [problem]


# -- routing ------------------------------------------------------------------------------


def test_routing_values():
    config = parse(
        """\
        backends:
          api: [{id: a, host: h, port: 1}]
          web: []
        routing:
          api:
            path: /api
            host: API.Example.com
            upstream: api
            load_balancer: round_robin
            protocols: {websocket: least_connections}
          web:
            path: /
            upstream: web
          api-other-host:
            path: /api
            upstream: web
        """
    )
    assert config.routing == {
        "api": RouteConfig(
            name="api",
            path="/api",
            host="api.example.com",
            upstream="api",
            load_balancer="round_robin",
            protocols=ProtocolBalancers(websocket="least_connections"),
        ),
        "web": RouteConfig(name="web", path="/", upstream="web"),
        "api-other-host": RouteConfig(name="api-other-host", path="/api", upstream="web"),
    }


def test_unknown_upstream_reported_on_upstream_line():
    problems = errors(
        """\
        backends:
          a: []
          b: []
        routing:
          r:
            path: /
            upstream: c
          s:
            path: /s
        """
    )
    assert problems == [
        "speedproxy.yaml:7: routing.r.upstream: unknown upstream 'c' (known: a, b)",
        "speedproxy.yaml:8: routing.s.upstream: unknown upstream 'default' (known: a, b)",
    ]


def test_upstream_checked_against_default_backends():
    assert parse("routing:\n  r: {path: /x}\n").routing == {"r": RouteConfig(name="r", path="/x")}
    assert errors("routing:\n  r: {upstream: api}\n") == [
        "speedproxy.yaml:2: routing.r.upstream: unknown upstream 'api' (known: default)"
    ]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("path: api", 'path: must start with "/", got "api"'),
        ("host: [a]", "host: expected a string, got a list"),
        ("upstream: ''", "upstream: must not be empty"),
        ("load_balancer: fastest", f"load_balancer: unknown load balancer 'fastest' (valid: {', '.join(BALANCER_NAMES)})"),
        ("protocols: {sse: random}", f"protocols.sse: unknown load balancer 'random' (valid: {', '.join(BALANCER_NAMES + ('off',))})"),
        ("protocols: []", "protocols: expected a mapping, got a list"),
    ],
)
def test_route_rejects(setting, message):
    assert errors(f"routing:\n  r:\n    {setting}\n") == [f"speedproxy.yaml:3: routing.r.{message}"]


def test_route_host_null_or_empty_means_any_host():
    config = parse("routing:\n  a: {host: null}\n  b: {host: '', path: /b}\n")
    assert config.routing["a"].host is None
    assert config.routing["b"].host is None


def test_duplicate_route_host_and_path():
    problems = errors(
        """\
        routing:
          a: {path: /x, host: example.com}
          b: {path: /x, host: EXAMPLE.com}
          c: {path: /x}
        """
    )
    assert problems == ["speedproxy.yaml:3: routing.b: same host and path as route 'a'"]


def test_routing_shape():
    assert errors("routing: [a]\n") == [
        "speedproxy.yaml:1: routing: expected a mapping of route names to routes, got a list"
    ]
    assert errors("routing:\n  r: 1\n") == ["speedproxy.yaml:2: routing.r: expected a mapping, got 1"]
    assert parse("routing: {}\n").routing == {}


def test_default_route_needs_default_upstream():
    assert errors("\nbackends:\n  api: []\n  web: []\n") == [
        "speedproxy.yaml:1: routing: no routing section, so the default route needs upstream 'default',"
        " which is not in backends (known: api, web)"
    ]
    config = parse("backends:\n  default: []\n")
    assert config.backends == {"default": ()}
    assert config.routing == {"default": RouteConfig(name="default")}


# -- files and paths ----------------------------------------------------------------------


def test_load_config(tmp_path):
    path = tmp_path / "speedproxy.yaml"
    path.write_text(
        "ssl:\n  cert_file: tls/c.pem\n  key_file: /abs/k.pem\n"
        "admin:\n  api_key_file: ../key\nserver:\n  access_log: logs/access.log\n"
    )
    config = load_config(str(path))
    assert config.source == str(path)
    assert config.ssl.cert_file == str(tmp_path / "tls" / "c.pem")
    assert config.ssl.key_file == "/abs/k.pem"
    assert config.admin.api_key_file == str(tmp_path.parent / "key")
    assert config.server.access_log == str(tmp_path / "logs" / "access.log")


def test_load_config_resolves_defaults_and_keeps_special_values(tmp_path, monkeypatch):
    (tmp_path / "speedproxy.yaml").write_text("server: {access_log: off}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("speedproxy.yaml")
    assert config.source == str(tmp_path / "speedproxy.yaml")
    assert config.ssl.cert_file == str(tmp_path / "certs" / "server.crt")
    assert config.server.access_log == "off"
    assert config.admin.api_key_file == ""
    assert dataclasses.replace(config, source=None, ssl=SSLConfig(), server=ServerConfig()) == Config()


def test_load_config_problems_name_the_path_given(tmp_path, monkeypatch):
    (tmp_path / "speedproxy.yaml").write_text("server:\n  port: x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("speedproxy.yaml")
    assert str(info.value) == 'speedproxy.yaml:2: server.port: expected an integer, got "x"'


def test_load_config_unreadable(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read config file: No such file or directory"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"server: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(binary))


def test_parse_config_leaves_relative_paths_without_base_dir():
    assert parse_config("ssl: {cert_file: a.pem}").ssl.cert_file == "a.pem"
    assert parse_config("ssl: {cert_file: a.pem}", base_dir="/etc/sp").ssl.cert_file == "/etc/sp/a.pem"


def test_etc_config_loads():
    if not ETC_CONFIG.exists():
        pytest.skip(f"{ETC_CONFIG} not written yet")
    config = load_config(str(ETC_CONFIG))
    assert config.source == str(ETC_CONFIG)


# -- mappings (admin API) -----------------------------------------------------------------


def test_mapping_problems_have_no_line():
    assert mapping_errors({"server": {"port": 0, "prot": 1}, "routing": {"r": {"upstream": "x"}}}) == [
        "<api>: server.port: must be between 1 and 65535, got 0",
        "<api>: server.prot: unknown key 'prot'; did you mean 'port'?",
        "<api>: routing.r.upstream: unknown upstream 'x' (known: default)",
    ]


def test_mapping_default_route_problem_has_no_line():
    assert mapping_errors({"backends": {}}) == [
        "<api>: routing: no routing section, so the default route needs upstream 'default',"
        " which is not in backends (known: none)"
    ]


def test_mapping_is_strict_about_strings():
    assert mapping_errors({"backends": {"default": [{"id": 1, "host": "h", "port": 1}]}}) == [
        "<api>: backends.default[0].id: expected a string, got 1"
    ]


def test_mapping_shape_problems():
    from speedproxy.config.loader import _TOP_LEVEL

    assert mapping_errors([1]) == [f"<api>: expected a mapping with keys {', '.join(_TOP_LEVEL)}, got a list"]
    assert mapping_errors({"server": {1: 2}}) == ["<api>: server: mapping keys must be strings, got 1"]
    assert mapping_errors({"server": {"port": object()}}) == ["<api>: server.port: expected an integer, got a object"]


def test_mapping_filename():
    with pytest.raises(ConfigError, match=r"^PUT /api/v1/config: server\.port: "):
        config_from_mapping({"server": {"port": -1}}, "PUT /api/v1/config")


def test_config_to_mapping_layout():
    data = config_to_mapping(Config())
    assert list(data) == ["server", "ssl", "admin", "backends", "routing"]
    assert set(data["server"]) == {f.name for f in dataclasses.fields(ServerConfig)}
    assert data["server"]["workers"] == "auto"
    assert data["server"]["read_timeout"] == "30s"
    assert data["server"]["idle_timeout"] == "1m"
    assert data["server"]["max_header_size"] == "64KiB"
    assert data["server"]["max_body_size"] == "0B"
    assert data["server"]["trusted_proxies"] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert data["routing"] == {
        "default": {
            "path": "/",
            "upstream": "default",
            "load_balancer": "least_connections_weight",
            "protocols": {"websocket": "ip_hash", "sse": "ip_hash"},
        }
    }
    assert json.loads(json.dumps(data)) == data


def test_config_to_mapping_does_not_mask_secrets():
    config = Config(admin=AdminConfig(api_key="s3cret"))
    assert config_to_mapping(config)["admin"]["api_key"] == "s3cret"


def full_config() -> Config:
    hc = HealthCheckConfig("/hc", 0.25, 1.5, 2, 4, (200, 204))
    return Config(
        server=ServerConfig(workers=0, read_timeout=0.001, max_body_size=1500, max_header_size=10**6, trusted_proxies=()),
        ssl=SSLConfig(enabled=True, cert_file="/c", key_file="/k"),
        admin=AdminConfig(listen="[::1]:1", api_key="off", api_key_file="/key"),
        backends={"a": (BackendConfig(id="1", health_check=hc), BackendConfig(id="2", scheme="https")), "b": ()},
        routing={
            "r": RouteConfig(name="r", host="example.com", upstream="a"),
            "s": RouteConfig(name="s", path="/s", upstream="b", protocols=ProtocolBalancers("performance", "weight")),
        },
        source="/etc/speedproxy.yaml",
    )


@pytest.mark.parametrize("config", [Config(), Config(backends={}, routing={}), full_config()])
def test_round_trip(config):
    expected = dataclasses.replace(config, source=None)
    data = config_to_mapping(config)
    assert config_from_mapping(data) == expected
    assert config_from_mapping(json.loads(json.dumps(data))) == expected
    assert parse_config(yaml.safe_dump(data)) == expected


# -- round-trip property -------------------------------------------------------------------

_TEXT = st.text(string.ascii_letters + string.digits + " -_./:#'\"", min_size=1, max_size=12)
_NAMES = st.text(string.ascii_lowercase + string.digits + "-_ .", min_size=1, max_size=8)
_POSITIVE = st.floats(min_value=0, exclude_min=True, max_value=1e9, allow_nan=False)
_BALANCERS = st.sampled_from(BALANCER_NAMES)

_health_checks = st.builds(
    HealthCheckConfig,
    path=st.from_regex(r"/[a-z0-9/]{0,8}", fullmatch=True),
    interval=_POSITIVE,
    timeout=_POSITIVE,
    failures=st.integers(1, 10),
    successes=st.integers(1, 10),
    expected_status=st.lists(st.integers(100, 599), min_size=2, max_size=2).map(sorted).map(tuple),
)
_servers = st.builds(
    ServerConfig,
    host=_TEXT,
    port=st.integers(1, 65535),
    workers=st.none() | st.integers(0, 64),
    read_timeout=_POSITIVE,
    write_timeout=_POSITIVE,
    idle_timeout=_POSITIVE,
    upstream_connect_timeout=_POSITIVE,
    upstream_read_timeout=_POSITIVE,
    upstream_keepalive_timeout=_POSITIVE,
    upstream_keepalive=st.integers(0, 1000),
    max_conn=st.integers(1, 10**6),
    max_header_size=st.integers(1024, 2**40),
    max_body_size=st.integers(0, 2**50),
    real_ip_header=st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True),
    trusted_proxies=st.lists(st.ip_addresses().map(lambda a: str(ip_network(a))), max_size=3).map(tuple),
    access_log=_TEXT,
    shutdown_grace=st.floats(min_value=0, max_value=1e9),
)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    """Draw a valid :class:`Config`."""
    backends = {}
    for name in draw(st.lists(_NAMES, unique=True, max_size=3)):
        ids = draw(st.lists(_TEXT, unique=True, max_size=3))
        backends[name] = tuple(
            BackendConfig(
                id=backend_id,
                host=draw(_TEXT),
                port=draw(st.integers(1, 65535)),
                weight=draw(st.integers(0, 1000)),
                scheme=draw(st.sampled_from(["http", "https"])),
                active=draw(st.booleans()),
                max_conn=draw(st.integers(1, 10**5)),
                health_check=draw(st.none() | _health_checks),
            )
            for backend_id in ids
        )
    routing = {}
    if backends:
        seen = set()
        for name in draw(st.lists(_NAMES, unique=True, max_size=3)):
            route = RouteConfig(
                name=name,
                path=draw(st.from_regex(r"/[a-z0-9]{0,5}", fullmatch=True)),
                host=draw(st.none() | st.from_regex(r"[a-z0-9.-]{1,10}", fullmatch=True)),
                upstream=draw(st.sampled_from(sorted(backends))),
                load_balancer=draw(_BALANCERS),
                protocols=ProtocolBalancers(draw(_BALANCERS), draw(_BALANCERS)),
            )
            if (route.host, route.path) not in seen:
                seen.add((route.host, route.path))
                routing[name] = route
    return Config(
        server=draw(_servers),
        ssl=SSLConfig(enabled=draw(st.booleans()), cert_file=draw(_TEXT), key_file=draw(_TEXT)),
        admin=AdminConfig(
            listen=draw(st.sampled_from(["127.0.0.1:9901", "[::1]:1", "admin.local:65535"])),
            api_key=draw(st.just("") | _TEXT),
            api_key_file=draw(st.just("") | _TEXT),
        ),
        backends=backends,
        routing=routing,
    )


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_round_trip_property(config):
    data = config_to_mapping(config)
    assert config_from_mapping(data) == config
    assert parse_config(yaml.safe_dump(data)) == config


def test_retry_and_long_lived_protocol_settings() -> None:
    config = parse_config(
        "server:\n  retries: 3\n  retry_budget: 0.5\n  websocket_idle_timeout: 2h\n  sse_idle_timeout: 90s\n"
    )
    assert config.server.retries == 3
    assert config.server.retry_budget == 0.5
    assert config.server.websocket_idle_timeout == 7200.0
    assert config.server.sse_idle_timeout == 90.0
    assert config_from_mapping(config_to_mapping(config)) == config


def test_retry_budget_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("server:\n  retry_budget: 2\n", "f.yaml")
    assert "f.yaml:2: server.retry_budget: must be between 0 and 1" in str(info.value)


def test_passive_health_settings() -> None:
    config = parse_config(
        "backends:\n  default:\n    - id: a\n      host: h\n      port: 1\n"
        "      health_check: {passive_failures: 0, passive_5xx: true, unhealthy_timeout: 5s}\n"
    )
    check = config.backends["default"][0].health_check
    assert check is not None
    assert (check.passive_failures, check.passive_5xx, check.unhealthy_timeout) == (0, True, 5.0)
