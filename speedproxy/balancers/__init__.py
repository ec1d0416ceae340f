"""Balancers, looked up by the names used in ``routing.*.load_balancer``."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from speedproxy.balancers.interface import IBalancer
from speedproxy.balancers.ip_hash import IpHashBalancer
from speedproxy.balancers.least_connections import LeastConnectionsBalancer
from speedproxy.balancers.least_connections_weight import LeastConnectionsWeightBalancer
from speedproxy.balancers.performance import PerformanceBalancer, SupportsSeconds
from speedproxy.balancers.round_robin import RoundRobinBalancer
from speedproxy.balancers.weight import WeightBalancer

#: Factories by operator-facing name.  Every name in
#: :data:`speedproxy.config.model.BALANCER_NAMES` must be here.  Each factory
#: works with no arguments.
BALANCERS: Dict[str, Callable[..., IBalancer]] = {
    "round_robin": RoundRobinBalancer,
    "weight": WeightBalancer,
    "ip_hash": IpHashBalancer,
    "least_connections": LeastConnectionsBalancer,
    "least_connections_weight": LeastConnectionsWeightBalancer,
    "performance": PerformanceBalancer,
}

#: Balancers whose factory accepts a ``clock`` keyword argument.
CLOCKED_BALANCERS = frozenset({"performance"})


def make_balancer(name: str, clock: Optional[SupportsSeconds] = None) -> IBalancer:
    """Create a fresh balancer by its config name; ``KeyError`` if unknown.

    ``clock`` (anything with ``seconds()``, e.g. the reactor) is handed to the
    balancers that need one and ignored by the others; without it they use
    their default clock.
    """
    factory = BALANCERS[name]
    kwargs: Dict[str, Any] = {}
    if clock is not None and name in CLOCKED_BALANCERS:
        kwargs["clock"] = clock
    return factory(**kwargs)


__all__ = [
    "BALANCERS",
    "CLOCKED_BALANCERS",
    "IBalancer",
    "IpHashBalancer",
    "LeastConnectionsBalancer",
    "LeastConnectionsWeightBalancer",
    "PerformanceBalancer",
    "RoundRobinBalancer",
    "WeightBalancer",
    "make_balancer",
]
