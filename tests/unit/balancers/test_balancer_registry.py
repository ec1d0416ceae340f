"""Every configured balancer name is registered and honours IBalancer."""

from __future__ import annotations

from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from speedproxy.balancers import BALANCERS, IBalancer, PerformanceBalancer, make_balancer
from speedproxy.config.model import BALANCER_NAMES, BackendConfig
from speedproxy.upstreams import Backend


def _backends(weights: List[int]) -> List[Backend]:
    return [Backend(BackendConfig(id=f"b{i}", weight=w)) for i, w in enumerate(weights)]


def test_every_config_name_is_registered() -> None:
    assert set(BALANCERS) == set(BALANCER_NAMES)


@pytest.mark.parametrize("name", BALANCER_NAMES)
def test_provides_ibalancer(name: str) -> None:
    balancer = make_balancer(name)
    assert verifyObject(IBalancer, balancer)


def test_unknown_name() -> None:
    with pytest.raises(KeyError):
        make_balancer("fastest_please")


def test_clock_is_passed_to_clocked_balancers_only() -> None:
    clock = Clock()
    balancer = make_balancer("performance", clock=clock)
    assert isinstance(balancer, PerformanceBalancer)
    assert balancer.clock is clock
    assert verifyObject(IBalancer, make_balancer("weight", clock=clock))


# Not @pytest.mark.parametrize with @given: pytest-twisted rewraps the shared
# hypothesis inner test once per parametrization and breaks the second one.
@settings(max_examples=150)
@given(
    name=st.sampled_from(BALANCER_NAMES),
    weights=st.lists(st.integers(1, 500), min_size=1, max_size=8),
    data=st.data(),
)
def test_pick_returns_a_candidate(name: str, weights: List[int], data: st.DataObject) -> None:
    """Whatever the subset of available backends, the pick is one of them."""
    members = _backends(weights)
    balancer = make_balancer(name)
    balancer.update(members)
    for round_ in range(5):
        mask = data.draw(st.lists(st.booleans(), min_size=len(members), max_size=len(members)))
        candidates = [b for b, keep in zip(members, mask) if keep] or members[:1]
        for backend in members:
            backend.active_connections = data.draw(st.integers(0, 3))
        choice = balancer.pick(candidates, f"10.0.0.{round_}")
        assert any(choice is c for c in candidates)


@pytest.mark.parametrize("name", BALANCER_NAMES)
def test_pick_without_update(name: str) -> None:
    """A balancer never told its membership still answers from the candidates."""
    members = _backends([100, 100])
    choice = make_balancer(name).pick(members, "192.0.2.1")
    assert any(choice is c for c in members)
