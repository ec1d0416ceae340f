"""``/metrics``: Prometheus text rendered from the segment at scrape time."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Mapping, Optional, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from speedproxy.config import Config, parse_config
from speedproxy.stats.prometheus import SegmentCollector, render_metrics
from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import (
    ACTIVE_CLIENTS,
    ACTIVE_UPSTREAM,
    B_ACTIVE,
    B_FAILURES,
    B_REQUESTS,
    BYTES_IN,
    CLIENTS_TOTAL,
    Layout,
    StatsIndex,
    StatsSegment,
)
from speedproxy.tls import LoadedCertificate

LAYOUT = Layout(slots=3, routes=4, backends=6)

BACKENDS = """
backends:
  api:
    - {id: a1, host: 10.0.0.1, port: 8001, weight: 100}
    - {id: a2, host: 10.0.0.2, port: 8002, weight: 0}
  web:
    - {id: w1, host: 10.0.0.3, port: 8003, active: false, weight: 30}
"""
CONFIG = parse_config(BACKENDS + "routing:\n  api: {path: /api, upstream: api}\n  web: {path: /, upstream: web}\n")
#: The same backends, with the ``web`` route taken out.
API_ONLY = parse_config(BACKENDS + "routing:\n  api: {path: /api, upstream: api}\n")

Labels = FrozenSet[Tuple[str, str]]
A1 = frozenset({"upstream": "api", "backend": "a1"}.items())
A2 = frozenset({"upstream": "api", "backend": "a2"}.items())
W1 = frozenset({"upstream": "web", "backend": "w1"}.items())


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[StatsSegment]:
    segment = StatsSegment.create(str(tmp_path / "stats"), LAYOUT)
    yield segment
    segment.close()


def _index(config: Config = CONFIG) -> StatsIndex:
    index = StatsIndex()
    index.assign_config(config, LAYOUT)
    return index


def _state(config: Config = CONFIG, index: Optional[StatsIndex] = None, **overrides: Any) -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "config": config,
        "index": index if index is not None else _index(config),
        "workers": [{"slot": 0, "pid": 100}, {"slot": 1, "pid": 101}],
        "restarts": 0,
        "config_version": 1,
        "backend_up": {},
    }
    state.update(overrides)
    return state


def _scrape(reader: StatsReader, state: Mapping[str, Any]) -> Tuple[Dict[str, str], Dict[str, Dict[Labels, float]]]:
    """Render, parse back, and return ``({family: type}, {sample: {labels: value}})``."""
    text = render_metrics(SegmentCollector(reader, lambda: state)).decode("utf-8")
    types: Dict[str, str] = {}
    samples: Dict[str, Dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return types, samples


def _labels(**labels: str) -> Labels:
    return frozenset(labels.items())


def _write_traffic(segment: StatsSegment, index: StatsIndex) -> None:
    """Two workers answer 7 requests: 5 routed, 2 refused before routing."""
    api, web = index.routes["api"], index.routes["web"]
    a1, a2, w1 = index.backends["api/a1"], index.backends["api/a2"], index.backends["web/w1"]
    zero, one = segment.writer(0), segment.writer(1)
    zero.request_done(api, a1, 200, 0.001, 100, 10)
    zero.request_done(api, a1, 200, 0.25, 200, 20)
    zero.request_done(web, w1, 503, 2.0, 50, 5)
    one.request_done(api, a2, 404, 0.5, 25)
    one.request_done(api, a1, 301, 0.0005, 5)
    one.request_done(-1, -1, 400, 0.0, 0)
    one.request_done(-1, -1, 400, 0.0, 0)
    for writer, backend, requests, failures, active in ((zero, a1, 2, 0, 1), (one, a1, 1, 0, 2), (one, a2, 2, 1, 0)):
        segment.words[writer.backend_word(backend, B_REQUESTS)] += requests
        segment.words[writer.backend_word(backend, B_FAILURES)] += failures
        segment.words[writer.backend_word(backend, B_ACTIVE)] += active


def test_the_rendered_text_parses_into_the_documented_families(segment: StatsSegment) -> None:
    types, _ = _scrape(StatsReader(segment), _state())
    assert types == {
        "speedproxy_requests": "counter",
        "speedproxy_request_duration_seconds": "histogram",
        "speedproxy_active_connections": "gauge",
        "speedproxy_connections": "counter",
        "speedproxy_active_upstream_requests": "gauge",
        "speedproxy_received_bytes": "counter",
        "speedproxy_sent_bytes": "counter",
        "speedproxy_worker_requests": "counter",
        "speedproxy_workers": "gauge",
        "speedproxy_worker_restarts": "counter",
        "speedproxy_config_version": "gauge",
        "speedproxy_backend_active_requests": "gauge",
        "speedproxy_backend_requests": "counter",
        "speedproxy_backend_failures": "counter",
        "speedproxy_backend_response_seconds": "counter",
        "speedproxy_backend_responses": "counter",
        "speedproxy_backend_up": "gauge",
        "speedproxy_backend_weight": "gauge",
        "speedproxy_backend_info": "gauge",
        "speedproxy_upstream_queue": "gauge",
        "speedproxy_upstream_panic": "gauge",
        "speedproxy_upstream_queued": "counter",
        "speedproxy_upstream_queue_full": "counter",
        "speedproxy_upstream_queue_timeouts": "counter",
        "speedproxy_cache_requests": "counter",
        "speedproxy_origin_requests": "counter",
        "speedproxy_cache_bytes": "gauge",
        "speedproxy_cache_objects": "gauge",
        "speedproxy_cache_evictions": "counter",
        "speedproxy_refused": "counter",
    }


def test_request_counter_adds_up_to_the_requests_written(segment: StatsSegment) -> None:
    index = _index()
    _write_traffic(segment, index)
    _, samples = _scrape(StatsReader(segment), _state(index=index))
    requests = samples["speedproxy_requests_total"]
    assert sum(requests.values()) == 7
    assert requests[_labels(route="api", upstream="api", status_class="2xx")] == 2
    assert requests[_labels(route="api", upstream="api", status_class="3xx")] == 1
    assert requests[_labels(route="api", upstream="api", status_class="4xx")] == 1
    assert requests[_labels(route="web", upstream="web", status_class="5xx")] == 1
    assert requests[_labels(route="web", upstream="web", status_class="2xx")] == 0
    # Refused before routing: no route, no upstream.
    assert requests[_labels(route="", upstream="", status_class="4xx")] == 2
    assert requests[_labels(route="", upstream="", status_class="2xx")] == 0
    assert len(requests) == 3 * 5


def test_duration_histogram_is_cumulative_with_count_and_sum(segment: StatsSegment) -> None:
    index = _index()
    _write_traffic(segment, index)
    _, samples = _scrape(StatsReader(segment), _state(index=index))
    bucket_samples = samples["speedproxy_request_duration_seconds_bucket"]
    buckets = {dict(labels)["le"]: value for labels, value in bucket_samples.items()}
    assert buckets == {
        "0.001": 4.0,  # 0.001, 0.0005 and the two refusals at 0s
        "0.0025": 4.0, "0.005": 4.0, "0.01": 4.0, "0.025": 4.0, "0.05": 4.0, "0.1": 4.0,
        "0.25": 5.0,
        "0.5": 6.0,
        "1.0": 6.0,
        "2.5": 7.0,
        "5.0": 7.0, "10.0": 7.0, "+Inf": 7.0,
    }
    assert samples["speedproxy_request_duration_seconds_count"][_labels()] == 7
    assert samples["speedproxy_request_duration_seconds_sum"][_labels()] == pytest.approx(2.7515)


def test_connection_and_byte_totals(segment: StatsSegment) -> None:
    index = _index()
    _write_traffic(segment, index)
    segment.writer(0).add(ACTIVE_CLIENTS, 4)
    segment.writer(1).add(ACTIVE_CLIENTS, 1)
    segment.writer(0).add(CLIENTS_TOTAL, 12)
    segment.writer(1).add(ACTIVE_UPSTREAM, 3)
    segment.writer(1).add(BYTES_IN, 7)
    _, samples = _scrape(StatsReader(segment), _state(index=index))
    assert samples["speedproxy_active_connections"][_labels()] == 5
    assert samples["speedproxy_connections_total"][_labels()] == 12
    assert samples["speedproxy_active_upstream_requests"][_labels()] == 3
    assert samples["speedproxy_received_bytes_total"][_labels()] == 42  # 10 + 20 + 5 + 7
    assert samples["speedproxy_sent_bytes_total"][_labels()] == 380


def test_worker_metrics_follow_the_masters_state(segment: StatsSegment) -> None:
    index = _index()
    _write_traffic(segment, index)
    segment.writer(2).request_done(-1, -1, 200, 0.0, 0)  # a slot no worker holds right now
    state = _state(index=index, workers=[{"slot": 1}, {"slot": 0}], restarts=3, config_version=9)
    _, samples = _scrape(StatsReader(segment), state)
    assert samples["speedproxy_worker_requests_total"] == {_labels(worker="0"): 3, _labels(worker="1"): 4}
    assert samples["speedproxy_workers"][_labels()] == 2
    assert samples["speedproxy_worker_restarts_total"][_labels()] == 3
    assert samples["speedproxy_config_version"][_labels()] == 9


def test_backend_metrics(segment: StatsSegment) -> None:
    index = _index()
    _write_traffic(segment, index)
    _, samples = _scrape(StatsReader(segment), _state(index=index))
    a1, a2, w1 = A1, A2, W1
    assert samples["speedproxy_backend_active_requests"] == {a1: 3, a2: 0, w1: 0}
    assert samples["speedproxy_backend_requests_total"] == {a1: 3, a2: 2, w1: 0}
    assert samples["speedproxy_backend_failures_total"] == {a1: 0, a2: 1, w1: 0}
    assert samples["speedproxy_backend_responses_total"] == {a1: 3, a2: 1, w1: 1}
    seconds = samples["speedproxy_backend_response_seconds_total"]
    assert seconds[a1] == pytest.approx(0.2515)
    assert seconds[a2] == pytest.approx(0.5)
    assert seconds[w1] == pytest.approx(2.0)
    assert samples["speedproxy_backend_weight"] == {a1: 100, a2: 0, w1: 30}


def test_backend_up_needs_active_healthy_and_a_weight(segment: StatsSegment) -> None:
    a1, a2, w1 = A1, A2, W1
    _, samples = _scrape(StatsReader(segment), _state())
    # a2 drains (weight 0), w1 is inactive.
    assert samples["speedproxy_backend_up"] == {a1: 1.0, a2: 0.0, w1: 0.0}
    _, samples = _scrape(StatsReader(segment), _state(backend_up={("api", "a1"): False}))
    assert samples["speedproxy_backend_up"][a1] == 0.0


def test_requests_of_retired_workers_stay_in_the_totals(segment: StatsSegment) -> None:
    index = _index()
    reader = StatsReader(segment)
    api, a1 = index.routes["api"], index.backends["api/a1"]
    for _ in range(4):
        segment.writer(0).request_done(api, a1, 200, 0.01, 10)
    reader.retire(0)
    segment.reset_slot(0, 200, 2)
    segment.writer(0).request_done(api, a1, 200, 0.01, 10)
    _, samples = _scrape(reader, _state(index=index, restarts=1))
    assert samples["speedproxy_requests_total"][_labels(route="api", upstream="api", status_class="2xx")] == 5
    assert samples["speedproxy_sent_bytes_total"][_labels()] == 50
    assert samples["speedproxy_backend_responses_total"][_labels(upstream="api", backend="a1")] == 5
    assert samples["speedproxy_request_duration_seconds_count"][_labels()] == 5
    # The per-worker counter is the live process's own.
    assert samples["speedproxy_worker_requests_total"][_labels(worker="0")] == 1


def test_backends_and_routes_without_an_index_are_not_exported(segment: StatsSegment) -> None:
    index = StatsIndex()
    index.assign(["api"], ["api/a1"], LAYOUT)
    _, samples = _scrape(StatsReader(segment), _state(index=index))
    assert list(samples["speedproxy_backend_requests_total"]) == [_labels(upstream="api", backend="a1")]
    routes = {dict(labels)["route"] for labels in samples["speedproxy_requests_total"]}
    assert routes == {"api", ""}


def test_no_request_counter_goes_backwards_when_a_route_leaves_and_comes_back(segment: StatsSegment) -> None:
    index = _index()
    reader = StatsReader(segment)
    for _ in range(3):
        segment.writer(0).request_done(index.routes["web"], -1, 200, 0.01, 0)
    unrouted = _labels(route="", upstream="", status_class="2xx")
    seen: List[float] = []
    for config in (CONFIG, API_ONLY, CONFIG):
        _, samples = _scrape(reader, _state(config=config, index=index))
        seen.append(samples["speedproxy_requests_total"][unrouted])
    assert seen == sorted(seen)


def test_the_served_certificate_expiry_is_a_gauge(segment: StatsSegment) -> None:
    reader = StatsReader(segment)
    name = "speedproxy_tls_certificate_expiry_timestamp_seconds"
    _, samples = _scrape(reader, _state())
    assert name not in samples  # no TLS listener, no gauge
    certificate = LoadedCertificate(
        options=None, cert_file="/etc/speedproxy/server.crt", key_file="/etc/speedproxy/server.key",
        subject="CN=example.com", not_after="2027-02-21T12:00:00Z", sha256="AB:CD", chain_length=2,
        not_after_epoch=1803211200.0,
    )
    types, samples = _scrape(reader, _state(certificate=certificate))
    assert types[name] == "gauge"
    assert samples[name] == {_labels(cert_file="/etc/speedproxy/server.crt", sha256="AB:CD"): 1803211200.0}


def test_a_backends_name_is_an_info_metric_beside_its_id(segment: StatsSegment) -> None:
    config = parse_config(BACKENDS.replace("{id: a1,", '{id: a1, name: "API One",') + "routing:\n  api: {path: /api, upstream: api}\n")
    _, samples = _scrape(StatsReader(segment), _state(config))
    assert samples["speedproxy_backend_info"] == {
        _labels(upstream="api", backend="a1", name="API One", address="10.0.0.1:8001"): 1.0,
        _labels(upstream="api", backend="a2", name="", address="10.0.0.2:8002"): 1.0,
        _labels(upstream="web", backend="w1", name="", address="10.0.0.3:8003"): 1.0,
    }
    # The counters keep their labels: renaming a backend starts no new series.
    assert _labels(upstream="api", backend="a1") in samples["speedproxy_backend_requests_total"]
