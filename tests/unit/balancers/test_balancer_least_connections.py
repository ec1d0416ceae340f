"""``least_connections``."""

from __future__ import annotations

from collections import Counter
from typing import List

from hypothesis import given
from hypothesis import strategies as st

from speedproxy.balancers.least_connections import LeastConnectionsBalancer
from speedproxy.config.model import BackendConfig
from speedproxy.upstreams import Backend


def _backends(count: int) -> List[Backend]:
    return [Backend(BackendConfig(id=f"b{i}")) for i in range(count)]


@given(loads=st.lists(st.integers(0, 50), min_size=1, max_size=10))
def test_picks_a_least_loaded_backend(loads: List[int]) -> None:
    members = _backends(len(loads))
    for backend, load in zip(members, loads):
        backend.active_connections = load
    balancer = LeastConnectionsBalancer()
    balancer.update(members)
    for _ in range(len(loads) + 1):
        assert balancer.pick(members, "k").active_connections == min(loads)


def test_ties_rotate() -> None:
    members = _backends(3)
    balancer = LeastConnectionsBalancer()
    balancer.update(members)
    picks = [balancer.pick(members, "k").id for _ in range(9)]
    assert picks == ["b0", "b1", "b2"] * 3


def test_ties_rotate_among_the_least_loaded_only() -> None:
    members = _backends(4)
    members[1].active_connections = 2
    for backend in (members[0], members[2], members[3]):
        backend.active_connections = 1
    balancer = LeastConnectionsBalancer()
    balancer.update(members)
    counts = Counter(balancer.pick(members, "k").id for _ in range(30))
    assert counts == {"b0": 10, "b2": 10, "b3": 10}


def test_connections_even_out_under_load() -> None:
    """Holding every picked connection open keeps the backends level."""
    members = _backends(4)
    members[0].active_connections = 5
    balancer = LeastConnectionsBalancer()
    balancer.update(members)
    for _ in range(95):
        balancer.pick(members, "k").active_connections += 1
    assert [b.active_connections for b in members] == [25, 25, 25, 25]


def test_subset_of_candidates() -> None:
    members = _backends(3)
    members[1].active_connections = 0
    members[0].active_connections = 3
    members[2].active_connections = 1
    balancer = LeastConnectionsBalancer()
    balancer.update(members)
    assert balancer.pick([members[0], members[2]], "k") is members[2]
