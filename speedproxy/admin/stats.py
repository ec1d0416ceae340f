"""``/stats`` and ``/metrics`` (open: monitoring needs no key)."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from speedproxy.admin.json_resource import JSONResource


class StatsResource(JSONResource):
    """JSON totals, per worker, per backend and per route."""

    open = True

    def __init__(self, control: Any) -> None:
        super().__init__()
        self.control = control

    def json_GET(self, request: Request) -> Any:
        return self.control.stats_snapshot()


class MetricsResource(JSONResource):
    """Prometheus text exposition, aggregated over all workers."""

    open = True

    def __init__(self, control: Any) -> None:
        super().__init__()
        self.control = control

    def json_GET(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        return 200, self.control.metrics_text()
