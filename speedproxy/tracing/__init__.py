"""Tracing: W3C Trace Context on the data path, OpenTelemetry spans optionally.

:mod:`speedproxy.tracing.context` (always on, no dependency) forwards
``traceparent``/``tracestate``; :mod:`speedproxy.tracing.otel` (the
``speedproxy[otel]`` extra, imported only when ``tracing.otlp_endpoint`` is
set) records one span per proxied request and exports it over OTLP/HTTP.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger

from speedproxy.tracing.context import TraceIds

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.config.model import TracingConfig

log = Logger(namespace="speedproxy.tracing")

#: What span export needs (the API, the SDK, the OTLP/HTTP exporter); the
#: ``otel`` extra installs it.  Their parents are namespace packages, so
#: looking them up runs none of their code.
OTEL_MODULES = ("opentelemetry.trace", "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


def otel_missing() -> Optional[str]:
    """The first module of the OpenTelemetry SDK that cannot be found, or ``None``.

    Looks the packages up without importing them, so ``--check`` stays cheap.
    """
    for name in OTEL_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def apply_tracing(core: Any, settings: "TracingConfig", processor: Any = None) -> None:
    """Make ``settings`` the tracing of ``core`` (a :class:`ProxyCore`).

    Sets ``core.trace_ids`` (new trace ids; the ``sampled`` flag follows
    ``sample_ratio`` while spans are exported) and ``core.tracer`` (the span
    recorder, ``None`` without ``otlp_endpoint``).  ``processor``: an
    OpenTelemetry span processor to use instead of batching to the OTLP
    exporter (tests use the SDK's in-memory exporter).  Unchanged settings
    keep the running recorder.
    """
    if settings == getattr(core, "_tracing_settings", None) and processor is None:
        return
    core._tracing_settings = settings
    export = bool(settings.otlp_endpoint) or processor is not None
    ratio = settings.sample_ratio if export else 1.0
    if getattr(core, "trace_ids", None) is None or core.trace_ids.sample_ratio != ratio:
        core.trace_ids = TraceIds(ratio)
    old, core.tracer = getattr(core, "tracer", None), None
    if old is not None:
        old.shutdown(wait=False)
    if not export:
        return
    try:
        from speedproxy.tracing.otel import SpanRecorder

        core.tracer = SpanRecorder(settings, processor)
    except ImportError as error:  # the config check makes this rare
        log.error(
            "tracing: spans are not exported: {error} (pip install 'speedproxy[otel]')", error=error
        )
