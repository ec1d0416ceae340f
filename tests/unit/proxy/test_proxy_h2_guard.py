"""The token buckets that tell an HTTP/2 frame flood from normal use."""

from __future__ import annotations

from speedproxy.proxy.h2_guard import RESET_LIMIT, FloodGuard, guards


def test_a_burst_up_to_the_limit_passes_then_trips() -> None:
    guard = FloodGuard(10, 10.0)
    assert all(guard.hit(0.0) for _ in range(10))
    assert not guard.hit(0.0)


def test_tokens_come_back_with_time() -> None:
    guard = FloodGuard(10, 10.0)
    for _ in range(10):
        guard.hit(0.0)
    assert guard.hit(1.0)  # one token a second
    assert not guard.hit(1.0)
    assert all(guard.hit(20.0) for _ in range(10))  # full again, never more than the limit
    assert not guard.hit(20.0)


def test_steady_use_below_the_rate_never_trips() -> None:
    guard = FloodGuard(10, 10.0)
    assert all(guard.hit(second * 1.1) for second in range(1000))


def test_guards_are_fresh_per_connection() -> None:
    resets, settings, pings = guards(100.0)
    assert resets.limit == RESET_LIMIT[0] and resets.last == 100.0
    assert resets is not settings is not pings
