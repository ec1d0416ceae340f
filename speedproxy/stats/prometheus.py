"""``/metrics``: Prometheus text built from the stats segment on each scrape."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Mapping, Optional

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import (
    ACTIVE_CLIENTS,
    ACTIVE_UPSTREAM,
    B_ACTIVE,
    B_FAILURES,
    B_LATENCY_SUM_US,
    B_REQUESTS,
    B_RESPONSES,
    BYTES_IN,
    BYTES_OUT,
    CACHE_RESULTS,
    CLIENTS_TOTAL,
    HIST_BASE,
    LATENCY_BUCKETS,
    LATENCY_SUM_US,
    ROUTE_WORDS,
    REQUESTS,
    STATUS_BASE,
    STATUS_CLASSES,
    StatsIndex,
)


class SegmentCollector:
    """A prometheus-client collector reading the segment at scrape time.

    ``state`` returns the master's current view: ``config``, ``index``,
    ``workers`` (list of dicts with ``slot``), ``restarts``,
    ``config_version`` and ``backend_up`` (``{(upstream, id): bool}``).
    ``cache_disk``: the disk tier's figures (``bytes``, ``entries``,
    ``evictions``: its ``info()``) when there is one, read by the caller.
    """

    def __init__(
        self,
        reader: StatsReader,
        state: Callable[[], Mapping[str, Any]],
        cache_disk: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.reader = reader
        self.state = state
        self.cache_disk = cache_disk

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        config = state["config"]
        index: StatsIndex = state["index"]
        reader = self.reader
        slots = reader.slots()
        total = reader.totals(slots)

        requests = CounterMetricFamily(
            "speedproxy_requests",
            "Requests answered, by route, upstream and status class.",
            labels=["route", "upstream", "status_class"],
        )
        for name, route, word in reader.route_words(config, index):
            for i, cls in enumerate(STATUS_CLASSES):
                requests.add_metric([name, route.upstream, cls], total[word + i])
        # Requests refused before routing (bad request line, no route...): the
        # rest once every route that ever had an index is taken off, removed
        # ones too, so a route leaving and coming back moves nothing here and
        # this counter never goes backwards.
        routed = [0] * len(STATUS_CLASSES)
        route_base = reader.layout.route_base
        for idx in index.routes.values():
            word = route_base + idx * ROUTE_WORDS
            for i in range(len(STATUS_CLASSES)):
                routed[i] += total[word + i]
        for i, cls in enumerate(STATUS_CLASSES):
            requests.add_metric(["", "", cls], max(total[STATUS_BASE + i] - routed[i], 0))
        yield requests

        buckets = []
        running = 0
        for i, bound in enumerate(LATENCY_BUCKETS):
            running += total[HIST_BASE + i]
            buckets.append((repr(bound), running))
        running += total[HIST_BASE + len(LATENCY_BUCKETS)]
        buckets.append(("+Inf", running))
        yield HistogramMetricFamily(
            "speedproxy_request_duration_seconds",
            "Time from request head to the end of the response.",
            buckets=buckets,
            sum_value=total[LATENCY_SUM_US] / 1e6,
        )

        yield GaugeMetricFamily(
            "speedproxy_active_connections", "Open client connections.", value=total[ACTIVE_CLIENTS]
        )
        yield CounterMetricFamily(
            "speedproxy_connections", "Client connections accepted.", value=total[CLIENTS_TOTAL]
        )
        yield GaugeMetricFamily(
            "speedproxy_active_upstream_requests",
            "Requests in flight to backends.",
            value=total[ACTIVE_UPSTREAM],
        )
        yield CounterMetricFamily(
            "speedproxy_received_bytes", "Bytes received from clients.", value=total[BYTES_IN]
        )
        yield CounterMetricFamily(
            "speedproxy_sent_bytes", "Bytes sent to clients.", value=total[BYTES_OUT]
        )

        per_worker = CounterMetricFamily(
            "speedproxy_worker_requests", "Requests answered, by worker slot.", labels=["worker"]
        )
        for info in state["workers"]:
            per_worker.add_metric([str(info["slot"])], slots[info["slot"]][REQUESTS])
        yield per_worker
        yield GaugeMetricFamily("speedproxy_workers", "Workers serving.", value=len(state["workers"]))
        certificate = state.get("certificate")
        if certificate is not None:
            expiry = GaugeMetricFamily(
                "speedproxy_tls_certificate_expiry_timestamp_seconds",
                "When the certificate new TLS handshakes get expires (Unix time).",
                labels=["cert_file", "sha256"],
            )
            expiry.add_metric([certificate.cert_file, certificate.sha256], certificate.not_after_epoch)
            yield expiry
        yield CounterMetricFamily(
            "speedproxy_worker_restarts", "Workers respawned after exiting.", value=state["restarts"]
        )
        yield GaugeMetricFamily(
            "speedproxy_config_version", "Version of the live config.", value=state["config_version"]
        )

        labels = ["upstream", "backend"]
        active = GaugeMetricFamily("speedproxy_backend_active_requests", "Requests in flight.", labels=labels)
        b_requests = CounterMetricFamily("speedproxy_backend_requests", "Requests sent.", labels=labels)
        b_failures = CounterMetricFamily("speedproxy_backend_failures", "Failed requests.", labels=labels)
        b_latency = CounterMetricFamily(
            "speedproxy_backend_response_seconds",
            "Sum of time to response end for answered requests.",
            labels=labels,
        )
        b_responses = CounterMetricFamily("speedproxy_backend_responses", "Responses relayed.", labels=labels)
        up = GaugeMetricFamily("speedproxy_backend_up", "1 when the backend takes traffic.", labels=labels)
        weight = GaugeMetricFamily("speedproxy_backend_weight", "Configured weight.", labels=labels)
        # The backend's display name (SpeedMimi's ``name``) beside its id,
        # as an info metric so that renaming one starts no new series.
        info = GaugeMetricFamily(
            "speedproxy_backend_info", "Always 1: a backend's name and address.",
            labels=labels + ["name", "address"],
        )
        backend_up = state.get("backend_up", {})
        for upstream, backend, word in reader.backend_words(config, index):
            key = [upstream, backend.id]
            active.add_metric(key, sum(values[word + B_ACTIVE] for values in slots))
            b_requests.add_metric(key, total[word + B_REQUESTS])
            b_failures.add_metric(key, total[word + B_FAILURES])
            b_latency.add_metric(key, total[word + B_LATENCY_SUM_US] / 1e6)
            b_responses.add_metric(key, total[word + B_RESPONSES])
            healthy = backend_up.get((upstream, backend.id), True)
            up.add_metric(key, 1.0 if (backend.active and healthy and backend.weight > 0) else 0.0)
            weight.add_metric(key, backend.weight)
            info.add_metric(key + [backend.name, backend.address], 1.0)
        yield from (active, b_requests, b_failures, b_latency, b_responses, up, weight, info)
        yield from self._upstreams(reader, config, index, slots, total)
        yield from self._cache(reader, config, index, total)
        from speedproxy.edge.metrics import refused_metrics

        yield from refused_metrics(reader, config, index, total)
        from speedproxy.edge.compression_metrics import compression_metrics

        yield from compression_metrics(reader, config, index, total)

    def _cache(self, reader: StatsReader, config: Any, index: StatsIndex, total: List[int]) -> Iterator[Metric]:
        """Cache lookups by route and result, origin requests, and the tiers' size."""
        results = CounterMetricFamily(
            "speedproxy_cache_requests",
            "Cache lookups of cached routes, by result (hit, miss, stale, revalidated, bypass).",
            labels=["route", "result"],
        )
        origin = CounterMetricFamily(
            "speedproxy_origin_requests",
            "Requests cached routes sent to the origin (misses, revalidations, bypasses).",
            labels=["route"],
        )
        for name, route, word in reader.route_cache_words(config, index):
            counts = reader.cache_counts(total, word)
            if not (getattr(getattr(route, "cache", None), "enabled", False) or any(counts.values())):
                continue
            for result in CACHE_RESULTS:
                results.add_metric([name, result], counts[result])
            origin.add_metric([name], counts["origin_requests"])
        yield from (results, origin)
        memory = reader.memory_tier(total)
        labels = ["tier"]
        size = GaugeMetricFamily("speedproxy_cache_bytes", "Bytes the cache tier holds (memory: all workers).", labels=labels)
        objects = GaugeMetricFamily("speedproxy_cache_objects", "Objects the cache tier holds.", labels=labels)
        evictions = CounterMetricFamily(
            "speedproxy_cache_evictions", "Objects evicted to make room.", labels=labels
        )
        size.add_metric(["memory"], memory["bytes"])
        objects.add_metric(["memory"], memory["objects"])
        evictions.add_metric(["memory"], memory["evictions"])
        disk = self.cache_disk
        if disk:
            size.add_metric(["disk"], disk.get("bytes", 0))
            objects.add_metric(["disk"], disk.get("entries", 0))
            evictions.add_metric(["disk"], disk.get("evictions", 0))
        yield from (size, objects, evictions)

    @staticmethod
    def _upstreams(
        reader: StatsReader, config: Any, index: StatsIndex, slots: List[List[int]], total: List[int]
    ) -> Iterator[Metric]:
        """Per upstream group: the queue of requests waiting for a slot, and panic."""
        labels = ["upstream"]
        queue = GaugeMetricFamily(
            "speedproxy_upstream_queue",
            "Requests waiting for a backend slot (every backend at max_conn), all workers.",
            labels=labels,
        )
        panic = GaugeMetricFamily(
            "speedproxy_upstream_panic",
            "1 while the group balances across backends passive checks took out (panic_threshold).",
            labels=labels,
        )
        queued = CounterMetricFamily(
            "speedproxy_upstream_queued", "Requests that waited for a backend slot.", labels=labels
        )
        full = CounterMetricFamily(
            "speedproxy_upstream_queue_full", "Requests refused (503) because the queue was full.", labels=labels
        )
        timeouts = CounterMetricFamily(
            "speedproxy_upstream_queue_timeouts",
            "Requests answered 503 after waiting server.queue_timeout.",
            labels=labels,
        )
        for row in reader.upstream_rows(config, index, slots, total):
            key = [row["upstream"]]
            queue.add_metric(key, row["queue"])
            panic.add_metric(key, 1.0 if row["panic"] else 0.0)
            queued.add_metric(key, row["queued"])
            full.add_metric(key, row["queue_full"])
            timeouts.add_metric(key, row["queue_timeouts"])
        yield from (queue, panic, queued, full, timeouts)


def render_metrics(collector: SegmentCollector) -> bytes:
    """Prometheus text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry)
