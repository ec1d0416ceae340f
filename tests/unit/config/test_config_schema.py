"""Tests for :mod:`speedproxy.config.schema`: every model field is declared once, and the
loader and the writer (``persist``, ``GET /api/v1/config``) agree on every one of them."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import pytest
import yaml
from zope.interface import implementer

from speedproxy.config import model
from speedproxy.config.document import CONFIG, TOP_LEVEL
from speedproxy.config.loader import ConfigError, config_from_mapping, config_to_mapping, parse_config
from speedproxy.config.schema import Section, sections_under
from speedproxy.filters import registry
from speedproxy.filters.interface import IFilterKind

ROOT = Path(__file__).resolve().parents[3]

#: Every optional section set and (nearly) every key away from its default.
FULL = """\
server:
  host: 127.0.0.2
  port: 8443
  workers: 3
  read_timeout: 11s
  write_timeout: 12s
  idle_timeout: 13s
  upstream_connect_timeout: 2s
  upstream_read_timeout: 14s
  upstream_keepalive_timeout: 15s
  upstream_keepalive: 7
  max_conn: 99
  max_header_size: 32KiB
  max_body_size: 5MiB
  real_ip_header: X-Client-IP
  trusted_proxies: [192.168.0.0/16]
  access_log: off
  access_log_format: json
  shutdown_grace: 3s
  slow_request_threshold: 250ms
  retries: 4
  retry_budget: 0.5
  websocket_idle_timeout: 2m
  sse_idle_timeout: 3m
  zero_copy: false
  merge_slashes: true
  forward_original_path: true
  escaped_slashes: keep
  max_request_line: 8KiB
  panic_threshold: 30%
  queue_timeout: 1s
  queue_size: 10
  cpu_affinity: [0, 1]
  allow: [10.1.0.0/16]
  deny: [10.1.2.0/24]
  h2_max_concurrent_streams: 64
ssl:
  enabled: true
  cert_file: /etc/speedproxy/tls.crt
  key_file: /etc/speedproxy/tls.key
admin:
  listen: 127.0.0.1:9911
  api_key: an-admin-key
  api_key_file: /etc/speedproxy/admin.key
  max_body_size: 64KiB
backends:
  media:
    - id: m1
      name: Media one
      host: 127.0.0.3
      port: 8001
      weight: 50
      scheme: https
      active: false
      max_conn: 10
      admin_url: http://127.0.0.3:9901
      admin_api_key: a-backend-key
      health_check:
        path: /ping
        interval: 7s
        timeout: 2s
        failures: 5
        successes: 4
        expected_status: 200-299
        passive_failures: 6
        passive_5xx: true
        unhealthy_timeout: 20s
        panic_threshold: 40%
