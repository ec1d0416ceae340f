"""The master's side of the stats segment: totals that never go backwards."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from speedproxy.config.model import BackendConfig, Config, RouteConfig
from speedproxy.stats.segment import (
    ACTIVE_CLIENTS,
    ACTIVE_UPSTREAM,
    B_ACTIVE,
    B_FAILURES,
    B_LATENCY_SUM_US,
    B_REQUESTS,
    B_RESPONSES,
    BACKEND_WORDS,
    BYTES_IN,
    BYTES_OUT,
    C_MEMORY_BYTES,
    C_MEMORY_EVICTIONS,
    C_MEMORY_OBJECTS,
    CACHE_RESULTS,
    CLIENTS_TOTAL,
    HIST_BASE,
    LATENCY_BUCKETS,
    LATENCY_SUM_US,
    PID,
    RC_ORIGIN,
    REQUESTS,
    ROUTE_CACHE_WORDS,
    ROUTE_WORDS,
    STARTED,
    STATUS_BASE,
    STATUS_CLASSES,
    U_PANIC,
    U_QUEUE,
    U_QUEUE_FULL,
    U_QUEUE_TIMEOUTS,
    U_QUEUED,
    UPSTREAM_WORDS,
    StatsIndex,
    StatsSegment,
)


class StatsReader:
    """Sums worker slots, plus the counts of workers that are gone.

    When a worker exits, :meth:`retire` folds its counters (not its gauges)
    into ``retired`` before the slot is zeroed for the replacement, so every
    total stays monotonic across worker restarts.
    """

    def __init__(self, segment: StatsSegment) -> None:
        self.segment = segment
        self.layout = segment.layout
        self.retired: List[int] = [0] * self.layout.slot_words

    def backend_words(self, config: Config, index: StatsIndex) -> Iterator[Tuple[str, BackendConfig, int]]:
        """``(upstream, backend, first word)`` of every configured backend with a slot."""
        base = self.layout.backend_base
        for upstream, configs in config.backends.items():
            for backend in configs:
                idx = index.backends.get(StatsIndex.backend_key(upstream, backend.id))
                if idx is not None:
                    yield upstream, backend, base + idx * BACKEND_WORDS

    def upstream_words(self, config: Config, index: StatsIndex) -> Iterator[Tuple[str, int]]:
        """``(name, first word)`` of every configured upstream group with a slot."""
        base = self.layout.upstream_base
        for name in config.backends:
            idx = index.upstreams.get(name)
            if idx is not None and idx < self.layout.upstreams:
                yield name, base + idx * UPSTREAM_WORDS

    def upstream_rows(
        self, config: Config, index: StatsIndex, slots: Sequence[List[int]], total: Sequence[int]
    ) -> List[Dict[str, Any]]:
        """Per upstream group: requests queued now (all workers), panic, queue counters."""
        return [
            {
                "upstream": name,
                "queue": sum(values[word + U_QUEUE] for values in slots),
                "panic": any(values[word + U_PANIC] for values in slots),
                "queued": total[word + U_QUEUED],
                "queue_full": total[word + U_QUEUE_FULL],
                "queue_timeouts": total[word + U_QUEUE_TIMEOUTS],
            }
            for name, word in self.upstream_words(config, index)
        ]

    def route_words(self, config: Config, index: StatsIndex) -> Iterator[Tuple[str, RouteConfig, int]]:
        """``(name, route, first word)`` of every configured route with a slot."""
        base = self.layout.route_base
        for name, route in config.routing.items():
            idx = index.routes.get(name)
            if idx is not None:
                yield name, route, base + idx * ROUTE_WORDS

    def route_cache_words(self, config: Config, index: StatsIndex) -> Iterator[Tuple[str, RouteConfig, int]]:
        """``(name, route, first cache word)`` of every configured route with a slot."""
        base = self.layout.route_cache_base
        for name, route in config.routing.items():
            idx = index.routes.get(name)
            if idx is not None and idx < self.layout.routes:
                yield name, route, base + idx * ROUTE_CACHE_WORDS

    def memory_tier(self, values: Sequence[int]) -> Dict[str, int]:
        """The memory tier figures of one slot or of the totals (summed over workers)."""
        base = self.layout.cache_base
        return {
            "bytes": values[base + C_MEMORY_BYTES],
            "objects": values[base + C_MEMORY_OBJECTS],
            "evictions": values[base + C_MEMORY_EVICTIONS],
        }

    @staticmethod
    def cache_counts(total: Sequence[int], word: int) -> Dict[str, int]:
        """Lookups by result and origin requests of one route (``word``: its first cache word)."""
        counts = {name: total[word + i] for i, name in enumerate(CACHE_RESULTS)}
        counts["origin_requests"] = total[word + RC_ORIGIN]
        return counts

    def cache_summary(self, config: Config, index: StatsIndex, total: Sequence[int]) -> Dict[str, Any]:
        """``/stats``' ``cache``: memory tier over all workers, lookups by result over all routes."""
        results = {name: 0 for name in CACHE_RESULTS}
        origin = 0
        base = self.layout.route_cache_base
        # Every route that ever had an index, removed ones too: never goes backwards.
        for idx in index.routes.values():
            if idx >= self.layout.routes:
                continue
            word = base + idx * ROUTE_CACHE_WORDS
            for i, name in enumerate(CACHE_RESULTS):
                results[name] += total[word + i]
            origin += total[word + RC_ORIGIN]
        lookups = sum(results.values()) - results["bypass"]
        served = results["hit"] + results["stale"] + results["revalidated"]
        return {
            "memory": self.memory_tier(total),
            "requests": results,
            "origin_requests": origin,
            "hit_ratio": round(served / lookups, 4) if lookups else 0.0,
        }

    def retire(self, slot: int) -> None:
        """Fold a finished worker's counters in and zero its slot."""
        values = self.segment.read_slot(slot)
        layout = self.layout
        retired = self.retired
        for word in range(3, layout.slot_words):
            if not layout.is_gauge(word):
                retired[word] += values[word]
        self.segment.reset_slot(slot, 0, 0)

    def slots(self) -> List[List[int]]:
        return [self.segment.read_slot(slot) for slot in range(self.layout.slots)]

    def totals(self, slots: Optional[Sequence[List[int]]] = None) -> List[int]:
        """Live slots plus retired counters, word by word."""
        total = list(self.retired)
        for values in slots if slots is not None else self.slots():
            for word in range(3, len(values)):
                if values[word]:
                    total[word] += values[word]
        return total

    def snapshot(
        self,
        config: Config,
        index: StatsIndex,
        workers: Sequence[Mapping[str, Any]] = (),
        extra: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Everything behind ``/stats`` as plain JSON-able data."""
        slots = self.slots()
        total = self.totals(slots)

        def summary(values: List[int]) -> Dict[str, Any]:
            requests = values[REQUESTS]
            return {
                "requests": requests,
                "status": {
                    name: values[STATUS_BASE + i] for i, name in enumerate(STATUS_CLASSES)
                },
                "bytes_in": values[BYTES_IN],
                "bytes_out": values[BYTES_OUT],
                "active_connections": values[ACTIVE_CLIENTS],
                "connections_total": values[CLIENTS_TOTAL],
                "active_upstream_requests": values[ACTIVE_UPSTREAM],
                "avg_latency_ms": round(values[LATENCY_SUM_US] / requests / 1000.0, 3) if requests else 0.0,
            }

        worker_rows = []
        for info in workers:
            slot = info["slot"]
            row = dict(info)
            row.update(summary(slots[slot]))
            row["cache_memory"] = self.memory_tier(slots[slot])
            worker_rows.append(row)
        backends = []
        for upstream, backend, word in self.backend_words(config, index):
            responses = total[word + B_RESPONSES]
            backends.append(
                {
                    "upstream": upstream,
                    "id": backend.id,
                    "name": backend.name,
                    "address": backend.address,
                    "weight": backend.weight,
                    "active": backend.active,
                    "active_requests": sum(values[word + B_ACTIVE] for values in slots),
                    "requests": total[word + B_REQUESTS],
                    "failures": total[word + B_FAILURES],
                    "avg_response_ms": round(total[word + B_LATENCY_SUM_US] / responses / 1000.0, 3)
                    if responses
                    else 0.0,
                }
            )
        routes = [
            {
                "route": name,
                "upstream": route.upstream,
                "status": {cls: total[word + i] for i, cls in enumerate(STATUS_CLASSES)},
            }
            for name, route, word in self.route_words(config, index)
        ]
        # Cache figures of the routes that cache (or did: counts never vanish).
        cache_words = {name: (route, word) for name, route, word in self.route_cache_words(config, index)}
        for row in routes:
            route, word = cache_words.get(row["route"], (None, None))
            if word is not None:
                counts = self.cache_counts(total, word)
                if getattr(getattr(route, "cache", None), "enabled", False) or any(counts.values()):
                    row["cache"] = counts
        # Refusals of edge protection, for the routes that refused something.
        from speedproxy.edge.metrics import refused_counts

        refusals = refused_counts(self, config, index, total)
        for row in routes:
            counts = refusals.get(row["route"])
            if counts and any(counts.values()):
                row["refused"] = counts
        result: Dict[str, Any] = {
            "totals": summary(total),
            "latency_histogram": self.histogram(total),
            "workers": worker_rows,
            "backends": backends,
            "routes": routes,
            "upstreams": self.upstream_rows(config, index, slots, total),
            "cache": self.cache_summary(config, index, total),
        }
        if extra:
            result.update(extra)
        return result

    @staticmethod
    def histogram(total: Sequence[int]) -> Dict[str, int]:
        """Cumulative latency bucket counts keyed by upper bound."""
        out: Dict[str, int] = {}
        running = 0
        for i, bound in enumerate(LATENCY_BUCKETS):
            running += total[HIST_BASE + i]
            out[repr(bound)] = running
        running += total[HIST_BASE + len(LATENCY_BUCKETS)]
        out["+Inf"] = running
        return out

    def worker_info(self, slot: int) -> Dict[str, int]:
        values = self.segment.read_slot(slot)
        return {"pid": values[PID], "started": values[STARTED]}
