"""``GET /api/v1/hls/streams``: the streams being watched, every worker's figures combined.

Each worker keeps per-stream figures of its HLS routes
(:mod:`speedproxy.hls.streams`) and reports them with its cache figures
(the ``info`` cache action, ``hls.<route>.streams``); here they are summed
per route and stream: viewers (a player whose connections went to two
workers counts in both), renditions watched (union), requests, hits,
misses, bytes served, bytes from the origin, delivered throughput, and the
cache hit ratio (requests answered without an origin request of their own).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from speedproxy.admin.cache_figures import worker_errors
from speedproxy.admin.cache_worker import fanout_of
from speedproxy.admin.context import APIResource

SUMMED = ("viewers", "requests", "hits", "misses", "served_bytes", "origin_bytes", "throughput_bytes_per_second")


def combine_streams(rows: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
    """``{"streams": [...], "routes": {route: totals}}`` from the workers' ``info`` rows."""
    streams: Dict[tuple, Dict[str, Any]] = {}
    routes: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        result = row.get("result")
        if not isinstance(result, Mapping) or not isinstance(result.get("hls"), Mapping):
            continue
        for route, figures in result["hls"].items():
            if not isinstance(figures, Mapping):
                continue
            total = routes.setdefault(route, {"served_bytes": 0, "origin_bytes": 0, "viewers": 0, "streams": 0})
            for name in ("served_bytes", "origin_bytes", "viewers"):
                total[name] += int(figures.get(name, 0) or 0)
            for name, stream in (figures.get("streams") or {}).items():
                combined = streams.get((route, name))
                if combined is None:
                    combined = streams[(route, name)] = dict.fromkeys(SUMMED, 0)
                    combined.update(route=route, stream=name, renditions=[], last_seen=0.0, workers=0)
                for field in SUMMED:
                    combined[field] += stream.get(field, 0) or 0
                combined["renditions"] = sorted(set(combined["renditions"]) | set(stream.get("renditions") or ()))
                combined["last_seen"] = max(combined["last_seen"], stream.get("last_seen") or 0.0)
                combined["workers"] += 1
    listed: List[Dict[str, Any]] = []
    for combined in streams.values():
        asked = combined["hits"] + combined["misses"]
        combined["cache_hit_ratio"] = round(combined["hits"] / asked, 4) if asked else 0.0
        combined["throughput_bytes_per_second"] = round(combined["throughput_bytes_per_second"], 1)
        routes[combined["route"]]["streams"] += 1
        listed.append(combined)
    listed.sort(key=lambda item: (-item["viewers"], item["route"], item["stream"]))
    return {"streams": listed, "routes": routes}


class StreamsResource(APIResource):
    """``GET /api/v1/hls/streams[?route=]``."""

    def json_GET(self, request: Request) -> Deferred:
        wanted = request.args.get(b"route", [b""])[0].decode("utf-8", "replace")

        def answer(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
            body = combine_streams(rows)
            if wanted:
                body["streams"] = [stream for stream in body["streams"] if stream["route"] == wanted]
                body["routes"] = {name: value for name, value in body["routes"].items() if name == wanted}
            errors = worker_errors(rows)
            if errors:
                body["errors"] = errors
            return body

        return fanout_of(self.api.control).each("info").addCallback(answer)
