"""The mmap'd stats segment: layout, slots, the writer's accounting and the name index."""

from __future__ import annotations

import array
import os
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

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
    C_MEMORY_BYTES,
    C_MEMORY_OBJECTS,
    CACHE_WORDS,
    CLIENTS_TOTAL,
    FIXED_WORDS,
    GENERATION,
    HEADER_WORDS,
    HIST_BASE,
    LATENCY_BUCKETS,
    LATENCY_SUM_US,
    LAYOUT_VERSION,
    REFUSAL_WORDS,
    COMPRESSION_WORDS,
    MAGIC,
    PID,
    REQUESTS,
    ROUTE_CACHE_WORDS,
    ROUTE_WORDS,
    STARTED,
    STATUS_BASE,
    Layout,
    StatsIndex,
    StatsSegment,
    latency_bucket,
    layout_for,
)

LAYOUT = Layout(slots=4, routes=3, backends=5)


def _create(tmp_path: Path, layout: Layout = LAYOUT) -> StatsSegment:
    return StatsSegment.create(str(tmp_path / "stats"), layout)


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[StatsSegment]:
    segment = _create(tmp_path)
    yield segment
    segment.close()


def _slot(segment: StatsSegment, slot: int) -> List[int]:
    start = segment.layout.slot_offset(slot)
    return segment.words[start:start + segment.layout.slot_words].tolist()


# -- layout ----------------------------------------------------------------------


def test_fixed_words_are_the_cross_process_contract_of_layout_4() -> None:
    # Workers and the master agree on these offsets; moving any of them needs
    # a new LAYOUT_VERSION (2: per-upstream words after the backends; 3: the
    # cache words after those; 4: per-route refusal words last).
    assert LAYOUT_VERSION == 4
    assert (GENERATION, PID, STARTED, REQUESTS) == (0, 1, 2, 3)
    assert STATUS_BASE == 10
    assert HIST_BASE == 15
    assert len(LATENCY_BUCKETS) == 13
    assert FIXED_WORDS == 29  # 15 + 13 buckets + the +Inf bucket


def test_layout_offsets_place_routes_then_backends_after_the_fixed_words() -> None:
    assert LAYOUT.route_base == FIXED_WORDS
    assert LAYOUT.backend_base == FIXED_WORDS + 3 * ROUTE_WORDS == 44
    assert LAYOUT.upstream_base == LAYOUT.cache_base == 44 + 5 * BACKEND_WORDS == 74
    assert LAYOUT.route_cache_base == 74 + CACHE_WORDS
    assert LAYOUT.refused_base == 77 + 3 * ROUTE_CACHE_WORDS == 95
    assert LAYOUT.compression_base == 95 + 3 * REFUSAL_WORDS == 119
    assert LAYOUT.slot_words == 119 + 3 * COMPRESSION_WORDS == 131
    assert LAYOUT.total_words == HEADER_WORDS + 4 * 131 == 540
    assert [LAYOUT.slot_offset(slot) for slot in range(4)] == [16, 147, 278, 409]


def test_only_active_counts_and_down_until_are_gauges() -> None:
    gauges = [word for word in range(LAYOUT.slot_words) if LAYOUT.is_gauge(word)]
    backend_gauges = [
        LAYOUT.backend_base + backend * BACKEND_WORDS + word
        for backend in range(5)
        for word in (B_ACTIVE, B_DOWN_UNTIL_MS)
    ]
    cache_gauges = [LAYOUT.cache_base + C_MEMORY_BYTES, LAYOUT.cache_base + C_MEMORY_OBJECTS]
    assert gauges == sorted([ACTIVE_CLIENTS, ACTIVE_UPSTREAM] + backend_gauges + cache_gauges)


def test_layout_for_leaves_room_to_grow() -> None:
    # Room for as many upstream groups as backends unless told.
    assert layout_for(16, 3, 10) == Layout(slots=16, routes=64, backends=256, upstreams=256)
    assert layout_for(2, 20, 100) == Layout(slots=2, routes=80, backends=400, upstreams=400)
    assert layout_for(2, 20, 100, upstreams=100) == Layout(slots=2, routes=80, backends=400, upstreams=400)
    assert layout_for(2, 1, 1, upstreams=3) == Layout(slots=2, routes=64, backends=256, upstreams=256)


# -- create / attach ---------------------------------------------------------------


