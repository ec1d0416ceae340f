"""The ``tracing:`` section, and speedproxy without the OpenTelemetry SDK."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import List

import pytest

from speedproxy.config import ConfigError, config_from_mapping, config_to_mapping, parse_config
from speedproxy.config.model import TracingConfig
from speedproxy.tracing import OTEL_MODULES, otel_missing


def errors(text: str) -> List[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "speedproxy.yaml")
    return caught.value.problems


@pytest.fixture
def without_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ``speedproxy[otel]`` were not installed: the SDK's packages cannot be found."""
    for name in OTEL_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]


def test_defaults_export_nothing() -> None:
    assert parse_config("").tracing == TracingConfig(otlp_endpoint="", service_name="speedproxy", sample_ratio=1.0)
    assert parse_config("tracing:\n").tracing == TracingConfig()
    assert "tracing" not in config_to_mapping(parse_config(""))


def test_without_an_endpoint_the_sdk_is_not_needed(without_sdk: None) -> None:
    assert otel_missing() is not None
    config = parse_config("tracing: {service_name: edge, sample_ratio: 0.5}\n")
    assert config.tracing == TracingConfig(service_name="edge", sample_ratio=0.5)


def test_values_and_round_trip() -> None:
    pytest.importorskip("opentelemetry.sdk", exc_type=ImportError)
    config = parse_config(
        "tracing:\n  otlp_endpoint: http://collector:4318\n  service_name: edge-proxy\n  sample_ratio: 0.25\n"
    )
    assert config.tracing == TracingConfig("http://collector:4318", "edge-proxy", 0.25)
    mapping = config_to_mapping(config)
    assert mapping["tracing"] == {
        "otlp_endpoint": "http://collector:4318",
        "service_name": "edge-proxy",
        "sample_ratio": 0.25,
    }
    assert config_from_mapping(mapping).tracing == config.tracing


@pytest.mark.parametrize(
    "body,problem",
    [
        ("  sample_ratio: 1.5\n", "speedproxy.yaml:3: tracing.sample_ratio: must be between 0 and 1, got 1.5"),
        ("  sample_ratio: half\n", "speedproxy.yaml:3: tracing.sample_ratio: expected a number between 0 and 1, got \"half\""),
        ("  service_name: ''\n", "speedproxy.yaml:3: tracing.service_name: must not be empty"),
        ("  otlp_endpoint: ftp://collector\n", 'speedproxy.yaml:3: tracing.otlp_endpoint: expected an OTLP/HTTP URL such as "http://collector:4318", got'),
        ("  otlp_endpoint: 'http://:4318'\n", "speedproxy.yaml:3: tracing.otlp_endpoint: expected an OTLP/HTTP URL"),
        ("  otlp_endpoint: 'http://c:99999'\n", "speedproxy.yaml:3: tracing.otlp_endpoint: expected an OTLP/HTTP URL"),
        ("  otlp_endpont: http://c:4318\n", "speedproxy.yaml:3: tracing.otlp_endpont: unknown key 'otlp_endpont'; did you mean 'otlp_endpoint'?"),
    ],
)
def test_problems_name_file_line_and_key(body: str, problem: str) -> None:
    found = errors("server: {port: 8080}\ntracing:\n" + body)
    assert len(found) == 1 and found[0].startswith(problem), found


def test_an_endpoint_without_the_sdk_is_a_config_error(without_sdk: None) -> None:
    (problem,) = errors("tracing:\n  otlp_endpoint: http://collector:4318\n")
    assert problem.startswith("speedproxy.yaml:2: tracing.otlp_endpoint: tracing needs the OpenTelemetry SDK")
    assert "pip install 'speedproxy[otel]'" in problem
    with pytest.raises(ConfigError) as caught:  # the admin API's path too
        config_from_mapping({"tracing": {"otlp_endpoint": "http://collector:4318"}})
    assert "pip install 'speedproxy[otel]'" in caught.value.problems[0]


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_data_path_and_the_check_never_import_the_sdk_unless_export_is_on() -> None:
    """Forwarding works with no OpenTelemetry at all (imports of it fail)."""
    out = _run(
        """
        import re, sys
        sys.modules["opentelemetry"] = None  # any import of it fails
        from speedproxy.config import parse_config
        parse_config("tracing: {service_name: x, sample_ratio: 0.5}\\n")
        from speedproxy.testing import InMemoryProxy
        proxy = InMemoryProxy()
        client = proxy.client()
        client.send(b"GET / HTTP/1.1\\r\\nHost: h\\r\\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\\r\\ntracestate: a=1\\r\\n\\r\\n")
        backend = proxy.accept()
        sent = backend.received()
        assert re.search(rb"\\r\\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-(?!00f067aa0ba902b7)[0-9a-f]{16}-01\\r\\n", sent), sent
        assert b"\\r\\ntracestate: a=1\\r\\n" in sent
        backend.send(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n")
        assert client.response().status == 200
        print(sorted(name for name, module in sys.modules.items() if name.startswith("opentelemetry") and module is not None))
        """
    )
    assert out.strip() == "[]"


def test_a_core_without_the_sdk_logs_and_forwards(without_sdk: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the SDK vanish after the check (an upgrade), the worker still serves."""
    from speedproxy.testing import InMemoryProxy
    from speedproxy.tracing import apply_tracing

    monkeypatch.setitem(sys.modules, "speedproxy.tracing.otel", None)  # type: ignore[arg-type]
    proxy = InMemoryProxy()
    apply_tracing(proxy.core, TracingConfig(otlp_endpoint="http://127.0.0.1:9"))
    assert proxy.core.tracer is None
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    assert b"\r\ntraceparent: 00-" in backend.received()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.response().status == 200
