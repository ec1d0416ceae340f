"""Tests for :mod:`speedproxy.admin.sampler`."""

from __future__ import annotations

from typing import Any, Dict

from twisted.internet.task import Clock

from speedproxy.admin.sampler import StatsSampler, delta, percentile, sample_of


def snapshot(requests: int, errors: int = 0, fast: int = 0) -> Dict[str, Any]:
    return {
        "totals": {
            "requests": requests,
            "status": {"2xx": requests - errors, "5xx": errors},
            "avg_latency_ms": 10.0,
        },
        "latency_histogram": {"0.01": fast, "0.1": requests, "+Inf": requests},
    }


def test_percentile_interpolates_in_buckets() -> None:
    histogram = [("0.01", 50), ("0.1", 100), ("+Inf", 100)]
    assert percentile(histogram, 0.5) == 10.0
    assert percentile(histogram, 0.75) == 55.0
    assert percentile([("0.01", 0), ("+Inf", 0)], 0.5) is None
    assert percentile([("0.01", 0), ("+Inf", 4)], 0.5) == 10.0


def test_delta_rates() -> None:
    older = sample_of(10.0, snapshot(100, 1, 50))
    newer = sample_of(20.0, snapshot(300, 21, 150))
    rates = delta(newer, older)
    assert rates["requests"] == 200
    assert rates["requests_per_second"] == 20.0
    assert rates["error_rate"] == 0.1
    assert rates["p50_ms"] == 10.0
    assert delta(newer, None)["requests"] == 300
    assert delta(newer, None)["requests_per_second"] is None


def test_sampler_windows() -> None:
    clock = Clock()
    state = {"n": 0}
    sampler = StatsSampler(lambda: snapshot(state["n"]), clock)
    sampler.start()
    for _ in range(70):
        state["n"] += 10
        clock.advance(1.0)
    windows = sampler.windows()
    assert windows["last_10s"]["requests_per_second"] == 10.0
    assert windows["last_60s"]["requests"] == 600
    assert windows["since_start"]["requests"] == 700
    # Not five minutes of samples yet: the oldest one is used.
    assert windows["last_300s"]["seconds"] == 70.0
    sampler.stop()
    assert not clock.getDelayedCalls()


def test_sampler_survives_a_failing_snapshot() -> None:
    clock = Clock()

    def broken() -> Dict[str, Any]:
        raise OSError("segment closed")

    sampler = StatsSampler(broken, clock)
    sampler.start()
    clock.advance(3.0)
    assert sampler.windows() == {}
    sampler.stop()
