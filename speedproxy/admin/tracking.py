"""Worker-side bookkeeping behind the admin API.

Everything here runs inside a process that serves traffic (a worker, or the
single process when ``server.workers`` is 0) and only *reads* the data path's
state, or wraps :meth:`ProxyCore.log_exchange`; the proxy code itself knows
nothing about the admin API.

* :class:`RequestTracker` keeps a bounded list of slow requests (slower than
  ``server.slow_request_threshold``) and logs each one.
* :class:`RemovedBackends` remembers backends that a config change removed, so
  ``/api/v1/backends/disconnect`` can still cut their in-flight requests.
* :func:`inspect_core` builds the JSON report the master asks each worker for
  (``Inspect``): in-flight requests, slow requests, backend run-time state.
* :func:`set_reported_load` and :func:`disconnect_backend` carry out the
  master's ``SetReportedLoad`` and ``DisconnectBackend`` commands.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

from twisted.logger import Logger

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.config.model import Config
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.exchange import Exchange
    from speedproxy.upstreams import Backend

log = Logger(namespace="speedproxy.slow")

#: Slow requests kept per worker.
SLOW_KEEP = 200
#: Removed backends remembered per worker (for disconnect after remove).
REMOVED_KEEP = 256
#: Longest request target shown by the admin API.
TARGET_LIMIT = 512


def _text(value: Optional[bytes], limit: int = TARGET_LIMIT) -> str:
    if value is None:
        return ""
    text = value.decode("latin-1")
    return text if len(text) <= limit else text[:limit] + "..."


def _backend_upstream(exchange: "Exchange") -> str:
    route = exchange.route
    return route.config.upstream if route is not None else ""


class RequestTracker:
    """Watches finished exchanges of one :class:`ProxyCore` for slow ones.

    The core calls :meth:`observe_slow` for every exchange at or over its
    ``slow_threshold`` (``server.slow_request_threshold`` of the current
    config), so the fast path pays one comparison.  Upgraded (WebSocket)
    and event-stream requests are long-lived by design and are never
    counted as slow.
    """

    def __init__(self, core: "ProxyCore", keep: int = SLOW_KEEP, wall: Any = time.time) -> None:
        self.core = core
        self.slow: Deque[Dict[str, Any]] = deque(maxlen=keep)
        self.slow_total = 0
        self._wall = wall
        core.on_slow_request = self.observe_slow

    @property
    def threshold(self) -> float:
        return float(getattr(self.core.server, "slow_request_threshold", 1.0))

    def observe(self, exchange: "Exchange", status: int) -> None:
        """Record ``exchange`` if it took at least the slow-request threshold."""
        seconds = self.core.clock.seconds() - exchange.started
        if seconds >= self.threshold:
            self.observe_slow(exchange, status, seconds)

    def observe_slow(self, exchange: "Exchange", status: int, seconds: float) -> None:
        """Record an exchange that took ``seconds``, over the threshold."""
        threshold = self.threshold
        request = exchange.request
        if request.upgrade is not None or request.event_stream or status == 101:
            return
        backend = exchange.tried[-1] if exchange.tried else None
        entry = {
            "time": round(self._wall(), 3),
            "duration_ms": round(seconds * 1000.0, 3),
            "method": _text(request.method),
            "path": _text(request.target),
            "host": _text(request.host, 256),
            "status": status,
            "route": exchange.route.name if exchange.route is not None else "",
            "upstream": _backend_upstream(exchange),
            "backend_id": backend.id if backend is not None else "",
            "backend_address": backend.config.address if backend is not None else "",
            "request_id": _text(exchange.request_id, 128),
            "client_ip": exchange.client_ip,
            "pid": os.getpid(),
        }
        self.slow.append(entry)
        self.slow_total += 1
        log.warn(
            "slow request: {method} {path} took {duration_ms:.0f} ms (threshold {threshold_ms:.0f} ms, "
            "status {status}, backend {backend}, request id {request_id})",
            method=entry["method"],
            path=entry["path"],
            duration_ms=entry["duration_ms"],
            threshold_ms=threshold * 1000.0,
            status=status,
            backend=entry["backend_address"] or "-",
            request_id=entry["request_id"],
        )


class RemovedBackends:
    """Backends that left the config recently, by ``(upstream, id)``.

    Exchanges that were in flight to a removed backend keep their own
    reference to it and finish normally; this map lets a later
    ``disconnect`` find them anyway.
    """

    def __init__(self, keep: int = REMOVED_KEEP) -> None:
        self.keep = keep
        self.backends: "OrderedDict[Tuple[str, str], Backend]" = OrderedDict()

    def before_apply(self, core: "ProxyCore", config: "Config") -> None:
        """Call before ``core.apply_config(config)``: note what it removes."""
        kept = {(name, backend.id) for name, members in config.backends.items() for backend in members}
        for name, group in core.groups.items():
            for backend in group.backends:
                key = (name, backend.id)
                if key not in kept:
                    self.backends[key] = backend
                    self.backends.move_to_end(key)
        for key in kept:
            self.backends.pop(key, None)
        while len(self.backends) > self.keep:
            self.backends.popitem(last=False)


def _backend_state(backend: "Backend") -> Dict[str, Any]:
    return {
        "healthy": backend.healthy,
        "available": backend.available,
        "in_flight": backend.local_connections,
        "requests": backend.requests,
        "failures": backend.failures,
        "ewma_response_ms": round(backend.ewma_response_time * 1000.0, 3),
        "reported_load": backend.reported_load,
        # A speedproxy in front of ours (its answers carry X-Speedproxy).
        "is_speedproxy": backend.is_speedproxy,
        "speedproxy_version": backend.version,
        "last_checked": round(backend.last_checked, 3),
        "check_count": backend.check_count,
    }


def active_requests(core: "ProxyCore", limit: int) -> Tuple[int, List[Dict[str, Any]]]:
    """``(count, up to limit of the oldest in-flight requests)`` of ``core``."""
    now = core.clock.seconds()
    exchanges = core.in_flight()
    exchanges.sort(key=lambda exchange: exchange.started)
    rows = []
    for exchange in exchanges[: max(limit, 0)]:
        request = exchange.request
        backend = exchange.backend or (exchange.tried[-1] if exchange.tried else None)
        rows.append(
            {
                "request_id": _text(exchange.request_id, 128),
                "method": _text(request.method),
                "path": _text(request.target),
                "host": _text(request.host, 256),
                "client_ip": exchange.client_ip,
                "age_ms": round((now - exchange.started) * 1000.0, 3),
                "route": exchange.route.name if exchange.route is not None else "",
                "upstream": _backend_upstream(exchange),
                "backend_id": backend.id if backend is not None else "",
                "backend_address": backend.config.address if backend is not None else "",
                "attempts": len(exchange.tried),
                "response_started": exchange.response_started,
                "status": exchange.status,
                "bytes_sent": exchange.bytes_sent,
                "pid": os.getpid(),
            }
        )
    return len(exchanges), rows


def inspect_core(
    core: Optional["ProxyCore"],
    tracker: Optional[RequestTracker],
    *,
    slot: int,
    version: int,
    active_limit: int,
    slow_limit: int,
) -> Dict[str, Any]:
    """The JSON report of one serving process (the answer to ``Inspect``)."""
    report: Dict[str, Any] = {
        "pid": os.getpid(),
        "slot": slot,
        "config_version": version,
        "serving": core is not None,
        "active_count": 0,
        "active": [],
        "slow": [],
        "slow_total": 0,
        "backends": {},
        "requests_served": 0,
        "connections": 0,
    }
    if core is None:
        return report
    report["active_count"], report["active"] = active_requests(core, active_limit)
    report["requests_served"] = core.requests_served
    report["connections"] = len(core.clients)
    report["slow_threshold_ms"] = round(float(getattr(core.server, "slow_request_threshold", 1.0)) * 1000.0, 3)
    if tracker is not None:
        report["slow_total"] = tracker.slow_total
        if slow_limit > 0:
            report["slow"] = list(tracker.slow)[-slow_limit:]
    report["backends"] = {
        name: {backend.id: _backend_state(backend) for backend in group.backends}
        for name, group in core.groups.items()
    }
    return report


def set_reported_load(core: Optional["ProxyCore"], upstream: str, backend_id: str, load: float) -> bool:
    """Store a backend's reported load (clamped to 0..1); ``False`` if unknown."""
    if core is None:
        return False
    group = core.groups.get(upstream)
    backend = group.get(backend_id) if group is not None else None
    if backend is None:
        return False
    backend.reported_load = min(max(float(load), 0.0), 1.0)
    return True


def disconnect_backend(
    core: Optional["ProxyCore"], removed: Optional[RemovedBackends], upstream: str, backend_id: str
) -> int:
    """Close every connection to a backend, pooled and in flight; return how many.

    A backend still in the config is handled by
    :meth:`ProxyCore.disconnect_backend`; one removed by a config change is
    looked up in ``removed`` and its in-flight exchanges are aborted the same
    way (its pooled connections too, unless a current backend shares its
    address).
    """
    if core is None:
        return 0
    group = core.groups.get(upstream)
    if group is not None and group.get(backend_id) is not None:
        return core.disconnect_backend(upstream, backend_id)
    backend = removed.backends.get((upstream, backend_id)) if removed is not None else None
    if backend is None:
        return 0
    config = backend.config
    in_use = any(
        (member.config.host, member.config.port) == (config.host, config.port)
        for members in core.groups.values()
        for member in members.backends
    )
    return core.cut_backend(backend, close_idle=not in_use)
