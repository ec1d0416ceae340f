"""W3C trace context through a real ``twistd speedproxy``, and OTLP span export.

The backend sees the trace the client sent (same trace id, the proxy's span
as parent, ``tracestate`` as sent) or a new one, and the access log line
carries the trace id.  With ``tracing.otlp_endpoint`` the worker posts its
spans (OTLP/HTTP, protobuf) to a collector, here a tiny threaded server.
Without the OpenTelemetry SDK (a stand-in package that cannot be imported)
forwarding still works and ``--check`` says how to install it.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List, Tuple

import pytest

from speedproxy.testing import HTTPBackend, ProxyProcess, RawClient, subprocess_env, twistd_command, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")


def _send(proxy: ProxyProcess, backend: HTTPBackend, headers: List[Tuple[str, str]]):
    """One GET with ``headers``; returns what the backend got and the access log line."""
    path = f"/traced/{uuid.uuid4().hex}"
    with RawClient(*proxy.address) as client:
        client.request("GET", path, headers=headers)
        assert client.read_response().status == 200
    request = backend.wait_for(
        lambda b: next((r for r in b.requests if r.path == path), None), what=f"the request for {path}"
    )
    line = proxy.wait_for_log(f'"GET {path} HTTP/1.1"', timeout=5.0)
    return request, line


def _logged_trace(line: str) -> str:
    match = re.search(r" upstream=\S+ trace=([0-9a-f]{32}) rid=\S+$", line)
    assert match, line
    return match.group(1)


def test_a_request_without_traceparent_starts_a_trace(module_proxy, module_backend) -> None:
    request, line = _send(module_proxy, module_backend, [("tracestate", "orphan=1")])
    values = [value for name, value in request.headers if name.lower() == "traceparent"]
    assert len(values) == 1
    match = TRACEPARENT.match(values[0])
    assert match, values
    assert match.group(1) != "0" * 32 and match.group(2) != "0" * 16 and match.group(3) == "01"
    assert request.header("tracestate") is None
    assert _logged_trace(line) == match.group(1)


def test_a_valid_traceparent_keeps_its_trace_with_a_new_parent(module_proxy, module_backend) -> None:
    request, line = _send(
        module_proxy,
        module_backend,
        [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")],
    )
    match = TRACEPARENT.match(request.header("traceparent") or "")
    assert match, request.headers
    assert match.group(1) == TRACE and match.group(3) == "01"
    assert match.group(2) != PARENT
    assert request.header("tracestate") == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert _logged_trace(line) == TRACE


@pytest.mark.parametrize("bad", [f"00-{TRACE.upper()}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01", "not-a-trace"])
def test_an_invalid_traceparent_is_replaced_and_tracestate_dropped(module_proxy, module_backend, bad: str) -> None:
    request, line = _send(module_proxy, module_backend, [("traceparent", bad), ("tracestate", "a=1")])
    match = TRACEPARENT.match(request.header("traceparent") or "")
    assert match, request.headers
    assert match.group(1) not in (TRACE, TRACE.upper(), "0" * 32)
    assert request.header("tracestate") is None
    assert _logged_trace(line) == match.group(1)


def test_json_access_log_has_the_trace_id(stack, proxy_factory, tmp_path) -> None:
    import json

    origin = stack.backend()
    path = tmp_path / "access.json"
    proxy = proxy_factory(origin, access_log=str(path), access_log_format="json")
    with RawClient(*proxy.address) as client:
        client.request("GET", "/j", headers=[("traceparent", f"00-{TRACE}-{PARENT}-01")])
        assert client.read_response().status == 200
    proxy.stop()
    record = json.loads(path.read_text().splitlines()[0])
    assert record["trace_id"] == TRACE


# -- OTLP export ---------------------------------------------------------------------------


class Collector:
    """Records the POSTs an OTLP/HTTP exporter makes (path, content type, body)."""

    def __init__(self) -> None:
        self.posts: List[Tuple[str, str, bytes]] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with collector._lock:
                    collector.posts.append((self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        found = []
        with self._lock:
            posts = list(self.posts)
        for path, _, body in posts:
            if path != "/v1/traces":
                continue
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
            for resource_spans in message.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append((resource_spans.resource, span))
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    made = Collector()
    try:
        yield made
    finally:
        made.close()


def _attributes(span) -> dict:
    values = {}
    for item in span.attributes:
        value = item.value
        values[item.key] = value.string_value if value.HasField("string_value") else value.int_value
    return values


def test_spans_are_posted_to_the_otlp_endpoint(stack, collector) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter", exc_type=ImportError)
    origin = stack.backend()
    proxy = ProxyProcess(
        {
            "backends": {"default": [{"id": "b0", "host": "127.0.0.1", "port": origin.port}]},
            "routing": {"api": {"path": "/", "upstream": "default"}},
            "tracing": {"otlp_endpoint": f"http://127.0.0.1:{collector.port}", "service_name": "e2e-proxy"},
        },
        directory=stack._directory_for("otlp"),
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"},  # the batch processor's export interval (ms)
    )
    stack.proxies.append(proxy)
    proxy.start()
    with RawClient(*proxy.address) as client:
        client.request("GET", "/movies/7", headers=[("traceparent", f"00-{TRACE}-{PARENT}-01")])
        assert client.read_response().status == 200
    seen = origin.last_request.header("traceparent")
    forwarded_span = TRACEPARENT.match(seen or "").group(2)  # type: ignore[union-attr]
    wait_until(lambda: collector.spans(), 10.0, "a span posted to the collector")
    (path, content_type, _), *_ = collector.posts
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    (resource, span), *more = collector.spans()
    assert not more
    assert span.trace_id.hex() == TRACE
    assert span.parent_span_id.hex() == PARENT
    assert span.span_id.hex() == forwarded_span
    assert span.name == "GET api"
    attributes = _attributes(span)
    assert attributes["speedproxy.route"] == "api"
    assert attributes["speedproxy.backend"] == f"127.0.0.1:{origin.port}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/movies/7"
    assert attributes["speedproxy.retries"] == 0
    service = {item.key: item.value.string_value for item in resource.attributes}
    assert service["service.name"] == "e2e-proxy"
    assert "Traceback" not in proxy.log_text()


# -- without the OpenTelemetry SDK -----------------------------------------------------------


@pytest.fixture
def no_sdk_path(tmp_path: Path) -> str:
    """A PYTHONPATH whose ``opentelemetry`` package cannot be imported (the extra is missing)."""
    poison = tmp_path / "no-otel"
    (poison / "opentelemetry").mkdir(parents=True)
    (poison / "opentelemetry" / "__init__.py").write_text(
        "raise ImportError('the OpenTelemetry SDK is not installed here')\n"
    )
    return f"{poison}:{Path(__file__).resolve().parents[2]}"


def test_check_without_the_sdk_says_to_install_the_extra(tmp_path: Path, no_sdk_path: str) -> None:
    config = tmp_path / "speedproxy.yaml"
    config.write_text("server:\n  port: 8080\ntracing:\n  otlp_endpoint: http://127.0.0.1:4318\n")
    argv = twistd_command() + ["-n", "--pidfile=", "-l", "-", "speedproxy", "--config", str(config), "--check"]
    result = subprocess.run(
        argv, env=subprocess_env({"PYTHONPATH": no_sdk_path}), capture_output=True, text=True, timeout=60, cwd=str(tmp_path)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "speedproxy.yaml:4: tracing.otlp_endpoint: tracing needs the OpenTelemetry SDK" in output
    assert "pip install 'speedproxy[otel]'" in output
    # The same file without an endpoint is valid without the SDK.
    config.write_text("server:\n  port: 8080\ntracing:\n  service_name: edge\n")
    result = subprocess.run(
        argv, env=subprocess_env({"PYTHONPATH": no_sdk_path}), capture_output=True, text=True, timeout=60, cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_forwarding_works_without_the_sdk(stack, no_sdk_path: str) -> None:
    origin = stack.backend()
    proxy = ProxyProcess(
        {
            "backends": {"default": [{"id": "b0", "host": "127.0.0.1", "port": origin.port}]},
            "routing": {"default": {"path": "/", "upstream": "default"}},
            "tracing": {"service_name": "no-sdk"},
        },
        directory=stack._directory_for("no-sdk"),
        env={"PYTHONPATH": no_sdk_path},
    )
    stack.proxies.append(proxy)
    proxy.start()
    request, line = _send(proxy, origin, [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("tracestate", "a=1")])
    match = TRACEPARENT.match(request.header("traceparent") or "")
    assert match and match.group(1) == TRACE and match.group(2) != PARENT
    assert request.header("tracestate") == "a=1"
    assert _logged_trace(line) == TRACE
    assert "ImportError" not in proxy.log_text()


def test_queued_spans_are_exported_on_sigterm(stack, collector) -> None:
    """With the SDK's default 5 s batch delay, stopping the proxy still exports the span."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter", exc_type=ImportError)
    origin = stack.backend()
    proxy = ProxyProcess(
        {
            "backends": {"default": [{"id": "b0", "host": "127.0.0.1", "port": origin.port}]},
            "routing": {"default": {"path": "/", "upstream": "default"}},
            "tracing": {"otlp_endpoint": f"http://127.0.0.1:{collector.port}/v1/traces"},
        },
        directory=stack._directory_for("otlp-sigterm"),
    )
    stack.proxies.append(proxy)
    proxy.start()
    with RawClient(*proxy.address) as client:
        client.request("GET", "/last")
        assert client.read_response().status == 200
    trace_id = TRACEPARENT.match(origin.last_request.header("traceparent") or "").group(1)  # type: ignore[union-attr]
    time.sleep(0.3)
    assert collector.spans() == []  # still queued (5 s delay)
    proxy.stop()
    (_, span), *_ = collector.spans()
    assert span.trace_id.hex() == trace_id
    assert span.parent_span_id == b""  # a new trace: the proxy's span is the root
