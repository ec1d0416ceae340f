"""``/api/v1/performance/*``: the performance monitor's calls.

* ``health``: alerts from the thresholds (200 healthy/degraded, 503 unhealthy)
* ``stats``: request rates, error rate and latency percentiles over recent windows
* ``dashboard``: health, stats, resource usage, backends, slowest and oldest requests
* ``operations``: per route and per backend counters, slow requests by operation
* ``active-requests``: requests in flight in every worker, oldest first
* ``slow-requests``: requests slower than ``server.slow_request_threshold``
* ``resource-usage``: CPU, RSS, threads and open fds of the master and workers
* ``alerts/thresholds``: ``GET`` the alert thresholds, ``PUT`` or ``POST`` new ones
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.web.server import Request

from speedproxy.admin.api_backends import backend_rows
from speedproxy.admin.api_stats import health_report
from speedproxy.admin.context import APIResource, AdminContext, DEFAULT_THRESHOLDS
from speedproxy.admin.changes import validate
from speedproxy.admin.json_resource import (
    bad_request,
    query,
    query_int,
    read_json_object,
)
from speedproxy.admin.procinfo import resource_usage
from speedproxy.config import config_to_mapping
from speedproxy.config.units import parse_duration


def _usage(api: AdminContext, interval: float = 0.25) -> Deferred:
    return resource_usage(api.clock, api.control.process_table(), interval)


def _merged_active(reports: List[Mapping[str, Any]], limit: int) -> Dict[str, Any]:
    rows = [row for report in reports for row in report.get("active", [])]
    rows.sort(key=lambda row: -row["age_ms"])
    return {
        "count": sum(int(report.get("active_count", 0)) for report in reports),
        "requests": rows[:limit],
        "per_worker": [
            {"slot": report.get("slot"), "pid": report.get("pid"), "count": report.get("active_count", 0)}
            for report in reports
        ],
    }


def _merged_slow(api: AdminContext, reports: List[Mapping[str, Any]], limit: int, sort: str = "time") -> Dict[str, Any]:
    rows = [row for report in reports for row in report.get("slow", [])]
    key = (lambda row: -row["duration_ms"]) if sort == "duration" else (lambda row: -row["time"])
    rows.sort(key=key)
    now = time.time()
    return {
        "threshold_ms": round(api.config.server.slow_request_threshold * 1000.0, 3),
        "total": sum(int(report.get("slow_total", 0)) for report in reports),
        "last_60s": sum(1 for row in rows if now - row["time"] <= 60.0),
        "requests": rows[:limit],
    }


def _alerts(
    api: AdminContext,
    stats: Mapping[str, Any],
    slow: Mapping[str, Any],
    usage: Optional[Mapping[str, Any]],
    snapshot: Mapping[str, Any],
) -> List[Dict[str, Any]]:
    """Every threshold crossed, with its value."""
    limits = api.thresholds
    alerts: List[Dict[str, Any]] = []

    def check(metric: str, value: Optional[float], where: str = "") -> None:
        limit = limits.get(metric)
        if value is None or limit is None or value < limit:
            return
        alerts.append(
            {
                "metric": metric,
                "value": round(float(value), 4),
                "threshold": limit,
                "severity": "critical" if value >= 2 * limit else "warning",
                "where": where or "proxy",
            }
        )

    minute = stats.get("last_60s", {})
    if minute.get("requests"):
        check("error_rate", minute.get("error_rate"))
        check("avg_latency_ms", minute.get("avg_latency_ms"))
        check("p99_latency_ms", minute.get("p99_ms"))
    check("slow_requests_per_minute", slow.get("last_60s"))
    if usage is not None:
        for row in usage.get("processes", []):
            where = "master" if row.get("role") == "master" else f"worker {row.get('slot')}"
            check("cpu_percent", row.get("cpu_percent"), where)
            if row.get("rss_bytes") is not None:
                check("rss_mb", row["rss_bytes"] / (1024.0 * 1024.0), where)
            if row.get("open_fds") is not None and row.get("max_fds"):
                check("fd_usage", row["open_fds"] / row["max_fds"], where)
    workers = max(len(snapshot.get("workers", [])), 1)
    connections = snapshot.get("totals", {}).get("active_connections", 0)
    check("connection_usage", connections / float(api.config.server.max_conn * workers))
    return alerts


def _performance_stats(api: AdminContext, reports: List[Mapping[str, Any]], snapshot: Mapping[str, Any]) -> Dict[str, Any]:
    windows = api.sampler.windows()
    slow = _merged_slow(api, reports, 0)
    totals = snapshot.get("totals", {})
    return {
        "windows": windows,
        "totals": totals,
        "active_requests": sum(int(report.get("active_count", 0)) for report in reports),
        "connections": totals.get("active_connections", 0),
        "slow_requests": {key: slow[key] for key in ("threshold_ms", "total", "last_60s")},
    }


def _health(api: AdminContext, reports: List[Mapping[str, Any]], usage: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    snapshot = api.control.stats_snapshot()
    basic = health_report(api, api.config, reports)
    windows = api.sampler.windows()
    slow = _merged_slow(api, reports, 0)
    alerts = _alerts(api, windows, slow, usage, snapshot)
    if basic["status"] != "healthy":
        status = "unhealthy"
    elif alerts:
        status = "degraded"
    else:
        status = "healthy"
    return {
        "status": status,
        "reasons": basic["reasons"],
        "alerts": alerts,
        "workers": basic["workers"],
        "workers_serving": basic["workers_serving"],
        "config_version": api.control.config_version,
    }


_PerformanceResource = APIResource


class PerformanceHealthResource(_PerformanceResource):
    def json_GET(self, request: Request) -> Deferred:
        api = self.api
        calls = [api.control.inspect_workers(0, 200), _usage(api, 0.1)]

        def answer(results: List[Any]) -> Any:
            body = _health(api, results[0], results[1])
            return (503 if body["status"] == "unhealthy" else 200), body

        return gatherResults(calls, consumeErrors=True).addCallback(answer)


class PerformanceStatsResource(_PerformanceResource):
    def json_GET(self, request: Request) -> Deferred:
        api = self.api
        return api.control.inspect_workers(0, 200).addCallback(
            lambda reports: _performance_stats(api, reports, api.control.stats_snapshot())
        )


class DashboardResource(_PerformanceResource):
    def json_GET(self, request: Request) -> Deferred:
        api = self.api
        limit = query_int(request, "limit", 10, 0, 1000)
        calls = [api.control.inspect_workers(limit, 200), _usage(api, 0.1)]

        def answer(results: List[Any]) -> Dict[str, Any]:
            reports, usage = results
            snapshot = api.control.stats_snapshot()
            config = api.config
            return {
                "time": round(time.time(), 3),
                "health": _health(api, reports, usage),
                "stats": _performance_stats(api, reports, snapshot),
                "resource_usage": usage,
                "backends": [
                    dict(row, upstream=name) for name, rows in backend_rows(api, config, reports).items() for row in rows
                ],
                "active_requests": _merged_active(reports, limit),
                "slow_requests": _merged_slow(api, reports, limit, "duration"),
            }

        return gatherResults(calls, consumeErrors=True).addCallback(answer)


class OperationsResource(_PerformanceResource):
    """Per route and per backend counters, and slow requests grouped by ``METHOD path``."""

    def json_GET(self, request: Request) -> Deferred:
        api = self.api

        def answer(reports: List[Dict[str, Any]]) -> Dict[str, Any]:
            snapshot = api.control.stats_snapshot()
            groups: Dict[str, Dict[str, Any]] = {}
            for report in reports:
                for row in report.get("slow", []):
                    name = f"{row['method']} {row['path'].split('?', 1)[0]}"
                    group = groups.setdefault(name, {"operation": name, "count": 0, "total_ms": 0.0, "max_ms": 0.0})
                    group["count"] += 1
                    group["total_ms"] += row["duration_ms"]
                    group["max_ms"] = max(group["max_ms"], row["duration_ms"])
            slow_ops = []
            for group in groups.values():
                group["avg_ms"] = round(group.pop("total_ms") / group["count"], 3)
                slow_ops.append(group)
            slow_ops.sort(key=lambda group: (-group["count"], -group["max_ms"]))
            return {
                "routes": snapshot.get("routes", []),
                "backends": snapshot.get("backends", []),
                "slow_operations": slow_ops,
                "threshold_ms": round(api.config.server.slow_request_threshold * 1000.0, 3),
            }

        return api.control.inspect_workers(0, 1000).addCallback(answer)


class ActiveRequestsResource(_PerformanceResource):
    """``?limit=`` (default 100): in-flight requests of every worker, oldest first."""

    def json_GET(self, request: Request) -> Deferred:
        limit = query_int(request, "limit", 100, 0, 10000)
        return self.api.control.inspect_workers(limit, 0).addCallback(lambda reports: _merged_active(reports, limit))


class SlowRequestsResource(_PerformanceResource):
    """``?limit=`` (default 100), ``?sort=time|duration``: requests over the slow threshold."""

    def json_GET(self, request: Request) -> Deferred:
        limit = query_int(request, "limit", 100, 0, 10000)
        sort = query(request, "sort") or "time"
        if sort not in ("time", "duration"):
            raise bad_request("sort must be time or duration", "sort")
        return self.api.control.inspect_workers(0, max(limit, 1)).addCallback(
            lambda reports: _merged_slow(self.api, reports, limit, sort)
        )


class ResourceUsageResource(_PerformanceResource):
    """``?interval=`` seconds (default 0.25, at most 5) over which CPU percent is measured."""

    def json_GET(self, request: Request) -> Deferred:
        text = query(request, "interval")
        interval = 0.25
        if text:
            try:
                interval = float(text)
            except ValueError:
                raise bad_request(f"interval must be a number, got {text!r}", "interval") from None
            if not 0.01 <= interval <= 5.0:
                raise bad_request("interval must be between 0.01 and 5", "interval")
        return _usage(self.api, interval)


class ThresholdsResource(_PerformanceResource):
    """``GET``/``PUT`` (or ``POST``, as the CapCut server's monitor does) the alert thresholds.

    Thresholds live in the master's memory (back to the defaults on
    restart), except ``slow_request_threshold``, which is the config's
    ``server.slow_request_threshold`` and is changed as a config change on
    every worker (seconds, or a duration such as ``"500ms"``).
    """

    def _body(self) -> Dict[str, Any]:
        return {
            "thresholds": dict(self.api.thresholds),
            "defaults": dict(DEFAULT_THRESHOLDS),
            "slow_request_threshold": self.api.config.server.slow_request_threshold,
            "config_version": self.api.control.config_version,
        }

    def json_GET(self, request: Request) -> Any:
        return self._body()

    def json_POST(self, request: Request) -> Any:
        """The performance monitor's own verb for an update (CapCut server): as ``PUT``."""
        return self.json_PUT(request)

    def json_PUT(self, request: Request) -> Any:
        values = read_json_object(request)
        if isinstance(values.get("thresholds"), dict) and len(values) == 1:
            values = dict(values["thresholds"])
        if not values:
            raise bad_request("give at least one threshold")
        updates: Dict[str, float] = {}
        slow = None
        for key, value in values.items():
            if key == "slow_request_threshold":
                try:
                    slow = parse_duration(value)
                except ValueError as error:
                    raise bad_request(f"slow_request_threshold: {error}", key) from None
                if slow <= 0:
                    raise bad_request("slow_request_threshold must be greater than 0", key)
                continue
            if key not in DEFAULT_THRESHOLDS:
                raise bad_request(f"unknown threshold {key!r} (known: {', '.join(DEFAULT_THRESHOLDS)})", key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise bad_request(f"{key} must be a number of at least 0", key)
            updates[key] = float(value)
        if slow is None:
            self.api.thresholds.update(updates)
            return self._body()

        def make(current: Any) -> Any:
            data = config_to_mapping(current)
            data["server"]["slow_request_threshold"] = slow
            return validate(data, current)

        def answer(result: Dict[str, Any]) -> Dict[str, Any]:
            self.api.thresholds.update(updates)
            body = self._body()
            body["config_version"] = result["config_version"]
            return body

        return self.api.run_change(make).addCallback(answer)
