"""Panic routing: when passive checks took out too much of a group, ignore them.

Passive checks (the circuit breaker of every worker) take a backend out
after a few failed requests.  When that leaves fewer than
``panic_threshold`` percent of a group's backends in, the rest would be
overloaded, or, with a single backend, every request would get a 503 although
the origin answers most of them.  Like Envoy's panic threshold, the group then
balances across all its backends that are allowed to serve (``active``,
weight > 0, not called down by the *active* health check), passively down
or not.  A group whose only backend was taken out by passive checks is always
in panic: passive checks alone never empty a group of one (as nginx never
takes out the only server of an upstream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.config.model import BackendConfig
    from speedproxy.upstreams import Backend


def passive_counts(backends: Sequence["Backend"]) -> Tuple[int, int, int]:
    """``(members, eligible, passive_ok)`` of a group.

    ``members``: backends with ``active: true`` and a positive weight;
    ``eligible``: those the active health check lets serve;
    ``passive_ok``: those of them no passive check took out.
    """
    members = eligible = passive_ok = 0
    for backend in backends:
        config = backend.config
        if config.active and config.weight > 0:
            members += 1
            if backend.healthy:
                eligible += 1
                if not backend.down_until:
                    passive_ok += 1
    return members, eligible, passive_ok


def in_panic(backends: Sequence["Backend"], threshold: float) -> bool:
    """Should the group ignore passive verdicts (``threshold`` in percent)?"""
    for backend in backends:
        if backend.down_until:
            break
    else:
        return False  # nothing passively down: the common case, no counting
    members, eligible, passive_ok = passive_counts(backends)
    if eligible == passive_ok:
        return False  # only active checks took backends out
    if members == 1:
        return True
    return passive_ok * 100.0 < threshold * eligible


def group_threshold(configs: Sequence["BackendConfig"], default: float) -> float:
    """A group's panic threshold: set by its backends' ``health_check``, else ``default``."""
    for config in configs:
        check = config.health_check
        if check is not None and check.panic_threshold is not None:
            return check.panic_threshold
    return default


def describe(name: str, backends: Sequence["Backend"], threshold: float, panic: bool) -> str:
    """The log line for a group entering (``panic``) or leaving panic."""
    _, eligible, passive_ok = passive_counts(backends)
    if panic:
        return (
            f"upstream {name}: entering panic: {passive_ok} of {eligible} backends healthy by passive "
            f"checks (panic_threshold {threshold:g}%); balancing across all {eligible} actively healthy backends"
        )
    return (
        f"upstream {name}: leaving panic: {passive_ok} of {eligible} backends healthy by passive checks "
        f"(panic_threshold {threshold:g}%)"
    )

