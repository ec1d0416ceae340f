"""``performance``: EWMA latency, reported load, connections, weight, slow start."""

from __future__ import annotations

from collections import Counter
from typing import List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from speedproxy.balancers.performance import PerformanceBalancer, RuntimeClock
from speedproxy.config.model import BackendConfig
from speedproxy.upstreams import Backend


def _backends(count: int, weight: int = 100) -> List[Backend]:
    return [Backend(BackendConfig(id=f"b{i}", weight=weight)) for i in range(count)]


def _balancer(members: List[Backend], clock: Optional[Clock] = None) -> PerformanceBalancer:
    balancer = PerformanceBalancer(clock=clock)
    balancer.update(members)
    return balancer


def _shares(balancer: PerformanceBalancer, members: List[Backend], picks: int = 1000) -> Counter:
    counts = Counter(balancer.pick(members, "k").id for _ in range(picks))
    return Counter({key: value / picks for key, value in counts.items()})


def test_default_clock_needs_no_reactor() -> None:
    balancer = PerformanceBalancer()
    assert isinstance(balancer.clock, RuntimeClock)
    assert balancer.clock.seconds() > 0


def test_fast_backend_gets_most_picks() -> None:
    slow, fast = _backends(2)
    slow.ewma_response_time = 0.200
    fast.ewma_response_time = 0.005
    shares = _shares(_balancer([slow, fast]), [slow, fast])
    assert shares["b1"] > 0.9
    assert shares["b0"] > 0  # the slow one is still probed now and then


def test_fast_backend_wins_even_with_some_connections() -> None:
    slow, fast = _backends(2)
    slow.ewma_response_time = 0.200
    fast.ewma_response_time = 0.005
    fast.active_connections = 3
    shares = _shares(_balancer([slow, fast]), [slow, fast])
    assert shares["b1"] > 0.8


def test_equal_backends_share_equally_and_smoothly() -> None:
    members = _backends(3)
    for backend in members:
        backend.ewma_response_time = 0.020
    balancer = _balancer(members)
    assert [balancer.pick(members, "k").id for _ in range(6)] == ["b0", "b1", "b2"] * 2


def test_weight_still_counts() -> None:
    members = [Backend(BackendConfig(id="heavy", weight=300)), Backend(BackendConfig(id="light", weight=100))]
    shares = _shares(_balancer(members), members)
    assert shares["heavy"] == pytest.approx(0.75, abs=0.01)


def test_unmeasured_backend_gets_the_average() -> None:
    a, b, new = _backends(3)
    a.ewma_response_time = 0.010
    b.ewma_response_time = 0.030
    weights = _balancer([a, b, new]).dynamic_weights([a, b, new])
    # average EWMA 20 ms: reference 11 ms over 21 ms.
    assert weights["b2"] == pytest.approx(100 * 0.011 / 0.021)
    assert weights["b0"] > weights["b2"] > weights["b1"]


def test_nobody_measured_means_weights_only() -> None:
    members = _backends(2)
    assert _balancer(members).dynamic_weights(members) == {"b0": 100.0, "b1": 100.0}


def test_reported_load_lowers_share() -> None:
    idle, busy = _backends(2)
    busy.reported_load = 0.8
    shares = _shares(_balancer([idle, busy]), [idle, busy])
    # 1 - 0.5 * 0.8 = 0.6 against 1.0
    assert shares["b1"] == pytest.approx(0.6 / 1.6, abs=0.01)


@given(load=st.floats(-10, 10, allow_nan=False))
def test_reported_load_is_clamped(load: float) -> None:
    backend = _backends(1)[0]
    backend.reported_load = load
    weight = _balancer([backend]).dynamic_weights([backend])["b0"]
    assert 50.0 <= weight <= 100.0


def test_connections_lower_share() -> None:
    idle, busy = _backends(2)
    busy.active_connections = 3
    weights = _balancer([idle, busy]).dynamic_weights([idle, busy])
    assert weights == {"b0": 100.0, "b1": 25.0}


def test_slow_start_ramps_up() -> None:
    clock = Clock()
    clock.advance(1000)
    old, new = _backends(2)
    new.up_since = clock.seconds()
    balancer = _balancer([old, new], clock)
    shares = []
    for _ in range(4):
        shares.append(_shares(balancer, [old, new], 400)["b1"])
        clock.advance(10)
    # 10 %, 33 %, 67 % then 100 % of its weight.
    assert shares[0] == pytest.approx(0.1 / 1.1, abs=0.02)
    assert shares[1] == pytest.approx(0.333 / 1.333, abs=0.02)
    assert shares[2] == pytest.approx(0.667 / 1.667, abs=0.02)
    assert shares[3] == pytest.approx(0.5, abs=0.01)
    assert shares == sorted(shares)


def test_slow_start_unknown_or_disabled() -> None:
    clock = Clock()
    clock.advance(1000)
    old, new = _backends(2)
    new.up_since = 0.0  # unknown: no ramp
    assert _balancer([old, new], clock).dynamic_weights([old, new])["b1"] == 100.0
    new.up_since = clock.seconds()
    no_ramp = PerformanceBalancer(clock=clock, slow_start=0)
    assert no_ramp.dynamic_weights([old, new])["b1"] == 100.0
    # up_since in the future (clock mismatch): no ramp rather than stuck at 10 %.
    new.up_since = clock.seconds() + 3600
    assert _balancer([old, new], clock).dynamic_weights([old, new])["b1"] == 100.0


def test_traffic_shifts_smoothly_when_latency_changes() -> None:
    a, b = _backends(2)
    a.ewma_response_time = b.ewma_response_time = 0.010
    balancer = _balancer([a, b])
    for _ in range(10):
        balancer.pick([a, b], "k")
    b.ewma_response_time = 0.100
    picks = [balancer.pick([a, b], "k").id for _ in range(100)]
    # b is not starved in a burst nor flooded: about 1/ (1 + 101/11) of picks.
    assert 5 <= picks.count("b1") <= 15
    assert "b1" in picks[-50:]
