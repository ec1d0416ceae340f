"""The master's reader: totals over worker slots that never go backwards, and ``/stats``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speedproxy.config import Config, parse_config
from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import (
    ACTIVE_CLIENTS,
    ACTIVE_UPSTREAM,
    B_ACTIVE,
    B_DOWN_UNTIL_MS,
    B_FAILURES,
    B_LATENCY_SUM_US,
    B_REQUESTS,
    B_RESPONSES,
    BACKEND_WORDS,
    BYTES_IN,
    BYTES_OUT,
    CLIENTS_TOTAL,
    GENERATION,
    HIST_BASE,
    LATENCY_SUM_US,
    PID,
    REQUESTS,
    ROUTE_WORDS,
    STARTED,
    STATUS_BASE,
    Layout,
    StatsIndex,
    StatsSegment,
)

LAYOUT = Layout(slots=3, routes=4, backends=6)

CONFIG = parse_config(
    """
backends:
  api:
    - {id: a1, host: 10.0.0.1, port: 8001, weight: 100}
    - {id: a2, host: 10.0.0.2, port: 8002, weight: 0}
  web:
    - {id: w1, host: 10.0.0.3, port: 8003, active: false}
routing:
  api: {path: /api, upstream: api}
  web: {path: /, upstream: web}
"""
)


def _index(config: Config = CONFIG) -> StatsIndex:
    index = StatsIndex()
    index.assign_config(config, LAYOUT)
    return index


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[StatsSegment]:
    segment = StatsSegment.create(str(tmp_path / "stats"), LAYOUT)
    yield segment
    segment.close()


def _backend(index: int, word: int) -> int:
    """A per-backend word's offset inside a slot."""
    return LAYOUT.backend_base + index * BACKEND_WORDS + word


# -- totals and retirement ----------------------------------------------------------


def test_totals_add_up_every_slot_word_by_word(segment: StatsSegment) -> None:
    reader = StatsReader(segment)
    segment.reset_slot(0, 1000, 11)
    segment.reset_slot(2, 1002, 22)
    segment.writer(0).request_done(0, 0, 200, 0.25, 100, 10)
    segment.writer(2).request_done(0, 0, 502, 0.5, 30, 5)
    segment.writer(2).request_done(1, 2, 200, 0.125, 70, 0)
    segment.writer(0).add(ACTIVE_CLIENTS, 2)
    segment.writer(2).add(ACTIVE_CLIENTS, 1)

    total = reader.totals()

    assert total[REQUESTS] == 3
    assert total[BYTES_OUT] == 200
    assert total[BYTES_IN] == 15
    assert total[LATENCY_SUM_US] == 875_000
    assert total[STATUS_BASE:STATUS_BASE + 5] == [0, 2, 0, 0, 1]
    assert total[LAYOUT.route_base:LAYOUT.route_base + ROUTE_WORDS] == [0, 1, 0, 0, 1]
    assert total[_backend(0, B_RESPONSES)] == 2
    assert total[_backend(2, B_LATENCY_SUM_US)] == 125_000
    assert total[ACTIVE_CLIENTS] == 3
    # Generation, pid and start time are per slot: they are not summed.
    assert total[GENERATION:REQUESTS] == [0, 0, 0]


def test_totals_of_given_slots_do_not_read_the_segment(segment: StatsSegment) -> None:
    reader = StatsReader(segment)
    segment.writer(1).add(REQUESTS, 100)
    slots = [[0] * LAYOUT.slot_words for _ in range(3)]
    slots[0][REQUESTS] = 4
    assert reader.totals(slots)[REQUESTS] == 4


def test_retire_folds_counters_but_not_gauges_and_frees_the_slot(segment: StatsSegment) -> None:
    reader = StatsReader(segment)
    segment.reset_slot(1, 4321, 99)
    writer = segment.writer(1)
    writer.request_done(0, 1, 200, 0.25, 500, 50)
    writer.add(ACTIVE_CLIENTS, 4)
    writer.add(CLIENTS_TOTAL, 9)
    writer.add(ACTIVE_UPSTREAM, 2)
    segment.words[writer.backend_word(1, B_ACTIVE)] += 2
    segment.words[writer.backend_word(1, B_REQUESTS)] += 3
    segment.words[writer.backend_word(1, B_FAILURES)] += 1
    segment.words[writer.backend_word(1, B_DOWN_UNTIL_MS)] = 1_700_000_000_000

    reader.retire(1)

    assert segment.read_slot(1) == [2, 0, 0] + [0] * (LAYOUT.slot_words - 3)
    total = reader.totals()
    assert total[REQUESTS] == 1
    assert total[BYTES_OUT] == 500
    assert total[BYTES_IN] == 50
    assert total[CLIENTS_TOTAL] == 9
    assert total[STATUS_BASE + 1] == 1
    assert total[HIST_BASE + 7] == 1
    assert total[_backend(1, B_REQUESTS)] == 3
    assert total[_backend(1, B_FAILURES)] == 1
    assert total[_backend(1, B_RESPONSES)] == 1
    # A dead worker has nothing in flight and no say on health any more.
    assert total[ACTIVE_CLIENTS] == 0
    assert total[ACTIVE_UPSTREAM] == 0
    assert total[_backend(1, B_ACTIVE)] == 0
    assert total[_backend(1, B_DOWN_UNTIL_MS)] == 0
    assert reader.retired[PID] == 0
    assert reader.retired[STARTED] == 0


