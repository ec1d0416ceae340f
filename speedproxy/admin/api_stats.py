"""Stats, health and load reports.

* ``GET /api/v1/stats/server``, ``GET /api/v1/stats/backend?upstream=&backend_id=``
* ``POST /api/v1/report``: a backend reports its own load for the
  ``performance`` balancer.
* The open monitoring endpoints ``/health``, ``/status`` and ``/upstream``
  (``/stats`` and ``/metrics`` are in :mod:`speedproxy.admin.stats`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from twisted.internet.defer import Deferred, gatherResults
from twisted.web.server import Request

from speedproxy import __version__
from speedproxy.admin.api_backends import backend_rows
from speedproxy.admin.changes import find_backend, require_text
from speedproxy.admin.context import APIResource, AdminContext, params
from speedproxy.admin.json_resource import bad_request, not_found, read_json_object
from speedproxy.config import Config

#: Relative weights of the reported figures in ``reported_load``.
LOAD_WEIGHTS = {"cpu": 2.0, "memory": 1.0, "load_avg": 1.0}


def combined_load(
    cpu_usage: Optional[float],
    memory_usage: Optional[float],
    load_avg_1: Optional[float],
    cpu_count: Optional[int],
) -> float:
    """The 0..1 ``Backend.reported_load`` for one report.

    A weighted mean of the figures given: ``cpu_usage / 100`` (weight 2),
    ``memory_usage / 100`` (weight 1) and ``load_avg_1 / cpu_count``
    (weight 1; only when ``cpu_count`` is given, as a load average means
    nothing without it), clamped to 0..1.
    """
    parts: List[Tuple[float, float]] = []
    if cpu_usage is not None:
        parts.append((cpu_usage / 100.0, LOAD_WEIGHTS["cpu"]))
    if memory_usage is not None:
        parts.append((memory_usage / 100.0, LOAD_WEIGHTS["memory"]))
    if load_avg_1 is not None and cpu_count:
        parts.append((load_avg_1 / cpu_count, LOAD_WEIGHTS["load_avg"]))
    if not parts:
        return 0.0
    value = sum(v * w for v, w in parts) / sum(w for _, w in parts)
    return round(min(max(value, 0.0), 1.0), 4)


def _number(values: Mapping[str, Any], name: str, low: float, high: Optional[float]) -> Optional[float]:
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{name} must be a number, got {type(value).__name__}", name)
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise bad_request(f"{name} must be {bound}, got {value}", name)
    return float(value)


#: The figures of a report, flat or inside SpeedMimi's ``performance`` object.
REPORT_FIGURES = ("cpu_usage", "memory_usage", "load_avg_1", "cpu_count")


def _flatten_report(values: Mapping[str, Any]) -> Dict[str, Any]:
    """A report body with SpeedMimi's ``performance`` object moved up beside ``backend_id``."""
    flat = {key: value for key, value in values.items() if key != "performance"}
    if "performance" not in values:
        return flat
    nested = values["performance"]
    if not isinstance(nested, dict):
        raise bad_request("performance must be a JSON object", "performance")
    for key, value in nested.items():
        if key not in REPORT_FIGURES:
            raise bad_request(f"unknown key {key!r} (allowed: {', '.join(REPORT_FIGURES)})", f"performance.{key}")
        if key in flat:
            raise bad_request(f"{key} is given both inside and next to 'performance'", key)
        flat[key] = value
    return flat