def test_create_sizes_the_file_and_writes_the_header(tmp_path: Path) -> None:
    segment = _create(tmp_path)
    try:
        assert os.path.getsize(tmp_path / "stats") == 540 * 8
        assert segment.words[:6].tolist() == [MAGIC, LAYOUT_VERSION, 4, 3, 5, 131]
        assert segment.words[HEADER_WORDS:].tolist() == [0] * (4 * 131)
    finally:
        segment.close()


def test_create_truncates_an_existing_file(tmp_path: Path) -> None:
    first = _create(tmp_path)
    first.writer(1).add(REQUESTS, 7)
    first.close()
    second = _create(tmp_path, Layout(slots=1, routes=1, backends=1))
    try:
        words = HEADER_WORDS + FIXED_WORDS + ROUTE_WORDS + BACKEND_WORDS + CACHE_WORDS + ROUTE_CACHE_WORDS + REFUSAL_WORDS + COMPRESSION_WORDS
        assert os.path.getsize(tmp_path / "stats") == words * 8
        assert second.read_slot(0) == [0] * second.layout.slot_words
    finally:
        second.close()


def test_attach_reads_the_layout_from_the_header_and_shares_the_memory(tmp_path: Path) -> None:
    master = _create(tmp_path)
    worker = StatsSegment.attach(str(tmp_path / "stats"))
    try:
        assert worker.layout == LAYOUT
        worker.writer(2).add(REQUESTS, 5)
        master.writer(2).add(BYTES_OUT, 300)
        assert master.read_slot(2)[REQUESTS] == 5
        assert worker.read_slot(2)[BYTES_OUT] == 300
    finally:
        worker.close()
        master.close()


def test_attach_refuses_a_file_that_is_not_a_segment(tmp_path: Path) -> None:
    path = tmp_path / "other"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError, match="not a speedproxy stats segment"):
        StatsSegment.attach(str(path))


def test_attach_refuses_another_layout_version(tmp_path: Path) -> None:
    segment = _create(tmp_path)
    segment.words[1] = LAYOUT_VERSION + 1
    segment.close()
    with pytest.raises(ValueError, match="not a speedproxy stats segment"):
        StatsSegment.attach(str(tmp_path / "stats"))


def test_attach_refuses_a_header_promising_more_than_the_file_holds(tmp_path: Path) -> None:
    segment = _create(tmp_path)
    segment.close()
    os.truncate(tmp_path / "stats", 311 * 8)
    with pytest.raises(ValueError, match="inconsistent"):
        StatsSegment.attach(str(tmp_path / "stats"))


def test_attach_refuses_a_slot_size_that_disagrees_with_the_counts(tmp_path: Path) -> None:
    segment = _create(tmp_path)
    segment.words[5] = 73
    segment.close()
    with pytest.raises(ValueError, match="inconsistent"):
        StatsSegment.attach(str(tmp_path / "stats"))


def test_anonymous_segment_serves_one_process() -> None:
    segment = StatsSegment.anonymous(Layout(slots=1, routes=1, backends=1))
    try:
        assert segment.path == ""
        assert segment.words[:2].tolist() == [MAGIC, LAYOUT_VERSION]
        segment.writer(0).request_done(0, 0, 200, 0.25, 10)
        values = segment.read_slot(0)
        assert values[REQUESTS] == 1
        assert values[segment.layout.backend_base + B_RESPONSES] == 1
    finally:
        segment.close()


# -- slots -------------------------------------------------------------------------


def test_a_writer_stays_inside_its_own_slot(segment: StatsSegment) -> None:
    writer = segment.writer(1)
    for word in range(LAYOUT.slot_words):
        writer.add(word, word + 1)
    assert _slot(segment, 1) == list(range(1, 132))
    assert _slot(segment, 0) == [0] * 131
    assert _slot(segment, 2) == [0] * 131
    assert segment.words[:HEADER_WORDS].tolist()[:6] == [MAGIC, LAYOUT_VERSION, 4, 3, 5, 131]
    # The cache words of the last route of slot 1, then its refusal and compression words, sit right before slot 2.
    assert writer.route_cache_base + 3 * ROUTE_CACHE_WORDS == writer.refused_base
    assert writer.refused_base + 3 * REFUSAL_WORDS == writer.compression_base
    assert writer.compression_base + 3 * COMPRESSION_WORDS == LAYOUT.slot_offset(2)


