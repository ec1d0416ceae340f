"""The HLS metrics of ``/metrics``, from the workers' per-route HLS figures.

Asked of every worker at scrape time (the ``info`` cache action, at most
:data:`TIMEOUT` seconds; a worker that does not answer is left out) and
only when some route has ``hls.enabled``: a proxy without HLS routes pays
nothing.  Per route:

- ``speedproxy_hls_prefetch_total{route,result}``: prefetches by result
  (``started``, ``ok``, ``failed``, ``cached``, ``coalesced``, ``dropped``);
- ``speedproxy_hls_viewers{route}``: viewers watching now;
- ``speedproxy_hls_origin_bytes_total{route}``: bytes fetched from the
  origin for HLS objects (players' misses and prefetches);
- ``speedproxy_hls_served_bytes_total{route}``: bytes of HLS objects sent to players;
- ``speedproxy_hls_stream_throughput_bytes{route,stream}``: bytes/s
  delivered to the players of each stream over the last 10 s.

Counters are the sums of the workers' own (a restarted worker starts again from 0).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping

from twisted.internet.defer import Deferred, succeed

from speedproxy.admin.api_hls_streams import combine_streams

#: Seconds a scrape waits for the workers' figures.
TIMEOUT = 2.0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_hls_metrics(rows: Iterable[Mapping[str, Any]], routes: Iterable[str]) -> bytes:
    """Prometheus text for the HLS ``routes`` from the workers' ``info`` rows."""
    rows = list(rows)
    prefetch: Dict[str, Dict[str, int]] = {route: {} for route in routes}
    for row in rows:
        result = row.get("result")
        hls = result.get("hls") if isinstance(result, Mapping) else None
        if not isinstance(hls, Mapping):
            continue
        for route, figures in hls.items():
            if route not in prefetch or not isinstance(figures, Mapping):
                continue
            for name, count in (figures.get("prefetch") or {}).items():
                if name != "in_flight":
                    prefetch[route][name] = prefetch[route].get(name, 0) + int(count or 0)
    combined = combine_streams(rows)
    totals = combined["routes"]
    lines: List[str] = [
        "# HELP speedproxy_hls_prefetch_total Segment prefetches of HLS routes, by result.",
        "# TYPE speedproxy_hls_prefetch_total counter",
    ]
    for route, results in sorted(prefetch.items()):
        for name in ("started", "ok", "failed", "cached", "coalesced", "dropped"):
            lines.append(f'speedproxy_hls_prefetch_total{{route="{_label(route)}",result="{name}"}} {results.get(name, 0)}')
    for metric, kind, text, field in (
        ("speedproxy_hls_viewers", "gauge", "Viewers watching streams of HLS routes now.", "viewers"),
        ("speedproxy_hls_origin_bytes_total", "counter", "Bytes of HLS objects fetched from the origin.", "origin_bytes"),
        ("speedproxy_hls_served_bytes_total", "counter", "Bytes of HLS objects sent to players.", "served_bytes"),
    ):
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        for route in sorted(prefetch):
            lines.append(f'{metric}{{route="{_label(route)}"}} {int(totals.get(route, {}).get(field, 0))}')
    lines += [
        "# HELP speedproxy_hls_stream_throughput_bytes Bytes/s delivered to the players of a stream (last 10 s).",
        "# TYPE speedproxy_hls_stream_throughput_bytes gauge",
    ]
    for stream in combined["streams"]:
        if stream["route"] in prefetch:
            lines.append(
                f'speedproxy_hls_stream_throughput_bytes{{route="{_label(stream["route"])}",stream="{_label(stream["stream"])}"}} '
                f'{stream["throughput_bytes_per_second"]}'
            )
    return ("\n".join(lines) + "\n").encode("utf-8")


def hls_metrics(control: Any) -> "Deferred[bytes]":
    """The HLS metrics text (``b""`` when no route has HLS on)."""
    routing = getattr(getattr(control, "config", None), "routing", None) or {}
    routes = [name for name, route in routing.items() if getattr(getattr(route, "hls", None), "enabled", False)]
    fanout = getattr(control, "cache_fanout", None)
    if not routes or fanout is None:
        return succeed(b"")
    call = fanout.each("info")
    call.addTimeout(TIMEOUT, control.reactor)
    return call.addCallbacks(lambda rows: render_hls_metrics(rows, routes), lambda _: render_hls_metrics([], routes))


def with_hls_metrics(control: Any, answer: Any) -> Any:
    """``/metrics``'s ``(status, text)`` answer (or a Deferred of it) with the
    HLS metrics after it; ``answer`` itself when no route has HLS on."""
    routing = getattr(getattr(control, "config", None), "routing", None) or {}
    if not any(getattr(getattr(route, "hls", None), "enabled", False) for route in routing.values()):
        return answer
    from twisted.internet.defer import maybeDeferred

    def add(first: Any) -> Deferred:
        status, text = first
        return hls_metrics(control).addCallback(lambda extra: (status, text + extra))

    return maybeDeferred(lambda: answer).addCallback(add)
