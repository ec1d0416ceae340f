"""``/stats`` and ``/metrics`` (open: monitoring needs no key).

``/metrics`` reads the stats segment; the disk cache tier's size, shared
by the workers, is asked of one worker at scrape time (at most 2 s; left
out when it does not answer).
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from speedproxy.admin.api_hls_metrics import with_hls_metrics
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
        """The segment's figures, and the disk tier's (asked of one worker) when there is one."""
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        control = self.control
        return with_hls_metrics(control, self._segment_metrics(control))

    def _segment_metrics(self, control: Any) -> Any:
        fanout = getattr(control, "cache_fanout", None)
        if fanout is None or not getattr(getattr(control.config, "cache", None), "disk_path", ""):
            return 200, control.metrics_text()
        return fanout.disk_info().addCallback(
            lambda disk: (200, control.metrics_text(cache_disk=disk) if disk else control.metrics_text())
        )
