"""Decaying popularity, and the memory tier keeping what is hot."""

from __future__ import annotations

from twisted.internet.task import Clock

from speedproxy.cache.memory import MemoryTier
from speedproxy.hls.heat import Heat


def test_scores_decay_with_a_half_life_and_add_up() -> None:
    clock = Clock()
    heat = Heat(clock, half_life=10.0)
    assert heat.score(b"k") == 0.0
    assert heat.touch(b"k") == 1.0
    assert heat.touch(b"k") == 2.0
    clock.advance(10.0)
    assert heat.score(b"k") == 1.0
    assert heat.touch(b"k") == 2.0


def test_it_stays_bounded_keeping_the_hottest() -> None:
    clock = Clock()
    heat = Heat(clock, capacity=10)
    for number in range(10):
        for _ in range(number + 1):
            heat.touch(number)
    heat.touch("new")
    assert len(heat) <= 6 and heat.score(9) > 0 and heat.score(0) == 0.0


def test_the_memory_tier_evicts_the_coldest_of_its_oldest_objects() -> None:
    clock = Clock()
    heat = Heat(clock)
    tier: MemoryTier = MemoryTier(300)
    tier.heat = heat.score
    for name in (b"watched", b"prefetched", b"other"):
        tier.put(name, name, 100)
    for _ in range(5):
        heat.touch(b"watched")
    heat.touch(b"other")
    tier.put(b"new", b"new", 100)  # one must go: the prefetched segment nobody asked for
    assert b"prefetched" not in tier and b"watched" in tier and b"other" in tier
    tier.put(b"newer", b"newer", 100)  # then the least popular left of the oldest
    assert b"new" not in tier and b"watched" in tier and b"other" in tier
    plain: MemoryTier = MemoryTier(300)  # without heat: least recently used, as before
    for name in (b"a", b"b", b"c", b"d"):
        plain.put(name, name, 100)
    assert b"a" not in plain
