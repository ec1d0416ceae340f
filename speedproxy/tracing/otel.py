"""OpenTelemetry spans of proxied requests (the ``speedproxy[otel]`` extra).

One :class:`SpanRecorder` per worker owns a ``TracerProvider`` whose spans
go through a ``BatchSpanProcessor`` to the OTLP/HTTP exporter: the data path
only builds the span and queues it, the processor's own thread exports
batches, so the reactor never waits for the collector.

The span of a request is recorded once it is over (``ProxyCore.log_exchange``):
it starts at ``exchange.started``, ends now, and carries exactly the ids the
backend saw: the trace id and parent of the ``traceparent`` the client sent
(or of the new trace) and, as its own span id, the parent id the proxy
forwarded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Optional
from urllib.parse import urlsplit

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from speedproxy import __version__
from speedproxy.tracing.context import SAMPLED_DIGITS

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.config.model import TracingConfig
    from speedproxy.proxy.exchange import Exchange

#: A context without a current span: new traces are roots.
_ROOT = Context()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``tracing.otlp_endpoint``.

    A base URL (no path, as ``OTEL_EXPORTER_OTLP_ENDPOINT``) gets the
    signal's path ``/v1/traces``; a URL with a path is used as it is.
    """
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class _GivenIds(IdGenerator):
    """Hands the SDK the ids the data path already chose for the span."""

    trace_id = 0
    span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id

    def is_trace_id_random(self) -> bool:
        return True


class SpanRecorder:
    """Records one OpenTelemetry span per finished exchange of a worker."""

    def __init__(self, settings: "TracingConfig", processor: Any = None) -> None:
        self._ids = _GivenIds()
        resource = Resource.create(
            {
                "service.name": settings.service_name,
                "service.version": __version__,
                "process.pid": os.getpid(),
            }
        )
        provider = TracerProvider(
            sampler=ALWAYS_ON,  # sampled or not is decided by the traceparent's flag
            resource=resource,
            id_generator=self._ids,
            shutdown_on_exit=False,  # ProxyCore.stop() flushes
        )
        if processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint)))
        provider.add_span_processor(processor)
        self.provider = provider
        self._tracer = provider.get_tracer("speedproxy", __version__)

    def record(self, exchange: "Exchange", status: int, end: float) -> None:
        """The span of ``exchange``, which ended with ``status`` at clock time ``end``."""
        trace_id, span_id, flags = exchange.trace
        if flags[1] not in SAMPLED_DIGITS:
            return
        request = exchange.request
        ids = self._ids
        ids.span_id = int(span_id, 16)
        incoming = request.traceparent  # a valid one; an invalid one was set to None
        if incoming is not None:
            tracestate = request.tracestate
            parent = SpanContext(
                int(trace_id, 16),
                int(incoming[36:52], 16),
                is_remote=True,
                trace_flags=TraceFlags(int(flags, 16)),
                trace_state=TraceState.from_header([tracestate.decode("latin-1")]) if tracestate else None,
            )
            context = trace_api.set_span_in_context(NonRecordingSpan(parent), _ROOT)
        else:
            ids.trace_id = int(trace_id, 16)
            context = _ROOT
        method = request.method.decode("latin-1")
        route = exchange.route
        attributes: Dict[str, Any] = {
            "http.request.method": method,
            "url.path": request.path.decode("latin-1"),
            "http.response.status_code": status,
            "network.protocol.version": request.version[5:].decode("latin-1"),
            "client.address": exchange.client_ip,
            "speedproxy.request_id": exchange.request_id.decode("ascii"),
            "speedproxy.retries": max(len(exchange.tried) - 1, 0),
        }
        if request.query:
            attributes["url.query"] = request.query[1:].decode("latin-1")
        host = request.host.decode("latin-1")
        if host:
            name, port = _split_host(host)
            attributes["server.address"] = name
            if port is not None:
                attributes["server.port"] = port
        if route is not None:
            attributes["speedproxy.route"] = route.name
        if exchange.tried:
            backend = exchange.tried[-1]
            attributes["speedproxy.backend"] = backend.config.address
            attributes["speedproxy.backend.id"] = backend.config.id
            group = getattr(backend, "group", None)
            if group is not None:
                attributes["speedproxy.upstream"] = group.name
        cache_status = getattr(exchange, "cache_status", None)
        if cache_status:
            attributes["speedproxy.cache"] = cache_status.decode("latin-1")
        span = self._tracer.start_span(
            "%s %s" % (method, route.name) if route is not None else method,
            context=context,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=int(exchange.started * 1e9),
        )
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=int(end * 1e9))

    def shutdown(self, wait: bool = True) -> None:
        """Export what is queued and stop, in a thread of its own.

        ``wait``: wait for it, at most :attr:`FLUSH_TIMEOUT` seconds (a worker
        stopping: a collector that is down must not hold up the exit); a
        reload does not wait.
        """
        import threading

        thread = threading.Thread(target=self.provider.shutdown, name="speedproxy-tracing-flush", daemon=True)
        thread.start()
        if wait:
            thread.join(self.FLUSH_TIMEOUT)

    #: The longest a stopping worker waits for its last spans to be exported.
    FLUSH_TIMEOUT = 3.0


def _split_host(host: str) -> "tuple[str, Optional[int]]":
    """``host[:port]`` (IPv6 in brackets) as name and port."""
    if host.startswith("["):
        end = host.find("]")
        name = host[1:end] if end > 0 else host
        rest = host[end + 1 :] if end > 0 else ""
        return name, int(rest[1:]) if rest[:1] == ":" and rest[1:].isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host, None