def test_reset_slot_bumps_the_generation_zeroes_and_records_the_worker(segment: StatsSegment) -> None:
    writer = segment.writer(3)
    segment.reset_slot(3, 4242, 1_700_000_000)
    writer.request_done(1, 2, 503, 0.5, 100, 40)
    writer.add(ACTIVE_CLIENTS, 3)
    segment.writer(2).add(REQUESTS, 9)

    segment.reset_slot(3, 5151, 1_700_000_100)

    values = segment.read_slot(3)
    assert values[GENERATION] == 2
    assert values[PID] == 5151
    assert values[STARTED] == 1_700_000_100
    assert values[3:] == [0] * (131 - 3)
    assert segment.read_slot(2)[REQUESTS] == 9
    assert segment.read_slot(2)[GENERATION] == 0


def test_read_slot_is_a_copy_not_a_view(segment: StatsSegment) -> None:
    copy = segment.read_slot(0)
    segment.writer(0).add(REQUESTS, 1)
    assert copy[REQUESTS] == 0
    assert segment.read_slot(0)[REQUESTS] == 1


class _RacingWords:
    """The segment's words, with another process's write slipped in after a slice is copied."""

    def __init__(self, words: memoryview, after_copy: Callable[[], None]) -> None:
        self.words = words
        self.after_copy: Optional[Callable[[], None]] = after_copy
        self.copies = 0

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, slice):
            return self.words[key]
        self.copies += 1
        copy = array.array("q", self.words[key].tolist())
        if self.after_copy is not None:
            write, self.after_copy = self.after_copy, None
            write()
        return copy

    def __setitem__(self, key: Any, value: Any) -> None:
        self.words[key] = value


def test_read_slot_takes_the_copy_again_when_the_slot_changes_hands_meanwhile(segment: StatsSegment) -> None:
    real = segment.words
    segment.reset_slot(1, 100, 1)
    segment.writer(1).add(REQUESTS, 50)
    start = LAYOUT.slot_offset(1)

    def respawn() -> None:
        # The master retires the old worker and hands the slot to a new one.
        real[start + GENERATION] += 1
        for word in range(1, LAYOUT.slot_words):
            real[start + word] = 0
        real[start + PID] = 200
        real[start + REQUESTS] = 2

    racing = _RacingWords(real, respawn)
    segment.words = racing  # type: ignore[assignment]
    values = segment.read_slot(1)
    segment.words = real

    assert racing.copies == 2
    assert values[GENERATION] == 2
    assert values[PID] == 200
    assert values[REQUESTS] == 2


def test_read_slot_copies_once_when_the_generation_holds(segment: StatsSegment) -> None:
    real = segment.words
    segment.writer(0).add(REQUESTS, 3)
    racing = _RacingWords(real, lambda: None)
    segment.words = racing  # type: ignore[assignment]
    values = segment.read_slot(0)
    segment.words = real
    assert racing.copies == 1
    assert values[REQUESTS] == 3


# -- SlotWriter.request_done --------------------------------------------------------


def test_request_done_accounts_every_word_of_one_request(segment: StatsSegment) -> None:
    segment.writer(1).request_done(route=2, backend=3, status=404, seconds=0.125, bytes_out=1500, bytes_in=200)
    values = segment.read_slot(1)

    expected = [0] * LAYOUT.slot_words
    expected[REQUESTS] = 1
    expected[BYTES_OUT] = 1500
    expected[BYTES_IN] = 200
    expected[LATENCY_SUM_US] = 125_000
    expected[STATUS_BASE + 3] = 1  # 4xx
    expected[HIST_BASE + 7] = 1  # 0.1 < 0.125 <= 0.25
    expected[LAYOUT.route_base + 2 * ROUTE_WORDS + 3] = 1
    backend = LAYOUT.backend_base + 3 * BACKEND_WORDS
    expected[backend + B_RESPONSES] = 1
    expected[backend + B_LATENCY_SUM_US] = 125_000
    assert values == expected
    assert values[backend + B_REQUESTS] == 0  # counted when the request starts, not here
    assert values[backend + B_FAILURES] == 0


def test_request_done_sorts_statuses_into_classes_per_route(segment: StatsSegment) -> None:
    writer = segment.writer(0)
    for status in (101, 200, 204, 301, 404, 499, 500, 502, 503):
        writer.request_done(0, -1, status, 0.001, 0)
    for status in (200, 200, 503):
        writer.request_done(1, -1, status, 0.001, 0)
    values = segment.read_slot(0)
    assert values[STATUS_BASE:STATUS_BASE + 5] == [1, 4, 1, 2, 4]
    assert values[LAYOUT.route_base:LAYOUT.route_base + ROUTE_WORDS] == [1, 2, 1, 2, 3]
    assert values[LAYOUT.route_base + ROUTE_WORDS:LAYOUT.route_base + 2 * ROUTE_WORDS] == [0, 2, 0, 0, 1]
    assert values[LAYOUT.route_base + 2 * ROUTE_WORDS:LAYOUT.backend_base] == [0] * ROUTE_WORDS
    assert values[REQUESTS] == 12


