"""``ip_hash``: consistent hashing ring."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from typing import Dict, List, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import speedproxy
from speedproxy.balancers.ip_hash import IpHashBalancer, ring_hash, vnode_count
from speedproxy.config.model import BackendConfig
from speedproxy.upstreams import Backend

IPS = [f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(1, 2001)]

keys_strategy = st.lists(
    st.one_of(
        st.ip_addresses().map(str),
        st.text(min_size=0, max_size=20),
    ),
    min_size=1,
    max_size=60,
    unique=True,
)


def _backends(count: int, weight: int = 100, prefix: str = "backend") -> List[Backend]:
    return [Backend(BackendConfig(id=f"{prefix}{i}", weight=weight)) for i in range(count)]


def _ring(members: Sequence[Backend]) -> IpHashBalancer:
    balancer = IpHashBalancer()
    balancer.update(members)
    return balancer


def _mapping(
    balancer: IpHashBalancer, candidates: Sequence[Backend], keys: Sequence[str]
) -> Dict[str, str]:
    return {key: balancer.pick(candidates, key).id for key in keys}


def test_hash_is_stable_across_processes() -> None:
    """Never Python's salted hash(): another interpreter agrees."""
    code = (
        "from speedproxy.balancers.ip_hash import ring_hash;"
        "print(ring_hash('backend1#0'), ring_hash('203.0.113.9'))"
    )
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(speedproxy.__file__)))
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=package_root
    ).stdout.split()
    assert [int(v) for v in output] == [ring_hash("backend1#0"), ring_hash("203.0.113.9")]


def test_known_hash_value() -> None:
    """Pin the hash: changing it would remap every client of every deployment."""
    assert ring_hash("203.0.113.9") == 0x5E9E93ACAB482F42
    assert ring_hash("backend1#0") == 0x4A58672EC60458F5


def test_vnodes_scale_with_weight() -> None:
    assert vnode_count(100, 100) == 160
    assert vnode_count(200, 100) == 320
    assert vnode_count(50, 100) == 80
    assert vnode_count(1, 100) == 2
    assert vnode_count(0, 100) == 0
    # Small nginx-style weights: the heaviest backend still gets 160 nodes.
    balancer = _ring([Backend(BackendConfig(id="a", weight=5)), Backend(BackendConfig(id="b", weight=1))])
    counts = Counter(balancer._owner_ids)
    assert counts == {"a": 160, "b": 32}


def test_same_key_same_backend() -> None:
    members = _backends(5)
    balancer = _ring(members)
    first = _mapping(balancer, members, IPS[:300])
    assert _mapping(balancer, members, IPS[:300]) == first
    # A fresh balancer with the membership in another order agrees.
    assert _mapping(_ring(list(reversed(members))), members, IPS[:300]) == first


@settings(max_examples=40, deadline=None)
@given(count=st.integers(2, 8), keys=keys_strategy, data=st.data())
def test_removal_remaps_only_the_removed_backends_keys(
    count: int, keys: List[str], data: st.DataObject
) -> None:
    weights = data.draw(st.lists(st.integers(100, 300), min_size=count, max_size=count))
    members = [Backend(BackendConfig(id=f"node-{i}", weight=w)) for i, w in enumerate(weights)]
    removed = data.draw(st.sampled_from(members))
    before = _mapping(_ring(members), members, keys)
    remaining = [b for b in members if b is not removed]
    after = _mapping(_ring(remaining), remaining, keys)
    for key in keys:
        if before[key] != removed.id:
            assert after[key] == before[key]
        else:
            assert after[key] != removed.id


@settings(max_examples=40, deadline=None)
@given(count=st.integers(2, 8), keys=keys_strategy, data=st.data())
def test_unavailable_backend_only_remaps_its_own_keys(
    count: int, keys: List[str], data: st.DataObject
) -> None:
    members = _backends(count)
    balancer = _ring(members)
    before = _mapping(balancer, members, keys)
    down = data.draw(st.sets(st.sampled_from(members), min_size=1, max_size=count - 1))
    candidates = [b for b in members if b not in down]
    during = _mapping(balancer, candidates, keys)
    down_ids = {b.id for b in down}
    for key in keys:
        if before[key] in down_ids:
            assert during[key] not in down_ids
        else:
            assert during[key] == before[key]
    # Once back, every key returns to its original backend.
    assert _mapping(balancer, members, keys) == before


@given(count=st.integers(2, 8), keys=keys_strategy)
@settings(max_examples=30, deadline=None)
def test_addition_moves_keys_only_to_the_newcomer(count: int, keys: List[str]) -> None:
    members = _backends(count)
    before = _mapping(_ring(members), members, keys)
    grown = members + [Backend(BackendConfig(id="newcomer"))]
    after = _mapping(_ring(grown), grown, keys)
    for key in keys:
        assert after[key] in (before[key], "newcomer")


@pytest.mark.parametrize("count", range(2, 9))
def test_addition_moves_about_one_in_n_plus_one(count: int) -> None:
    members = _backends(count)
    before = _mapping(_ring(members), members, IPS)
    grown = members + [Backend(BackendConfig(id=f"backend{count}"))]
    after = _mapping(_ring(grown), grown, IPS)
    moved = sum(before[key] != after[key] for key in IPS) / len(IPS)
    expected = 1 / (count + 1)
    assert 0.5 * expected <= moved <= 1.6 * expected


@pytest.mark.parametrize("count", range(2, 9))
def test_removal_moves_about_one_in_n(count: int) -> None:
    members = _backends(count)
    before = _mapping(_ring(members), members, IPS)
    remaining = members[1:]
    after = _mapping(_ring(remaining), remaining, IPS)
    moved = sum(before[key] != after[key] for key in IPS) / len(IPS)
    assert 0.5 / count <= moved <= 1.6 / count


def test_distribution_of_1000_ips_over_4_backends() -> None:
    members = _backends(4)
    balancer = _ring(members)
    counts = Counter(balancer.pick(members, ip).id for ip in IPS[:1000])
    assert set(counts) == {b.id for b in members}
    assert all(150 <= n <= 350 for n in counts.values()), counts


def test_weight_shifts_share() -> None:
    members = [Backend(BackendConfig(id="heavy", weight=300)), Backend(BackendConfig(id="light", weight=100))]
    balancer = _ring(members)
    counts = Counter(balancer.pick(members, ip).id for ip in IPS)
    assert 0.65 <= counts["heavy"] / len(IPS) <= 0.85, counts


def test_unknown_candidates_still_answer_stably() -> None:
    balancer = _ring(_backends(3))
    strangers = _backends(2, prefix="stranger")
    first = balancer.pick(strangers, "198.51.100.7")
    assert first in strangers
    assert balancer.pick(strangers, "198.51.100.7") is first