def report_call(api: AdminContext, values: Mapping[str, Any]) -> Deferred:
    """A backend's load report (see :class:`ReportResource`); fires with the answer body."""
    for key in values:
        if key not in ReportResource.FIELDS:
            raise bad_request(f"unknown key {key!r} (allowed: {', '.join(ReportResource.FIELDS)})", key)
    values = _flatten_report(values)
    backend_id = require_text(values, "backend_id")
    upstream = values.get("upstream")
    cpu = _number(values, "cpu_usage", 0, 100)
    memory = _number(values, "memory_usage", 0, 100)
    load_avg = _number(values, "load_avg_1", 0, None)
    count = values.get("cpu_count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise bad_request("cpu_count must be an integer of at least 1", "cpu_count")
    if cpu is None and memory is None and load_avg is None:
        raise bad_request("give at least one of cpu_usage, memory_usage, load_avg_1", "cpu_usage")
    config = api.config
    if upstream is not None:
        upstream = require_text(values, "upstream")
        find_backend(config, upstream, backend_id)
        targets = [upstream]
    else:
        targets = [name for name, members in config.backends.items() if any(b.id == backend_id for b in members)]
        if not targets:
            raise not_found(f"no upstream has a backend {backend_id!r}", "backend_id")
    load = combined_load(cpu, memory, load_avg, count)
    report = {
        "time": round(time.time(), 3),
        "cpu_usage": cpu,
        "memory_usage": memory,
        "load_avg_1": load_avg,
        "cpu_count": count,
        "reported_load": load,
    }
    for name in targets:
        api.reports[(name, backend_id)] = report
    calls = [api.control.report_load(name, backend_id, load) for name in targets]

    def answer(_: Any) -> Dict[str, Any]:
        return {
            "config_version": api.control.config_version,
            "backend_id": backend_id,
            "upstreams": targets,
            "reported_load": load,
            "workers": api.live_workers(),
        }

    return gatherResults(calls, consumeErrors=True).addCallback(answer)


def server_stats(api: AdminContext) -> Dict[str, Any]:
    """Totals, workers, routes and recent rates (``GET /api/v1/stats/server``)."""
    control = api.control
    snapshot = control.stats_snapshot()
    return {
        "version": __version__,
        "mode": getattr(control, "mode", "master"),
        "pid": os.getpid(),
        "uptime_seconds": round(time.time() - control.started_at, 3),
        "config_version": control.config_version,
        "worker_restarts": control.state().get("restarts", 0),
        "workers": snapshot.get("workers", []),
        "totals": snapshot.get("totals", {}),
        "latency_histogram": snapshot.get("latency_histogram", {}),
        "routes": snapshot.get("routes", []),
        "rates": api.sampler.windows(),
    }


def backend_stats(api: AdminContext, values: Mapping[str, Any]) -> Deferred:
    """Per-backend counters and state: every backend, one upstream's, or one (``GET /api/v1/stats/backend``)."""
    upstream = values.get("upstream") or None
    backend_id = values.get("backend_id") or None
    config = api.config
    if backend_id is not None and upstream is None:
        raise bad_request("backend_id needs upstream", "upstream")
    if upstream is not None:
        find_backend(config, upstream, backend_id)

    def answer(reports: List[Dict[str, Any]]) -> Dict[str, Any]:
        rows = backend_rows(api, config, reports, upstream, backend_id)
        body: Dict[str, Any] = {"config_version": api.control.config_version}
        if backend_id is not None:
            body["backend"] = dict(rows[upstream][0], upstream=upstream)  # type: ignore[index]
        else:
            body["backends"] = [dict(row, upstream=name) for name, group in rows.items() for row in group]
        return body

    return api.control.inspect_workers(0, 0).addCallback(answer)


class ReportResource(APIResource):
    """``POST /api/v1/report``: a backend reports its load.

    Body: ``{"backend_id": "b1", "upstream": "default", "cpu_usage": 35.5,
    "memory_usage": 60, "load_avg_1": 1.2, "cpu_count": 4}``, or with the
    figures inside ``"performance": {...}`` as SpeedMimi documents it;
    ``upstream`` may be left out (every upstream with that backend id), at
    least one figure is needed.  The combined load (see
    :func:`combined_load`) reaches every worker before the answer.  A report
    stays in force until the next one.
    """

    FIELDS = ("backend_id", "upstream", "performance") + REPORT_FIGURES

    def json_POST(self, request: Request) -> Deferred:
        return report_call(self.api, read_json_object(request))


class ServerStatsResource(APIResource):
    """``GET /api/v1/stats/server``: totals, workers, routes and recent rates."""

    def json_GET(self, request: Request) -> Any:
        return server_stats(self.api)


class BackendStatsResource(APIResource):
    """``GET /api/v1/stats/backend[?upstream=[&backend_id=]]``: per-backend counters and state."""

    def json_GET(self, request: Request) -> Deferred:
        return backend_stats(self.api, params(request, body_allowed=False))


# -- open endpoints ------------------------------------------------------------------------


def health_report(api: AdminContext, config: Config, reports: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """Is speedproxy serving?  At least one worker serves and every route has a healthy backend."""
    serving = [report for report in reports if report.get("serving") and report.get("ready", True) and not report.get("error")]
    reasons: List[str] = []
    if not serving:
        reasons.append("no worker is serving")
    state = api.control.state()
    checked: Mapping[Tuple[str, str], bool] = state.get("backend_up", {})
    routes: Dict[str, Any] = {}
    for name, route in config.routing.items():
        members = config.backends.get(route.upstream, ())
        healthy = 0
        for backend in members:
            if not (backend.active and backend.weight > 0 and checked.get((route.upstream, backend.id), True)):
                continue
            views = [
                report["backends"][route.upstream][backend.id]["healthy"]
                for report in serving
                if backend.id in report.get("backends", {}).get(route.upstream, {})
            ]
            if not views or any(views):
                healthy += 1
        routes[name] = {"upstream": route.upstream, "backends": len(members), "healthy_backends": healthy}
        if not healthy:
            reasons.append(f"route {name!r}: no healthy backend in upstream {route.upstream!r}")
    # Serving, but with a part missing (Redis unreachable: this host's own limits and sessions).
    fleet = getattr(api.control, "fleet", None)
    degraded = fleet.degraded() if fleet is not None else []
    body = {
        "status": "unhealthy" if reasons else "degraded" if degraded else "healthy",
        "reasons": reasons,
        "workers": len(reports),
        "workers_serving": len(serving),
        "routes": routes,
        "config_version": api.control.config_version,
    }
    if degraded:
        body["degraded"] = degraded
    return body


class HealthResource(APIResource):
    """``GET /health``: 200 when serving (``degraded`` included), else 503 with the reasons (open)."""

    open = True

    def json_GET(self, request: Request) -> Deferred:
        config = self.api.config

        def answer(reports: List[Dict[str, Any]]) -> Any:
            body = health_report(self.api, config, reports)
            return (503 if body["status"] == "unhealthy" else 200), body

        return self.api.control.inspect_workers(0, 0).addCallback(answer)


class StatusResource(APIResource):
    """``GET /status``: version, uptime, workers and listeners (open)."""

    open = True

    def json_GET(self, request: Request) -> Any:
        control = self.api.control
        config = control.config
        state = control.state()
        workers = state.get("workers", [])
        ready = sum(1 for worker in workers if worker.get("ready"))
        return {
            "status": "running" if ready else "starting",
            "version": __version__,
            "mode": getattr(control, "mode", "master"),
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - control.started_at, 3),
            "config_version": control.config_version,
            "listen": f"{config.server.host}:{config.server.port}",
            "admin_listen": config.admin.listen,
            # What the listener serves (ssl.enabled changes need a restart).
            "ssl": getattr(control, "tls_listener", config.ssl.enabled),
            "tls_certificate": state["certificate"].summary() if state.get("certificate") else None,
            "workers": workers,
            "workers_ready": ready,
            "worker_restarts": state.get("restarts", 0),
            "routes": len(config.routing),
            "upstreams": len(config.backends),
            "backends": sum(len(members) for members in config.backends.values()),
            "api_key_required": bool(self.api.checker.key_for(config.admin)),
        }


class UpstreamResource(APIResource):
    """``GET /upstream``: every upstream group, its routes and backends' state (open)."""

    open = True

    def json_GET(self, request: Request) -> Deferred:
        config = self.api.config

        def answer(reports: List[Dict[str, Any]]) -> Dict[str, Any]:
            rows = backend_rows(self.api, config, reports)
            groups = {row["upstream"]: row for row in self.api.control.stats_snapshot().get("upstreams", [])}
            upstreams = {}
            for name, group in rows.items():
                upstreams[name] = {
                    "routes": [route for route, rc in config.routing.items() if rc.upstream == name],
                    "backends": [
                        {
                            "id": row["id"],
                            "address": f"{row['scheme']}://{row['host']}:{row['port']}",
                            "weight": row["weight"],
                            "active": row["active"],
                            "healthy": row["healthy"],
                            "in_flight": row["runtime"].get("in_flight", 0),
                            "requests": row.get("stats", {}).get("requests", 0),
                            "failures": row.get("stats", {}).get("failures", 0),
                            "avg_response_ms": row.get("stats", {}).get("avg_response_ms", 0.0),
                            "reported_load": row["runtime"].get("reported_load", 0.0),
                            # Is it a speedproxy too (X-Speedproxy on its answers)?
                            "is_speedproxy": row["runtime"].get("is_speedproxy", False),
                            "version": row["runtime"].get("version"),
                            "last_checked": row["runtime"].get("last_checked"),
                            "check_count": row["runtime"].get("check_count", 0),
                        }
                        for row in group
                    ],
                    "healthy_backends": sum(1 for row in group if row["healthy"] and row["active"]),
                    # Requests waiting for a backend slot, and panic routing (see README).
                    "queue": groups.get(name, {}).get("queue", 0),
                    "panic": groups.get(name, {}).get("panic", False),
                }
            return {"config_version": self.api.control.config_version, "upstreams": upstreams}

        return self.api.control.inspect_workers(0, 0).addCallback(answer)