def test_request_done_without_route_or_backend_touches_only_the_fixed_words(segment: StatsSegment) -> None:
    segment.writer(0).request_done(-1, -1, 400, 0.0, 0)
    values = segment.read_slot(0)
    assert values[REQUESTS] == 1
    assert values[STATUS_BASE + 3] == 1
    assert values[HIST_BASE] == 1
    assert values[LAYOUT.route_base:] == [0] * (LAYOUT.slot_words - LAYOUT.route_base)


def test_a_status_outside_1xx_to_5xx_counts_as_a_request_of_no_class(segment: StatsSegment) -> None:
    writer = segment.writer(0)
    writer.request_done(0, 0, 0, 0.01, 0)
    writer.request_done(0, 0, 600, 0.01, 0)
    values = segment.read_slot(0)
    assert values[REQUESTS] == 2
    assert values[STATUS_BASE:STATUS_BASE + 5] == [0] * 5
    assert values[LAYOUT.route_base:LAYOUT.route_base + ROUTE_WORDS] == [0] * ROUTE_WORDS
    assert values[LAYOUT.backend_base + B_RESPONSES] == 2


def test_request_done_adds_up_bytes_and_latency(segment: StatsSegment) -> None:
    writer = segment.writer(2)
    writer.request_done(0, 1, 200, 0.25, 1000, 10)
    writer.request_done(0, 1, 200, 2.0, 24, 0)
    writer.request_done(0, 4, 502, 0.0005, 7, 3)
    values = segment.read_slot(2)
    assert values[REQUESTS] == 3
    assert values[BYTES_OUT] == 1031
    assert values[BYTES_IN] == 13
    assert values[LATENCY_SUM_US] == 2_250_500
    assert values[LAYOUT.backend_base + BACKEND_WORDS + B_RESPONSES] == 2
    assert values[LAYOUT.backend_base + BACKEND_WORDS + B_LATENCY_SUM_US] == 2_250_000
    assert values[LAYOUT.backend_base + 4 * BACKEND_WORDS + B_LATENCY_SUM_US] == 500


@pytest.mark.parametrize(
    "seconds, bucket",
    [
        (0.0, 0),
        (0.001, 0),  # upper bounds are inclusive
        (0.0011, 1),
        (0.0025, 1),
        (0.003, 2),
        (1.0, 9),
        (2.0, 10),
        (10.0, 12),
        (10.5, 13),  # +Inf
        (3600.0, 13),
    ],
)
def test_latency_lands_in_the_bucket_with_the_first_bound_at_or_above_it(
    segment: StatsSegment, seconds: float, bucket: int
) -> None:
    assert latency_bucket(seconds) == bucket
    segment.writer(0).request_done(0, 0, 200, seconds, 0)
    histogram = segment.read_slot(0)[HIST_BASE:HIST_BASE + len(LATENCY_BUCKETS) + 1]
    assert histogram == [1 if index == bucket else 0 for index in range(14)]


def test_backend_word_is_the_absolute_index_in_the_segment(segment: StatsSegment) -> None:
    writer = segment.writer(2)
    assert writer.backend_word(3, B_FAILURES) == 278 + 44 + 3 * BACKEND_WORDS + B_FAILURES
    segment.words[writer.backend_word(3, B_FAILURES)] += 1
    assert segment.read_slot(2)[44 + 18 + B_FAILURES] == 1


def test_refused_counts_a_route_reason_word_of_the_own_slot(segment: StatsSegment) -> None:
    writer = segment.writer(1)
    writer.refused(2, 3)
    writer.refused(2, 3)
    writer.refused(-1, 0)  # no route: not counted
    writer.refused(0, REFUSAL_WORDS)  # beyond the room: not counted
    values = segment.read_slot(1)
    assert values[LAYOUT.refused_base + 2 * REFUSAL_WORDS + 3] == 2
    assert sum(values[LAYOUT.refused_base:]) == 2
    assert not any(LAYOUT.is_gauge(word) for word in range(LAYOUT.refused_base, LAYOUT.slot_words))


