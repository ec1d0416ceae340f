"""Tests for :mod:`speedproxy.cache.memory`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from speedproxy.cache.memory import MemoryTier, UseCounter


def test_bounded_by_bytes_evicting_the_oldest_one_time_objects() -> None:
    tier: MemoryTier[str] = MemoryTier(100)
    for index in range(10):
        assert tier.put(index, "v%d" % index, 20)
    assert tier.bytes <= 100
    assert len(tier) == 5
    assert tier.evictions == 5
    assert [tier.peek(index) for index in range(5)] == [None] * 5
    assert tier.peek(9) == "v9"


def test_objects_read_again_survive_a_scan() -> None:
    tier: MemoryTier[str] = MemoryTier(100)
    tier.put("hot", "h", 20)
    assert tier.get("hot") == "h"  # a second use: protected
    for index in range(50):  # a scan of one-time objects
        tier.put(index, "x", 20)
    assert tier.peek("hot") == "h"


def test_too_large_is_refused_and_replacing_counts_once() -> None:
    tier: MemoryTier[str] = MemoryTier(100)
    assert not tier.put("big", "b", 101)
    tier.put("k", "a", 30)
    tier.put("k", "b", 40)
    assert (tier.bytes, len(tier), tier.peek("k")) == (40, 1, "b")
    assert tier.remove("k") == "b" and tier.bytes == 0


def test_remove_where_clear_and_resize() -> None:
    tier: MemoryTier[str] = MemoryTier(1000)
    for index in range(10):
        tier.put(("k", index), "v", 10)
    assert tier.remove_where(lambda key: key[1] % 2 == 0) == 5
    assert len(tier) == 5
    tier.resize(20)
    assert tier.bytes <= 20
    left = len(tier)
    assert tier.clear() == left
    assert tier.bytes == 0 and len(tier) == 0


@given(st.lists(st.tuples(st.sampled_from(["put", "get", "remove"]), st.integers(0, 20), st.integers(1, 60)), max_size=200))
def test_byte_count_is_exact_and_bounded(operations) -> None:
    tier: MemoryTier[int] = MemoryTier(150)
    sizes = {}
    for operation, key, size in operations:
        if operation == "put":
            if tier.put(key, key, size):
                sizes[key] = size
            else:
                sizes.pop(key, None)
        elif operation == "get":
            tier.get(key)
        else:
            tier.remove(key)
            sizes.pop(key, None)
        present = {k: s for k, s in sizes.items() if k in tier}
        assert tier.bytes == sum(present.values()) <= 150
        assert len(tier) == len(present)


def test_use_counter_counts_and_ages() -> None:
    counter = UseCounter(capacity=4)
    assert [counter.add("a") for _ in range(3)] == [1, 2, 3]
    for key in "bcde":
        counter.add(key)
    # Full: every count halved, ones forgotten.
    assert counter.add("a") == 2
    assert counter.add("b") == 1