def test_totals_survive_a_respawn_and_keep_counting(segment: StatsSegment) -> None:
    reader = StatsReader(segment)
    segment.reset_slot(0, 10, 1)
    for _ in range(5):
        segment.writer(0).request_done(0, 0, 200, 0.001, 10)
    before = reader.totals()[REQUESTS]

    # The master's Supervisor.exited() then spawn(): retire, then a new pid.
    reader.retire(0)
    assert reader.totals()[REQUESTS] == before == 5
    segment.reset_slot(0, 11, 2)
    assert reader.totals()[REQUESTS] == 5
    for _ in range(3):
        segment.writer(0).request_done(0, 0, 200, 0.001, 10)

    total = reader.totals()
    assert total[REQUESTS] == 8
    assert total[BYTES_OUT] == 80
    assert total[LAYOUT.route_base + 1] == 8
    assert segment.read_slot(0)[REQUESTS] == 3
    assert segment.read_slot(0)[GENERATION] == 3


#: One step: (worker slot, requests it answers), or (slot, None) for "it dies and is respawned".
_steps = st.lists(st.tuples(st.integers(0, 2), st.one_of(st.none(), st.integers(0, 5))), max_size=25)


@settings(
    derandomize=True, database=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=_steps)
def test_no_counter_total_ever_goes_backwards(segment: StatsSegment, steps: List[Tuple[int, Optional[int]]]) -> None:
    for slot in range(LAYOUT.slots):
        segment.reset_slot(slot, 0, 0)
    reader = StatsReader(segment)
    counters = [word for word in range(3, LAYOUT.slot_words) if not LAYOUT.is_gauge(word)]
    previous = reader.totals()
    written = 0
    for pid, (slot, requests) in enumerate(steps, start=1):
        if requests is None:
            reader.retire(slot)
            segment.reset_slot(slot, pid, pid)
        else:
            for _ in range(requests):
                segment.writer(slot).request_done(slot, slot, 200 + 100 * slot, 0.01, 3)
            written += requests
        total = reader.totals()
        assert all(total[word] >= previous[word] for word in counters)
        assert total[REQUESTS] == written
        assert total[BYTES_OUT] == 3 * written
        previous = total


# -- names to words -------------------------------------------------------------------


def test_backend_and_route_words_follow_the_index_for_configured_names(segment: StatsSegment) -> None:
    reader = StatsReader(segment)
    index = StatsIndex()
    # An old route and backend keep their numbers but are not configured any more.
    index.assign(["old", "web", "api"], ["api/gone", "web/w1", "api/a2", "api/a1"], LAYOUT)
    backends = [(upstream, backend.id, word) for upstream, backend, word in reader.backend_words(CONFIG, index)]
    routes = [(name, route.upstream, word) for name, route, word in reader.route_words(CONFIG, index)]
    base = LAYOUT.backend_base
    assert backends == [("api", "a1", base + 3 * 6), ("api", "a2", base + 2 * 6), ("web", "w1", base + 1 * 6)]
    assert routes == [("api", "api", LAYOUT.route_base + 2 * 5), ("web", "web", LAYOUT.route_base + 1 * 5)]


def test_names_without_an_index_are_left_out(segment: StatsSegment) -> None:
    reader = StatsReader(segment)
    index = StatsIndex()
    index.assign(["web"], ["api/a2"], LAYOUT)
    assert [backend.id for _, backend, _ in reader.backend_words(CONFIG, index)] == ["a2"]
    assert [name for name, _, _ in reader.route_words(CONFIG, index)] == ["web"]


# -- snapshot ------------------------------------------------------------------------


def test_histogram_is_cumulative_and_ends_with_inf() -> None:
    total = [0] * LAYOUT.slot_words
    total[HIST_BASE + 0] = 2  # <= 1ms
    total[HIST_BASE + 7] = 3  # <= 250ms
    total[HIST_BASE + 13] = 1  # > 10s
    histogram = StatsReader.histogram(total)
    assert list(histogram) == [
        "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf",
    ]
    assert list(histogram.values()) == [2, 2, 2, 2, 2, 2, 2, 5, 5, 5, 5, 5, 5, 6]


