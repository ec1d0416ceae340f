"""Cache figures in the stats segment: the data path's writers, /stats and /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from speedproxy.config import parse_config
from speedproxy.stats import CACHE_BYPASS, CACHE_HIT, CACHE_MISS, CACHE_RESULTS, CACHE_REVALIDATED, CACHE_STALE
from speedproxy.stats.prometheus import SegmentCollector, render_metrics
from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import (
    C_MEMORY_BYTES,
    C_MEMORY_EVICTIONS,
    C_MEMORY_OBJECTS,
    RC_ORIGIN,
    ROUTE_CACHE_WORDS,
    Layout,
    StatsIndex,
    StatsSegment,
)

CONFIG = parse_config(
    """\
backends:
  api: [{id: a1, host: 10.0.0.1, port: 8001}]
routing:
  api: {path: /api, upstream: api, cache: {enabled: true}}
  web: {path: /, upstream: api}
"""
)
LAYOUT = Layout(slots=3, routes=4, backends=2, upstreams=2)


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[StatsSegment]:
    made = StatsSegment.create(str(tmp_path / "stats"), LAYOUT)
    yield made
    made.close()


def _index() -> StatsIndex:
    index = StatsIndex()
    index.assign_config(CONFIG, LAYOUT)
    return index


def test_result_constants_follow_the_words() -> None:
    assert (CACHE_HIT, CACHE_MISS, CACHE_STALE, CACHE_REVALIDATED, CACHE_BYPASS) == (0, 1, 2, 3, 4)
    assert CACHE_RESULTS == ("hit", "miss", "stale", "revalidated", "bypass")
    assert ROUTE_CACHE_WORDS == len(CACHE_RESULTS) + 1


def test_writers_count_per_route_and_stay_in_their_words(segment: StatsSegment) -> None:
    writer = segment.writer(1)
    writer.cache_result(2, CACHE_HIT)
    writer.cache_result(2, CACHE_HIT)
    writer.cache_result(2, CACHE_STALE)
    writer.cache_result(3, CACHE_BYPASS)
    writer.origin_request(2)
    writer.cache_result(-1, CACHE_HIT)  # no route: nothing
    writer.origin_request(-1)
    writer.cache_result(0, 9)  # not a result: nothing
    values = segment.read_slot(1)
    base = LAYOUT.route_cache_base
    assert values[base + 2 * ROUTE_CACHE_WORDS:base + 3 * ROUTE_CACHE_WORDS] == [2, 0, 1, 0, 0, 1]
    assert values[base + 3 * ROUTE_CACHE_WORDS + CACHE_BYPASS] == 1
    assert sum(values) == 5
    assert segment.read_slot(0) == segment.read_slot(2) == [0] * LAYOUT.slot_words


def test_cache_memory_sets_the_figures_it_is_given(segment: StatsSegment) -> None:
    writer = segment.writer(0)
    writer.cache_memory(1000, 10, 3)
    writer.cache_memory(800, 8, 5)  # a running total, not a delta
    values = segment.read_slot(0)
    base = LAYOUT.cache_base
    assert values[base + C_MEMORY_BYTES:base + C_MEMORY_EVICTIONS + 1] == [800, 8, 5]


def test_bytes_and_objects_are_gauges_evictions_and_results_are_counters() -> None:
    base = LAYOUT.cache_base
    assert LAYOUT.is_gauge(base + C_MEMORY_BYTES) and LAYOUT.is_gauge(base + C_MEMORY_OBJECTS)
    assert not LAYOUT.is_gauge(base + C_MEMORY_EVICTIONS)
    route_words = range(LAYOUT.route_cache_base, LAYOUT.slot_words)
    assert not any(LAYOUT.is_gauge(word) for word in route_words)


def test_counters_survive_a_worker_restart_gauges_do_not(segment: StatsSegment) -> None:
    index = _index()
    api = index.routes["api"]
    reader = StatsReader(segment)
    segment.reset_slot(0, 100, 1)
    old = segment.writer(0)
    old.cache_result(api, CACHE_HIT)
    old.origin_request(api)
    old.cache_memory(5000, 50, 7)
    reader.retire(0)
    segment.reset_slot(0, 101, 2)
    new = segment.writer(0)
    new.cache_result(api, CACHE_MISS)
    new.cache_memory(100, 1, 2)
    segment.writer(1).cache_memory(300, 3, 1)
    cache = reader.snapshot(CONFIG, index)["cache"]
    assert cache["memory"] == {"bytes": 400, "objects": 4, "evictions": 10}
    assert cache["requests"] == {"hit": 1, "miss": 1, "stale": 0, "revalidated": 0, "bypass": 0}
    assert cache["origin_requests"] == 1
    assert cache["hit_ratio"] == 0.5


def test_stats_json_shows_cache_counts_of_caching_routes_only(segment: StatsSegment) -> None:
    index = _index()
    segment.writer(0).cache_result(index.routes["api"], CACHE_REVALIDATED)
    segment.writer(1).cache_memory(64, 2, 0)
    workers = [{"slot": 0, "pid": 1, "ready": True}, {"slot": 1, "pid": 2, "ready": True}]
    snapshot = StatsReader(segment).snapshot(CONFIG, index, workers)
    routes = {row["route"]: row for row in snapshot["routes"]}
    assert routes["api"]["cache"] == {"hit": 0, "miss": 0, "stale": 0, "revalidated": 1, "bypass": 0,
                                      "origin_requests": 0}
    assert "cache" not in routes["web"]
    assert [row["cache_memory"]["bytes"] for row in snapshot["workers"]] == [0, 64]


def _scrape(text: bytes) -> Dict[str, Dict[Any, float]]:
    samples: Dict[str, Dict[Any, float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def _state(index: StatsIndex) -> Dict[str, Any]:
    return {"config": CONFIG, "index": index, "workers": [], "restarts": 0, "config_version": 1, "backend_up": {}}


def test_metrics_export_results_origin_requests_and_tiers(segment: StatsSegment) -> None:
    index = _index()
    api = index.routes["api"]
    for slot, (hits, size) in enumerate(((3, 1000), (2, 500))):
        writer = segment.writer(slot)
        for _ in range(hits):
            writer.cache_result(api, CACHE_HIT)
        writer.cache_result(api, CACHE_MISS)
        writer.origin_request(api)
        writer.cache_memory(size, hits, slot)
    disk = {"bytes": 9000, "entries": 12, "evictions": 4}
    samples = _scrape(render_metrics(SegmentCollector(StatsReader(segment), lambda: _state(index), disk)))
    requests = samples["speedproxy_cache_requests_total"]
    assert requests[frozenset({"route": "api", "result": "hit"}.items())] == 5
    assert requests[frozenset({"route": "api", "result": "miss"}.items())] == 2
    assert {dict(key)["route"] for key in requests} == {"api"}  # web does not cache
    assert samples["speedproxy_origin_requests_total"] == {frozenset({"route": "api"}.items()): 2}
    tier = lambda name: frozenset({"tier": name}.items())  # noqa: E731
    assert samples["speedproxy_cache_bytes"] == {tier("memory"): 1500, tier("disk"): 9000}
    assert samples["speedproxy_cache_objects"] == {tier("memory"): 5, tier("disk"): 12}
    assert samples["speedproxy_cache_evictions_total"] == {tier("memory"): 1, tier("disk"): 4}


def test_metrics_without_a_disk_tier_show_memory_only(segment: StatsSegment) -> None:
    samples = _scrape(render_metrics(SegmentCollector(StatsReader(segment), lambda: _state(_index()))))
    assert samples["speedproxy_cache_bytes"] == {frozenset({"tier": "memory"}.items()): 0}


def test_result_words_do_not_overlap_the_origin_word() -> None:
    assert RC_ORIGIN == CACHE_BYPASS + 1
