"""The ``tracing`` section: OpenTelemetry spans of proxied requests (the ``speedproxy[otel]`` extra)."""

from __future__ import annotations

from speedproxy.config.kinds import fraction, string, text
from speedproxy.config.located import Val
from speedproxy.config.model import TracingConfig
from speedproxy.config.problems import Problems
from speedproxy.config.schema import Kind, Section
from speedproxy.config.units import describe_value

__all__ = ["TRACING"]


def _otlp_endpoint(problems: Problems, val: Val, path: str) -> str:
    """An OTLP/HTTP collector URL, or empty (no export); needs the ``otel`` extra."""
    from urllib.parse import urlsplit

    value = text(val).strip()
    if not value:
        return ""
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        raise ValueError(f'expected an OTLP/HTTP URL such as "http://collector:4318", got {describe_value(value)}')
    from speedproxy.tracing import otel_missing

    missing = otel_missing()
    if missing is not None:
        raise ValueError(
            f"tracing needs the OpenTelemetry SDK, which is not installed (no module {missing!r}): "
            "pip install 'speedproxy[otel]'"
        )
    return value


TRACING = Section(
    TracingConfig,
    {
        "otlp_endpoint": Kind(_otlp_endpoint),
        "service_name": string(non_empty=True),
        "sample_ratio": fraction,
    },
)
