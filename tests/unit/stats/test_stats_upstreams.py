"""Per-upstream words of the segment: queue length and panic per worker, queue counters."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from prometheus_client.parser import text_string_to_metric_families

from speedproxy.config import parse_config
from speedproxy.stats.prometheus import SegmentCollector, render_metrics
from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import (
    BACKEND_WORDS,
    U_PANIC,
    U_QUEUE,
    U_QUEUE_FULL,
    U_QUEUE_TIMEOUTS,
    U_QUEUED,
    UPSTREAM_WORDS,
    Layout,
    StatsIndex,
    StatsSegment,
    layout_for,
)
from speedproxy.stats.shared import SharedView

LAYOUT = Layout(slots=3, routes=2, backends=4, upstreams=2)
CONFIG = parse_config(
    """
backends:
  api: [{id: a1, host: 10.0.0.1, port: 8001}]
  web: [{id: w1, host: 10.0.0.3, port: 8003}]
routing:
  api: {path: /api, upstream: api}
  web: {path: /, upstream: web}
"""
)


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[StatsSegment]:
    segment = StatsSegment.create(str(tmp_path / "stats"), LAYOUT)
    yield segment
    segment.close()


def _index() -> StatsIndex:
    index = StatsIndex()
    index.assign_config(CONFIG, LAYOUT)
    return index


def _rows(segment: StatsSegment, index: StatsIndex) -> Dict[str, Dict[str, object]]:
    reader = StatsReader(segment)
    slots = reader.slots()
    return {row["upstream"]: row for row in reader.upstream_rows(CONFIG, index, slots, reader.totals(slots))}  # type: ignore[misc]


def test_upstream_words_follow_the_backends() -> None:
    assert LAYOUT.upstream_base == LAYOUT.backend_base + 4 * BACKEND_WORDS
    # The cache words follow the upstream groups.
    assert LAYOUT.cache_base == LAYOUT.upstream_base + 2 * UPSTREAM_WORDS
    assert Layout(slots=1, routes=1, backends=1).upstreams == 0


def test_only_queue_length_and_panic_are_gauges() -> None:
    upstream_words = range(LAYOUT.upstream_base, LAYOUT.cache_base)
    gauges = [word for word in upstream_words if LAYOUT.is_gauge(word)]
    assert gauges == [
        LAYOUT.upstream_base + group * UPSTREAM_WORDS + word for group in range(2) for word in (U_QUEUE, U_PANIC)
    ]


def test_the_header_records_the_room_for_upstreams(segment: StatsSegment) -> None:
    attached = StatsSegment.attach(segment.path)
    assert attached.layout == LAYOUT
    attached.close()


def test_index_numbers_upstream_groups_and_maps_round_trip() -> None:
    index = _index()
    assert index.upstreams == {"api": 0, "web": 1}
    assert StatsIndex.from_mapping(index.to_mapping()) == index
    assert StatsIndex.from_mapping({"routes": {}, "backends": {}}).upstreams == {}


def test_groups_past_the_room_get_no_index_instead_of_a_refusal() -> None:
    index = StatsIndex()
    index.assign(["r"], ["a/b"], LAYOUT, ["a", "b", "c"])
    assert index.upstreams == {"a": 0, "b": 1}
    index.assign([], [], None, ["c"])
    assert index.upstreams["c"] == 2


def test_layout_for_has_room_for_the_groups() -> None:
    assert layout_for(1, 1, 1).upstreams == 256
    assert layout_for(1, 1, 1, upstreams=300).upstreams == 1200


def test_workers_publish_queue_and_panic_and_the_reader_sums_them(segment: StatsSegment) -> None:
    index = _index()
    api = index.upstreams["api"]
    views = [SharedView(segment, slot) for slot in range(3)]
    views[0].set_queue(api, 3)
    views[2].set_queue(api, 4)
    views[1].set_panic(api, True)
    for view, word in ((views[0], U_QUEUED), (views[0], U_QUEUED), (views[1], U_QUEUE_FULL), (views[2], U_QUEUE_TIMEOUTS)):
        view.add_upstream(api, word)
    views[0].set_queue(-1, 9)  # no index: nothing written
    rows = _rows(segment, index)
    assert rows["api"] == {
        "upstream": "api", "queue": 7, "panic": True, "queued": 2, "queue_full": 1, "queue_timeouts": 1,
    }
    assert rows["web"]["queue"] == 0 and rows["web"]["panic"] is False
    views[1].set_panic(api, False)
    assert _rows(segment, index)["api"]["panic"] is False


def test_a_retired_worker_takes_its_gauges_but_not_its_counters(segment: StatsSegment) -> None:
    index = _index()
    view = SharedView(segment, 1)
    view.set_queue(0, 5)
    view.set_panic(0, True)
    view.add_upstream(0, U_QUEUED)
    reader = StatsReader(segment)
    reader.retire(1)
    slots = reader.slots()
    (api, _) = reader.upstream_rows(CONFIG, index, slots, reader.totals(slots))
    assert (api["queue"], api["panic"], api["queued"]) == (0, False, 1)


def test_speaks_for_all_is_the_lowest_live_worker(segment: StatsSegment) -> None:
    for slot in (1, 2):
        segment.reset_slot(slot, 100 + slot, 0)
    one, two = SharedView(segment, 1), SharedView(segment, 2)
    assert one.speaks_for_all() and not two.speaks_for_all()
    segment.reset_slot(0, 100, 0)
    assert not one.speaks_for_all()
    assert SharedView(segment, 0).speaks_for_all()


def test_metrics_render_queue_and_panic_per_upstream(segment: StatsSegment) -> None:
    index = _index()
    views = [SharedView(segment, slot) for slot in range(2)]
    views[0].set_queue(index.upstreams["web"], 1)
    views[1].set_queue(index.upstreams["web"], 2)
    views[1].set_panic(index.upstreams["api"], True)
    views[0].add_upstream(index.upstreams["web"], U_QUEUED)
    state = {
        "config": CONFIG, "index": index, "workers": [{"slot": 0}, {"slot": 1}],
        "restarts": 0, "config_version": 1, "backend_up": {},
    }
    text = render_metrics(SegmentCollector(StatsReader(segment), lambda: state)).decode()
    samples: Dict[str, Dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "upstream" in sample.labels and "backend" not in sample.labels and "route" not in sample.labels:
                samples.setdefault(sample.name, {})[sample.labels["upstream"]] = sample.value
    assert samples["speedproxy_upstream_queue"] == {"api": 0.0, "web": 3.0}
    assert samples["speedproxy_upstream_panic"] == {"api": 1.0, "web": 0.0}
    assert samples["speedproxy_upstream_queued_total"] == {"api": 0.0, "web": 1.0}
    assert samples["speedproxy_upstream_queue_full_total"] == {"api": 0.0, "web": 0.0}
    assert samples["speedproxy_upstream_queue_timeouts_total"] == {"api": 0.0, "web": 0.0}


def test_the_stats_snapshot_lists_upstreams(segment: StatsSegment) -> None:
    index = _index()
    SharedView(segment, 0).set_queue(index.upstreams["api"], 2)
    snapshot = StatsReader(segment).snapshot(CONFIG, index)
    upstreams: List[Dict[str, object]] = snapshot["upstreams"]
    assert [row["upstream"] for row in upstreams] == ["api", "web"]
    assert upstreams[0]["queue"] == 2
