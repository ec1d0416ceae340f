"""``least_connections_weight``."""

from __future__ import annotations

from collections import Counter
from typing import List

from hypothesis import given
from hypothesis import strategies as st

from speedproxy.balancers.least_connections_weight import LeastConnectionsWeightBalancer
from speedproxy.config.model import BackendConfig
from speedproxy.upstreams import Backend


def _backends(weights: List[int]) -> List[Backend]:
    return [Backend(BackendConfig(id=f"b{i}", weight=w)) for i, w in enumerate(weights)]


def _balancer(members: List[Backend]) -> LeastConnectionsWeightBalancer:
    balancer = LeastConnectionsWeightBalancer()
    balancer.update(members)
    return balancer


@given(weights=st.lists(st.integers(1, 10), min_size=1, max_size=6), cycles=st.integers(1, 3))
def test_idle_backends_follow_weights_exactly(weights: List[int], cycles: int) -> None:
    """All at zero connections: smooth weighted round robin, exact ratio."""
    members = _backends(weights)
    balancer = _balancer(members)
    counts = Counter(balancer.pick(members, "k").id for _ in range(cycles * sum(weights)))
    assert counts == {b.id: cycles * b.weight for b in members}


def test_idle_picks_are_spread() -> None:
    members = _backends([5, 1, 1])
    balancer = _balancer(members)
    assert [balancer.pick(members, "k").id for _ in range(7)] == [
        "b0", "b0", "b1", "b0", "b2", "b0", "b0",
    ]


@given(
    weights=st.lists(st.integers(1, 500), min_size=1, max_size=8),
    loads=st.lists(st.integers(0, 100), min_size=8, max_size=8),
)
def test_picks_the_lowest_connections_per_weight(weights: List[int], loads: List[int]) -> None:
    members = _backends(weights)
    for backend, load in zip(members, loads):
        backend.active_connections = load
    choice = _balancer(members).pick(members, "k")
    best = min(b.active_connections / b.weight for b in members)
    assert choice.active_connections / choice.weight == best


@given(weights=st.lists(st.integers(1, 10), min_size=2, max_size=5))
def test_held_connections_follow_weights(weights: List[int]) -> None:
    """Connections that stay open end up in the ratio of the weights."""
    members = _backends(weights)
    balancer = _balancer(members)
    rounds = 7
    for _ in range(rounds * sum(weights)):
        balancer.pick(members, "k").active_connections += 1
    assert [b.active_connections for b in members] == [rounds * w for w in weights]


def test_loaded_backend_gets_less() -> None:
    members = _backends([100, 100])
    members[0].active_connections = 4
    balancer = _balancer(members)
    picks = []
    for _ in range(4):
        chosen = balancer.pick(members, "k")
        chosen.active_connections += 1
        picks.append(chosen.id)
    assert picks == ["b1"] * 4


def test_subset_of_candidates() -> None:
    members = _backends([5, 1, 1])
    balancer = _balancer(members)
    candidates = [members[1], members[2]]
    counts = Counter(balancer.pick(candidates, "k").id for _ in range(10))
    assert counts == {"b1": 5, "b2": 5}
