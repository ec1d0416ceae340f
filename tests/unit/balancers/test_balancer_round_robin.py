"""``round_robin``."""

from __future__ import annotations

from collections import Counter

from speedproxy.balancers.round_robin import RoundRobinBalancer
from speedproxy.config.model import BackendConfig
from speedproxy.upstreams import Backend


def test_spreads_evenly_ignoring_weight() -> None:
    members = [Backend(BackendConfig(id=name, weight=w)) for name, w in (("a", 5), ("b", 1), ("c", 1))]
    balancer = RoundRobinBalancer()
    balancer.update(members)
    picks = [balancer.pick(members, "k").id for _ in range(300)]
    assert picks[:6] == ["a", "b", "c", "a", "b", "c"]
    assert Counter(picks) == {"a": 100, "b": 100, "c": 100}


def test_subset_of_candidates() -> None:
    members = [Backend(BackendConfig(id=name)) for name in "abc"]
    balancer = RoundRobinBalancer()
    balancer.update(members)
    candidates = [members[0], members[2]]
    assert Counter(balancer.pick(candidates, "k").id for _ in range(10)) == {"a": 5, "c": 5}
