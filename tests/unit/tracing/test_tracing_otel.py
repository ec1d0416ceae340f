"""Spans of proxied requests with the OpenTelemetry SDK (the ``otel`` extra), in memory."""

from __future__ import annotations

import re
from typing import Tuple

import pytest

pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter", exc_type=ImportError)

from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from speedproxy.config import parse_config  # noqa: E402
from speedproxy.config.model import TracingConfig  # noqa: E402
from speedproxy.testing import IN_MEMORY_CACHED_CONFIG, IN_MEMORY_CONFIG, InMemoryProxy  # noqa: E402
from speedproxy.tracing import apply_tracing  # noqa: E402
from speedproxy.tracing.otel import SpanRecorder, traces_url  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SETTINGS = TracingConfig(otlp_endpoint="http://127.0.0.1:9", service_name="edge")
SENT = re.compile(rb"\r\ntraceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\r\n")

TWO_BACKENDS = """\
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
    - {id: b2, host: 10.1.0.2, port: 8082}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""
CACHED = IN_MEMORY_CACHED_CONFIG


def traced(config: str = IN_MEMORY_CONFIG, settings: TracingConfig = SETTINGS) -> Tuple[InMemoryProxy, InMemorySpanExporter]:
    proxy = InMemoryProxy(config)
    exporter = InMemorySpanExporter()
    apply_tracing(proxy.core, settings, processor=SimpleSpanProcessor(exporter))
    assert isinstance(proxy.core.tracer, SpanRecorder)
    return proxy, exporter


def forwarded(backend) -> Tuple[str, str, str]:
    match = SENT.search(backend.received())
    assert match, backend.received()
    return tuple(part.decode() for part in match.groups())  # type: ignore[return-value]


def test_a_request_is_one_server_span_with_the_ids_the_backend_saw() -> None:
    proxy, exporter = traced()
    proxy.reactor.advance(1000.0)
    client = proxy.client("192.0.2.9")
    client.send(b"GET /movies/1?lang=de HTTP/1.1\r\nHost: example.com:8080\r\n\r\n")
    backend = proxy.accept()
    trace_id, span_id, flags = forwarded(backend)
    assert not exporter.get_finished_spans()  # recorded at the end only
    proxy.reactor.advance(0.25)
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.response().status == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET default"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.context.span_id, "016x") == span_id
    assert flags == "01" and span.context.trace_flags.sampled
    assert span.parent is None  # a new trace: the proxy's span is its root
    assert span.start_time == 1000 * 10**9
    assert span.end_time - span.start_time == 250_000_000
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "url.path": "/movies/1",
        "url.query": "lang=de",
        "server.address": "example.com",
        "server.port": 8080,
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "client.address": "192.0.2.9",
        "speedproxy.request_id": client.response().header(b"x-request-id").decode(),
        "speedproxy.route": "default",
        "speedproxy.backend": "10.1.0.1:8081",
        "speedproxy.backend.id": "b1",
        "speedproxy.upstream": "default",
        "speedproxy.retries": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "edge"


def test_a_client_trace_is_continued_with_its_parent_and_tracestate() -> None:
    proxy, exporter = traced()
    client = proxy.client()
    client.send(
        b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: 00-%s-%s-01\r\ntracestate: congo=t61rcWkgMzE\r\n\r\n"
        % (TRACE.encode(), PARENT.encode())
    )
    backend = proxy.accept()
    trace_id, span_id, _ = forwarded(backend)
    backend.send(b"HTTP/1.1 204 No Content\r\n\r\n")
    (span,) = exporter.get_finished_spans()
    assert trace_id == TRACE == format(span.context.trace_id, "032x")
    assert format(span.context.span_id, "016x") == span_id != PARENT
    assert span.parent is not None and span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT
    assert span.parent.trace_state.get("congo") == "t61rcWkgMzE"
    assert span.attributes["http.response.status_code"] == 204


def test_an_unsampled_client_trace_records_no_span_but_is_forwarded() -> None:
    proxy, exporter = traced()
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: 00-%s-%s-00\r\n\r\n" % (TRACE.encode(), PARENT.encode()))
    backend = proxy.accept()
    assert forwarded(backend)[0::2] == (TRACE, "00")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.response().status == 200
    assert exporter.get_finished_spans() == ()


def test_sample_ratio_zero_samples_no_new_trace() -> None:
    proxy, exporter = traced(settings=TracingConfig(otlp_endpoint="http://127.0.0.1:9", sample_ratio=0.0))
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    assert forwarded(backend)[2] == "00"
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert exporter.get_finished_spans() == ()


def test_retries_and_the_last_backend_are_recorded() -> None:
    proxy, exporter = traced(TWO_BACKENDS)
    client = proxy.client()
    client.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    proxy.refuse()  # b1 refuses: retried on b2
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.response().status == 200
    (span,) = exporter.get_finished_spans()
    assert span.attributes["speedproxy.retries"] == 1
    assert span.attributes["speedproxy.backend.id"] == "b2"
    assert span.attributes["speedproxy.backend"] == "10.1.0.2:8082"


def test_a_5xx_answer_is_an_error_span() -> None:
    proxy, exporter = traced(TWO_BACKENDS)
    client = proxy.client()
    client.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    proxy.refuse()
    proxy.refuse()
    assert client.response().status == 502
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["http.response.status_code"] == 502
    assert span.attributes["speedproxy.retries"] == 1


def test_a_request_without_a_route_is_a_span_too() -> None:
    proxy, exporter = traced()
    client = proxy.client()
    client.send(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.response().status == 404
    (span,) = exporter.get_finished_spans()
    assert span.name == "OPTIONS"
    assert "speedproxy.route" not in span.attributes and "speedproxy.backend" not in span.attributes


def test_the_cache_result_is_recorded() -> None:
    proxy, exporter = traced(CACHED)
    first = proxy.client()
    first.send(b"GET /obj HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok")
    assert first.response().header(b"cache-status") == b"speedproxy; fwd=miss; fwd-status=200; stored"
    second = proxy.client()
    second.send(b"GET /obj HTTP/1.1\r\nHost: h\r\n\r\n")
    hit = second.response().header(b"cache-status")
    assert hit.startswith(b"speedproxy; hit")
    miss_span, hit_span = exporter.get_finished_spans()
    assert miss_span.attributes["speedproxy.cache"] == "speedproxy; fwd=miss; fwd-status=200; stored"
    assert hit_span.attributes["speedproxy.cache"] == hit.decode()
    assert "speedproxy.backend" not in hit_span.attributes  # answered from the cache
    assert hit_span.attributes["speedproxy.route"] == "default"


def test_the_config_turns_export_on_and_off_on_reload() -> None:
    proxy = InMemoryProxy()
    assert proxy.core.tracer is None
    on = parse_config(IN_MEMORY_CONFIG + "tracing: {otlp_endpoint: 'http://127.0.0.1:9', sample_ratio: 0.5}\n")
    proxy.core.apply_config(on)
    recorder = proxy.core.tracer
    assert isinstance(recorder, SpanRecorder)
    assert proxy.core.trace_ids.sample_ratio == 0.5
    proxy.core.apply_config(on)  # unchanged: the same recorder goes on
    assert proxy.core.tracer is recorder
    proxy.core.apply_config(parse_config(IN_MEMORY_CONFIG))
    assert proxy.core.tracer is None
    assert proxy.core.trace_ids.sample_ratio == 1.0  # no export: every new trace is sampled


def test_stop_flushes_the_batch_processor() -> None:
    proxy = InMemoryProxy()
    proxy.core.apply_config(parse_config(IN_MEMORY_CONFIG + "tracing: {otlp_endpoint: 'http://127.0.0.1:9'}\n"))
    provider = proxy.core.tracer.provider
    calls = []
    real = provider.shutdown
    provider.shutdown = lambda: calls.append(real())  # type: ignore[method-assign]
    proxy.core.stop()
    assert len(calls) == 1


@pytest.mark.parametrize(
    "endpoint,url",
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://collector/otlp/v1/traces", "https://collector/otlp/v1/traces"),
    ],
)
def test_traces_url(endpoint: str, url: str) -> None:
    assert traces_url(endpoint) == url