def test_snapshot_reports_totals_workers_backends_and_routes(segment: StatsSegment) -> None:
    index = _index()
    reader = StatsReader(segment)
    a1, a2, w1 = index.backends["api/a1"], index.backends["api/a2"], index.backends["web/w1"]
    api, web = index.routes["api"], index.routes["web"]

    segment.reset_slot(0, 500, 1)
    segment.reset_slot(1, 501, 1)
    # A worker that already went away answered two requests via a1.
    segment.reset_slot(2, 502, 1)
    segment.writer(2).request_done(api, a1, 200, 0.5, 10, 1)
    segment.writer(2).request_done(api, a1, 200, 0.5, 10, 1)
    segment.words[segment.writer(2).backend_word(a1, B_REQUESTS)] += 2
    segment.words[segment.writer(2).backend_word(a1, B_ACTIVE)] += 5  # left in flight when it died
    reader.retire(2)

    w0, w1_ = segment.writer(0), segment.writer(1)
    w0.request_done(api, a1, 200, 0.25, 100, 10)
    w0.request_done(web, w1, 503, 0.125, 20, 2)
    w1_.request_done(api, a2, 404, 0.001, 50, 5)
    w1_.request_done(-1, -1, 400, 0.0, 0)
    segment.words[w0.backend_word(a1, B_REQUESTS)] += 2
    segment.words[w0.backend_word(a1, B_ACTIVE)] += 1
    segment.words[w1_.backend_word(a1, B_ACTIVE)] += 2
    segment.words[w1_.backend_word(a2, B_REQUESTS)] += 1
    segment.words[w1_.backend_word(a2, B_FAILURES)] += 1
    w0.add(ACTIVE_CLIENTS, 3)
    w0.add(CLIENTS_TOTAL, 7)
    w1_.add(ACTIVE_UPSTREAM, 3)

    workers = [{"slot": 0, "pid": 500, "ready": True}, {"slot": 1, "pid": 501, "ready": False}]
    snapshot = reader.snapshot(CONFIG, index, workers, {"version": "x", "config_version": 4})

    assert snapshot["totals"] == {
        "requests": 6,
        "status": {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 2, "5xx": 1},
        "bytes_in": 19,
        "bytes_out": 190,
        "active_connections": 3,
        "connections_total": 7,
        "active_upstream_requests": 3,
        "avg_latency_ms": 229.333,  # 1_376_000us / 6
    }
    assert snapshot["latency_histogram"]["0.001"] == 2
    assert snapshot["latency_histogram"]["0.25"] == 4
    assert snapshot["latency_histogram"]["+Inf"] == 6
    assert [row["slot"] for row in snapshot["workers"]] == [0, 1]
    assert snapshot["workers"][0]["pid"] == 500
    assert snapshot["workers"][0]["requests"] == 2
    assert snapshot["workers"][0]["avg_latency_ms"] == 187.5
    assert snapshot["workers"][1]["ready"] is False
    assert snapshot["workers"][1]["status"] == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 2, "5xx": 0}
    assert snapshot["backends"] == [
        {
            "upstream": "api", "id": "a1", "name": "", "address": "10.0.0.1:8001", "weight": 100, "active": True,
            "active_requests": 3, "requests": 4, "failures": 0, "avg_response_ms": 416.667,
        },
        {
            "upstream": "api", "id": "a2", "name": "", "address": "10.0.0.2:8002", "weight": 0, "active": True,
            "active_requests": 0, "requests": 1, "failures": 1, "avg_response_ms": 1.0,
        },
        {
            "upstream": "web", "id": "w1", "name": "", "address": "10.0.0.3:8003", "weight": 100, "active": False,
            "active_requests": 0, "requests": 0, "failures": 0, "avg_response_ms": 125.0,
        },
    ]
    assert snapshot["routes"] == [
        {"route": "api", "upstream": "api", "status": {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 0}},
        {"route": "web", "upstream": "web", "status": {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 1}},
    ]
    assert snapshot["version"] == "x"
    assert snapshot["config_version"] == 4


def test_snapshot_of_an_idle_segment_divides_by_nothing(segment: StatsSegment) -> None:
    snapshot = StatsReader(segment).snapshot(CONFIG, _index())
    assert snapshot["totals"]["requests"] == 0
    assert snapshot["totals"]["avg_latency_ms"] == 0.0
    assert [b["avg_response_ms"] for b in snapshot["backends"]] == [0.0, 0.0, 0.0]
    assert snapshot["workers"] == []
    assert snapshot["latency_histogram"]["+Inf"] == 0


def test_worker_info_reads_pid_and_start_time(segment: StatsSegment) -> None:
    segment.reset_slot(2, 31337, 1_700_000_123)
    reader = StatsReader(segment)
    assert reader.worker_info(2) == {"pid": 31337, "started": 1_700_000_123}
    reader.retire(2)
    assert reader.worker_info(2) == {"pid": 0, "started": 0}