routing:
  everything:
    host: media.example.com
    path: /media/
    upstream: media
    load_balancer: round_robin
    protocols: {websocket: off, sse: least_connections}
    filters:
      - name: test.echo
        options: {tenant: acme}
    cache:
      enabled: true
      default_ttl: 5m
      key: {query: [page], ignore_query: [sig], headers: [Accept-Language]}
      stale_while_revalidate: 10s
      stale_if_error: 1h
      min_uses: 2
    hls:
      enabled: true
      prefetch_depth: 2
      max_prefetch_downloads: 4
      live_playlist_ttl: 2s
      vod_playlist_ttl: 10m
      segment_ttl: 1d
      rewrite_absolute_urls: false
      rate_limit: 1MiB/s
      rate_limit_after: 1MiB
      max_bandwidth: 100MiB/s
      max_variant_bandwidth: 2.5M
    compression:
      types: [application/json]
      min_size: 2KiB
      gzip_level: 6
      brotli: false
      brotli_level: 5
      brotli_stream_level: 3
    allow: [10.1.0.0/16]
    deny: [10.1.3.0/24]
    cors:
      origins: [https://player.example.com]
      methods: [GET, POST]
      headers: [X-Token]
      expose: [X-Cache]
      credentials: true
      max_age: 1m
    signed_urls:
      secrets: ["${env:SPX_SCHEMA_TEST_KEY}", a-second-key-0123456789]
      param_signature: s
      param_expires: e
      bind_client_ip: true
      query: ignore
    rate_limit: {requests: 5, per: 2s, burst: 10, key: session}
    connection_limit: {per_client: 4, status: 429}
    sessions:
      required: false
      cookie: sid
      ttl: 1h
      max_per_client: 2
      realm: media
      bind_client_ip: true
cache:
  memory_size: 1MiB
  disk_path: /var/cache/speedproxy
  disk_size: 2GiB
  max_object_size: 8MiB
  cascade_purge: true
tracing:
  otlp_endpoint: http://collector:4318
  service_name: edge-test
  sample_ratio: 0.25
grpc:
  enabled: true
  host: 127.0.0.4
  port: 9191
cluster:
  redis: redis://127.0.0.1:6380/2
  node_name: node-a
  heartbeat: 3s
  timeout: 1s
  key_prefix: "spx:"
accounting:
  interval: 30s
  redis_stream: spx-traffic
  max_buffer: 500
  routes: [everything]
  api_key_header: X-Key
upstreams:
  media:
    add_query: {api_key: "${env:SPX_SCHEMA_TEST_KEY}"}
    set_headers: {Authorization: Bearer a-token}
    expect_content_type: [video/*]
"""

#: What FULL cannot hold beside its other keys: a gRPC route (no filters, no
#: server allow/deny) on HTTP/2 backends, and accounting to a collector.
ALT = """\
backends:
  calls:
    - {id: g1, host: 127.0.0.5, port: 50051, scheme: h2c}
routing:
  calls:
    path: /pkg.Service/
    upstream: calls
    protocols: {grpc: round_robin}
accounting:
  collector: http://collector:8000/batches
"""


def _extras_missing() -> Dict[str, Tuple[str, str]]:
    """``FULL``'s keys needing an extra not installed here (Python 3.9, PyPy):
    ``{model field: (text in FULL, text without it)}``."""
    from speedproxy.admin.grpc import grpc_missing
    from speedproxy.tracing import otel_missing

    missing = {}
    if otel_missing() is not None:
        missing["TracingConfig.otlp_endpoint"] = ("  otlp_endpoint: http://collector:4318\n", "")
    if grpc_missing() is not None:
        missing["GrpcConfig.enabled"] = ("grpc:\n  enabled: true\n", "grpc:\n")
    return missing


def _full() -> str:
    """FULL without the keys whose extra is not installed."""
    text = FULL
    for old, new in _extras_missing().values():
        assert text.count(old) == 1
        text = text.replace(old, new)
    return text


@implementer(IFilterKind)
class _AnyOptions:
    """A filter kind for the tests, of any name: its options are any mapping."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check_options(self, options: Any) -> Any:
        return dict(options)

    def build(self, options: Any, context: Any) -> Any:
        raise NotImplementedError  # never built: these tests only read configs


class _EveryFilterKind(dict):
    """Stands for the installed filter kinds: every name is one (README examples name plugins)."""

    def get(self, name: Any, default: Any = None) -> Any:
        return _AnyOptions(name)


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPX_SCHEMA_TEST_KEY", "an-env-signing-key-0123456789")
    monkeypatch.setattr(registry, "_found", _EveryFilterKind())


def _model_dataclasses() -> List[type]:
    return [
        cls
        for _, cls in inspect.getmembers(model, inspect.isclass)
        if dataclasses.is_dataclass(cls) and cls.__module__ == model.__name__
    ]


def _instances(value: Any, cls: type) -> Iterator[Any]:
    """Every instance of *cls* in *value* (itself, or inside mappings and tuples)."""
    if isinstance(value, cls):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _instances(item, cls)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _instances(item, cls)


def _records(config: model.Config) -> Iterator[Tuple[Section, Any]]:
    """``(section, record)`` for every record of *config*, walking the schema."""
    todo: List[Tuple[Section, Any]] = [(CONFIG, config)]
    while todo:
        spec, record = todo.pop()
        yield spec, record
        for key, kind in spec.fields.items():
            if kind.holds is not None:
                value = getattr(record, kind.attr or key)
                todo.extend((kind.holds, inner) for inner in _instances(value, kind.holds.cls))


# -- the schema itself ------------------------------------------------------------------


def test_every_model_dataclass_is_a_section() -> None:
    reached = [spec.cls for spec in sections_under(CONFIG)]
    assert len(reached) == len(set(reached)), "a model class is declared by two sections"
    assert set(reached) == set(_model_dataclasses())


@pytest.mark.parametrize("spec", list(sections_under(CONFIG)), ids=lambda spec: spec.cls.__name__)
def test_every_field_is_declared_once(spec: Section) -> None:
    fields = [field.name for field in dataclasses.fields(spec.cls)]
    written = [kind.attr or key for key, kind in spec.fields.items()]
    assert len(written) == len(set(written)), f"{spec.cls.__name__}: one attribute written by two keys"
    assert set(written).isdisjoint(spec.derived), f"{spec.cls.__name__}: a derived field is also a key"
    assert sorted(set(written) | set(spec.derived)) == sorted(fields)
    assert set(spec.required) <= set(spec.fields)


def test_keys_are_written_in_model_order() -> None:
    for spec in sections_under(CONFIG):
        order = [field.name for field in dataclasses.fields(spec.cls)]
        written = [order.index(kind.attr or key) for key, kind in spec.fields.items()]
        assert written == sorted(written), spec.cls.__name__


def test_top_level_keys_are_the_config_sections() -> None:
    assert TOP_LEVEL == tuple(CONFIG.fields)
    assert TOP_LEVEL[:5] == ("server", "ssl", "admin", "backends", "routing")


def test_the_full_configs_set_every_field_away_from_its_default() -> None:
    """So that the round trips below exercise every key's writer, not only its default."""
    configs = [parse_config(_full(), "full.yaml"), parse_config(ALT, "alt.yaml")]
    left: Dict[str, set] = {}
    for spec in sections_under(CONFIG):
        left[spec.cls.__name__] = {kind.attr or key for key, kind in spec.fields.items()}
    for config in configs:
        for spec, record in _records(config):
            defaults = _defaults(spec.cls)
            for key, kind in spec.fields.items():
                attr = kind.attr or key
                if attr not in defaults or getattr(record, attr) != defaults[attr]:
                    left[spec.cls.__name__].discard(attr)
    for exempt in _extras_missing():  # set only where the extra is installed
        cls, attr = exempt.split(".")
        left[cls].discard(attr)
    assert {name: attrs for name, attrs in left.items() if attrs} == {}


def _defaults(cls: type) -> Dict[str, Any]:
    out = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[field.name] = field.default_factory()  # type: ignore[misc]
    return out


# -- load -> write -> load ------------------------------------------------------------------


def _readme_configs() -> List[Tuple[str, str]]:
    """The README's config examples (literal blocks of top-level keys only), each made whole."""
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"::\n\n((?:(?:    .*)?\n)+)", text):
        block = textwrap.dedent(match.group(1))
        try:
            data = yaml.safe_load(block)
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and data and set(data) <= set(TOP_LEVEL):
            line = text.count("\n", 0, match.start(1)) + 1
            found.append((f"README.rst:{line}", _made_whole(data)))
    return found


def _made_whole(data: Dict[str, Any]) -> str:
    """An example completed with what it names but shows elsewhere: its upstream groups,
    the routes it accounts, and its secrets (files, variables: one test variable instead);
    without the keys of an extra not installed here."""
    routing = data.get("routing") or {}
    backends = data.setdefault("backends", {}) or {}
    data["backends"] = backends
    named = {route.get("upstream", "default") for route in routing.values() if isinstance(route, dict)}
    named |= set(data.get("upstreams") or {})
    if "routing" not in data:
        named.add("default")
    for name in sorted(named - set(backends)):
        backends[name] = [{"id": f"{name}-1", "host": "127.0.0.1", "port": 9}]
    for name in (data.get("accounting") or {}).get("routes", []):
        routing.setdefault(name, {"path": f"/{name}/", "upstream": next(iter(backends))})
    if routing:
        data["routing"] = routing
    missing = _extras_missing()  # keys shown with an extra that is not installed here
    if "TracingConfig.otlp_endpoint" in missing:
        (data.get("tracing") or {}).pop("otlp_endpoint", None)
    if "GrpcConfig.enabled" in missing:
        (data.get("grpc") or {}).pop("enabled", None)
    text = yaml.safe_dump(data, sort_keys=False)
    return re.sub(r"\$\{(file|env):[^}]*\}", "${env:SPX_SCHEMA_TEST_KEY}", text)


def _shipped_configs() -> List[Tuple[str, str]]:
    etc = (ROOT / "etc" / "speedproxy.yaml").read_text(encoding="utf-8")
    # debian/rules installs it with the access log in /var/log (its conffile).
    conffile, count = re.subn(
        r'(?m)^(  access_log:) "-"', r'\1 "/var/log/speedproxy/access.log"  # or "-": the journal', etc
    )
    assert count == 1, "debian/rules' sed no longer matches etc/speedproxy.yaml"
    return [("etc/speedproxy.yaml", etc), ("debian conffile", conffile), ("FULL", _full()), ("ALT", ALT)]


def _loadable(sources: List[Tuple[str, str]]) -> List[Tuple[str, model.Config]]:
    out = []
    for name, text in sources:
        try:
            out.append((name, parse_config(text, name)))
        except ConfigError:
            continue  # a README fragment (an upstream defined elsewhere, a secret file)
    return out


def test_every_readme_example_loads() -> None:
    # The README round trip below must not pass by finding nothing.
    examples = _readme_configs()
    assert len(examples) >= 10
    assert len(_loadable(examples)) == len(examples)


@pytest.mark.parametrize(
    "name, text",
    _shipped_configs() + _readme_configs(),
    ids=lambda value: value if not isinstance(value, str) or "\n" not in value else "",
)
def test_load_write_load_gives_the_same_config(name: str, text: str) -> None:
    config = parse_config(text, name)
    data = config_to_mapping(config)
    # The admin API (JSON), persist (YAML, as admin/changes.py writes it) and workers (a mapping).
    assert config_from_mapping(json.loads(json.dumps(data))) == config
    persisted = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    assert parse_config(persisted, "persisted.yaml") == config
    again = config_from_mapping(data)
    assert again == config
    assert config_to_mapping(again) == data


def test_secrets_are_written_as_given_and_read_resolved() -> None:
    config = parse_config(_full(), "full.yaml")
    signed = config.routing["everything"].signed_urls
    assert signed is not None
    assert signed.secrets == ("an-env-signing-key-0123456789", "a-second-key-0123456789")
    data = config_to_mapping(config)
    assert data["routing"]["everything"]["signed_urls"]["secrets"] == [
        "${env:SPX_SCHEMA_TEST_KEY}",
        "a-second-key-0123456789",
    ]
    assert data["upstreams"]["media"]["add_query"] == {"api_key": "${env:SPX_SCHEMA_TEST_KEY}"}
    assert config.upstreams["media"].add_query == (("api_key", "an-env-signing-key-0123456789"),)


def test_each_key_is_written_in_its_human_form() -> None:
    data = config_to_mapping(parse_config(_full(), "full.yaml"))
    assert data["server"]["read_timeout"] == "11s"
    assert data["server"]["max_body_size"] == "5MiB"
    assert data["server"]["retry_budget"] == 0.5
    assert data["server"]["panic_threshold"] == 30.0
    assert data["server"]["workers"] == 3
    assert data["server"]["cpu_affinity"] == [0, 1]
    assert data["admin"]["max_body_size"] == 64 * 1024  # in bytes, as GET /api/v1/config always showed it
    check = data["backends"]["media"][0]["health_check"]
    assert check["expected_status"] == "200-299"
    assert check["panic_threshold"] == 40.0
    route = data["routing"]["everything"]
    assert route["hls"]["live_playlist_ttl"] == "2s"
    assert route["hls"]["rate_limit_after"] == "1MiB"
    assert route["hls"]["rate_limit"] == 1024 * 1024
    assert route["hls"]["max_variant_bandwidth"] == 2_500_000
    assert route["filters"] == [{"name": "test.echo", "options": {"tenant": "acme"}}]
    assert route["cache"]["key"] == {"query": ["page"], "ignore_query": ["sig"], "headers": ["Accept-Language"]}
    assert data["cluster"]["timeout"] == "1s"
    assert data["accounting"]["routes"] == ["everything"]


def test_keys_at_their_defaults_are_left_out_where_the_file_leaves_them_out() -> None:
    data = config_to_mapping(parse_config("routing:\n  r: {path: /}\n", "min.yaml"))
    assert list(data) == ["server", "ssl", "admin", "backends", "routing"]
    assert set(data["routing"]["r"]) == {"path", "upstream", "load_balancer", "protocols"}
    assert set(data["backends"]["default"][0]) == {"id", "host", "port", "weight", "scheme", "active", "max_conn"}
