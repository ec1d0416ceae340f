"""Tests for :mod:`speedproxy.edge.metrics` and :mod:`speedproxy.edge.refusals`."""

from __future__ import annotations

import pytest

from speedproxy.config import parse_config
from speedproxy.edge.metrics import refused_counts, refused_metrics
from speedproxy.edge.refusals import count_refusal, reason_index, refusal_counter
from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import REFUSAL_REASONS, StatsIndex, StatsSegment, layout_for

CONFIG = parse_config("routing: {a: {path: /a/, upstream: default}, b: {path: /, upstream: default}}")


class Core:
    def __init__(self, segment: StatsSegment, slot: int, index: StatsIndex) -> None:
        self.stats = segment.writer(slot)
        self.stats_index = index


def test_refusals_are_summed_over_workers_and_exported_per_route_and_reason(tmp_path) -> None:
    segment = StatsSegment.create(str(tmp_path / "stats"), layout_for(2, 2, 1))
    index = StatsIndex()
    index.assign_config(CONFIG, segment.layout)
    try:
        first, second = Core(segment, 0, index), Core(segment, 1, index)
        count_refusal(first, "a", "ip")
        count_refusal(second, "a", "ip")
        refusal_counter(second, "b")("rate_limit")
        count_refusal(first, "gone", "cors")  # a route without a slot: not counted, no error
        reader = StatsReader(segment)
        total = reader.totals()
        counts = refused_counts(reader, CONFIG, index, total)
        assert counts["a"]["ip"] == 2 and counts["b"]["rate_limit"] == 1
        assert sum(counts["a"].values()) + sum(counts["b"].values()) == 3
        samples = {
            (sample.labels["route"], sample.labels["reason"]): sample.value
            for family in refused_metrics(reader, CONFIG, index, total)
            for sample in family.samples
        }
        assert samples[("a", "ip")] == 2.0 and samples[("b", "signature")] == 0.0
        assert {reason for _, reason in samples} == set(REFUSAL_REASONS)
        family = next(iter(refused_metrics(reader, CONFIG, index, total)))
        assert family.name == "speedproxy_refused" and family.type == "counter"  # _total when exposed
    finally:
        segment.close()


def test_an_unknown_reason_is_a_programming_error_said_at_once() -> None:
    with pytest.raises(KeyError, match="REFUSAL_REASONS"):
        reason_index("bandwidth")
    assert reason_index("session") == REFUSAL_REASONS.index("session")


def test_stats_shows_the_refusals_of_routes_that_refused(tmp_path) -> None:
    segment = StatsSegment.create(str(tmp_path / "stats"), layout_for(1, 2, 1))
    index = StatsIndex()
    index.assign_config(CONFIG, segment.layout)
    try:
        count_refusal(Core(segment, 0, index), "a", "signature")
        rows = {row["route"]: row for row in StatsReader(segment).snapshot(CONFIG, index)["routes"]}
        assert rows["a"]["refused"]["signature"] == 1
        assert "refused" not in rows["b"]
    finally:
        segment.close()