def test_add_counts_a_fixed_word_of_the_own_slot(segment: StatsSegment) -> None:
    writer = segment.writer(1)
    writer.add(CLIENTS_TOTAL)
    writer.add(CLIENTS_TOTAL, 4)
    writer.add(ACTIVE_CLIENTS, -2)
    values = segment.read_slot(1)
    assert values[CLIENTS_TOTAL] == 5
    assert values[ACTIVE_CLIENTS] == -2
    assert segment.read_slot(0)[CLIENTS_TOTAL] == 0


# -- StatsIndex --------------------------------------------------------------------


def test_index_numbers_names_in_order_of_first_sight() -> None:
    index = StatsIndex()
    index.assign(["api", "web"], ["api/a1", "api/a2", "web/w1"], LAYOUT)
    assert index.routes == {"api": 0, "web": 1}
    assert index.backends == {"api/a1": 0, "api/a2": 1, "web/w1": 2}


def test_index_keeps_the_numbers_of_known_names_in_any_order() -> None:
    index = StatsIndex()
    index.assign(["api", "web"], ["api/a1", "web/w1"], LAYOUT)
    index.assign(["web", "api"], ["web/w1", "api/a1"], LAYOUT)
    assert index.routes == {"api": 0, "web": 1}
    assert index.backends == {"api/a1": 0, "web/w1": 1}


def test_index_never_gives_a_removed_names_number_to_another() -> None:
    index = StatsIndex()
    index.assign(["api", "web"], ["api/a1", "api/a2"], LAYOUT)
    # a2 and web are removed, a3 and admin arrive.
    index.assign(["api", "admin"], ["api/a1", "api/a3"], LAYOUT)
    assert index.routes == {"api": 0, "web": 1, "admin": 2}
    assert index.backends == {"api/a1": 0, "api/a2": 1, "api/a3": 2}
    # A removed name that comes back finds its own counters again.
    index.assign(["web"], ["api/a2"], LAYOUT)
    assert index.routes["web"] == 1
    assert index.backends["api/a2"] == 1


def test_backend_key_joins_upstream_and_id() -> None:
    assert StatsIndex.backend_key("api", "a1") == "api/a1"


def test_index_refuses_names_past_the_segment_size() -> None:
    index = StatsIndex()
    index.assign(["r0", "r1", "r2"], ["u/b%d" % i for i in range(5)], LAYOUT)
    with pytest.raises(ValueError, match="room for 3 routes and 5 backends"):
        StatsIndex().assign(["r0", "r1", "r2", "r3"], [], LAYOUT)
    with pytest.raises(ValueError, match="room for 3 routes and 5 backends"):
        index.assign([], ["u/b5"], LAYOUT)


def test_index_without_a_layout_has_no_limit() -> None:
    index = StatsIndex()
    index.assign(["r%d" % i for i in range(100)], ["u/b%d" % i for i in range(300)], None)
    assert len(index.routes) == 100
    assert index.backends["u/b299"] == 299


def test_a_refused_assign_leaves_the_index_as_it_was() -> None:
    # Otherwise one reload too big for the segment would make a single-process
    # proxy (which assigns in place) refuse every reload after it.
    layout = Layout(slots=1, routes=2, backends=2)
    index = StatsIndex()
    index.assign(["r"], ["u/a"], layout)
    with pytest.raises(ValueError):
        index.assign(["r"], ["u/a", "u/b", "u/c"], layout)
    assert index.backends == {"u/a": 0}
    index.assign(["r"], ["u/a", "u/b"], layout)
    assert index.backends == {"u/a": 0, "u/b": 1}


def test_index_mapping_round_trip_makes_an_independent_copy() -> None:
    index = StatsIndex()
    index.assign(["api"], ["api/a1", "api/a2"], LAYOUT)
    data = index.to_mapping()
    assert data == {"routes": {"api": 0}, "backends": {"api/a1": 0, "api/a2": 1}, "upstreams": {}}
    copy = StatsIndex.from_mapping(data)
    assert copy == index
    copy.assign(["web"], ["web/w1"], LAYOUT)
    assert index.routes == {"api": 0}
    assert index.backends == {"api/a1": 0, "api/a2": 1}
    assert data["backends"] == {"api/a1": 0, "api/a2": 1}


def test_index_from_an_empty_mapping_is_empty() -> None:
    assert StatsIndex.from_mapping({}) == StatsIndex()
