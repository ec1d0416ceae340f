"""Panic routing: :mod:`speedproxy.panic` and the groups' picks in panic (:mod:`speedproxy.upstreams`)."""

from __future__ import annotations

from collections import Counter
from typing import List, Optional

import pytest

from speedproxy.config.model import BackendConfig, HealthCheckConfig
from speedproxy.panic import describe, group_threshold, in_panic, passive_counts
from speedproxy.upstreams import Backend, BalancedGroup, UpstreamGroup

NOW = 1000.0


def _group(count: int, threshold: float = 50.0, **config: object) -> UpstreamGroup:
    group = UpstreamGroup("default", panic_threshold=threshold)
    group.apply([BackendConfig(id=f"b{i}", port=8000 + i, **config) for i in range(count)])  # type: ignore[arg-type]
    return group


def _down(group: UpstreamGroup, *indexes: int) -> None:
    for index in indexes:
        group.backends[index].mark_down(NOW + 10)


def _picks(balanced: BalancedGroup, count: int = 60) -> Counter:
    return Counter(
        backend.id if backend is not None else None
        for backend in (balanced.pick(f"10.0.0.{i}") for i in range(count))
    )


# -- when a group is in panic ------------------------------------------------------------


def test_nothing_down_is_no_panic() -> None:
    assert not in_panic(_group(3).backends, 50.0)
    assert not in_panic([], 50.0)


@pytest.mark.parametrize(
    "count, down, threshold, panic",
    [
        (2, 1, 50.0, False),  # 1 of 2 = 50%: not fewer than 50%
        (3, 2, 50.0, True),  # 1 of 3 < 50%
        (4, 2, 50.0, False),
        (4, 3, 50.0, True),
        (4, 1, 80.0, True),  # 3 of 4 = 75% < 80%
        (2, 2, 50.0, True),  # every backend out: balance across all of them
        (3, 3, 0.0, False),  # 0 turns panic off for groups of more than one
        (2, 1, 100.0, True),
    ],
)
def test_threshold_is_a_share_of_backends_healthy_by_passive_checks(
    count: int, down: int, threshold: float, panic: bool
) -> None:
    group = _group(count, threshold)
    _down(group, *range(down))
    assert in_panic(group.backends, threshold) is panic
    assert group.panic is panic  # mark_down told the group


@pytest.mark.parametrize("threshold", [0.0, 50.0, 100.0])
def test_a_groups_only_backend_is_never_emptied_by_passive_checks(threshold: float) -> None:
    group = _group(1, threshold)
    _down(group, 0)
    assert group.panic
    backend = BalancedGroup(group, "round_robin").pick("10.0.0.1")
    assert backend is group.backends[0]


def test_the_only_member_counts_backends_that_may_serve() -> None:
    # One of two backends is `active: false`: the other is the group's only member.
    group = UpstreamGroup("default", panic_threshold=0.0)
    group.apply([BackendConfig(id="off", active=False), BackendConfig(id="on", port=81)])
    _down(group, 1)
    assert group.panic
    assert BalancedGroup(group, "round_robin").pick("k") is group.backends[1]


def test_active_verdicts_alone_are_no_panic() -> None:
    group = _group(3)
    for backend in group.backends[:2]:
        backend.healthy = False
    group.update_panic()
    assert not group.panic


def test_the_share_is_of_actively_healthy_backends() -> None:
    # Four backends: two called down by the active check, one of the other two
    # passively down: 1 of 2 actively healthy = 50%, not fewer.
    group = _group(4)
    group.backends[0].healthy = group.backends[1].healthy = False
    _down(group, 2)
    assert passive_counts(group.backends) == (4, 2, 1)
    assert not group.panic
    _down(group, 3)
    assert group.panic


def test_half_open_leaves_panic() -> None:
    group = _group(1)
    _down(group, 0)
    assert group.panic
    group.backends[0].half_open()
    assert not group.panic


# -- picks in panic -------------------------------------------------------------------------


def test_below_the_threshold_every_backend_is_picked() -> None:
    group = _group(3)
    balanced = BalancedGroup(group, "round_robin")
    _down(group, 0)
    assert set(_picks(balanced)) == {"b1", "b2"}  # 2 of 3 in: no panic
    _down(group, 1)
    assert set(_picks(balanced)) == {"b0", "b1", "b2"}


def test_actively_down_backends_stay_out_in_panic() -> None:
    group = _group(3)
    balanced = BalancedGroup(group, "round_robin")
    group.backends[0].healthy = False
    _down(group, 1, 2)
    assert group.panic
    assert set(_picks(balanced)) == {"b1", "b2"}


def test_inactive_and_drained_backends_stay_out_in_panic() -> None:
    group = UpstreamGroup("default")
    group.apply(
        [BackendConfig(id="off", active=False), BackendConfig(id="drained", weight=0), BackendConfig(id="b", port=2)]
    )
    _down(group, 2)
    assert group.panic
    assert set(_picks(BalancedGroup(group, "weight"))) == {"b"}


def test_all_down_by_active_checks_is_none_at_once() -> None:
    group = _group(2)
    for backend in group.backends:
        backend.healthy = False
    _down(group, 0, 1)
    assert not group.panic
    balanced = BalancedGroup(group, "round_robin")
    assert balanced.pick("k") is None
    assert not balanced.can_wait()


def test_panic_respects_max_conn_and_exclusions() -> None:
    group = _group(2, max_conn=1)
    _down(group, 0, 1)
    balanced = BalancedGroup(group, "round_robin")
    first = balanced.pick("k")
    assert first is not None
    assert balanced.pick("k", exclude=[first]) is not first
    first.active_connections = 1
    second = balanced.pick("k")
    assert second is not None and second is not first
    second.active_connections = 1
    assert balanced.pick("k") is None
    assert balanced.can_wait()  # full, not down: a request may queue
    assert not balanced.can_wait(exclude=[first, second])


@pytest.mark.parametrize("balancer", ["round_robin", "weight", "ip_hash", "least_connections",
                                      "least_connections_weight", "performance"])
def test_every_balancer_picks_in_panic(balancer: str) -> None:
    group = _group(2)
    _down(group, 0, 1)
    assert set(_picks(BalancedGroup(group, balancer), 200)) <= {"b0", "b1"}
    assert None not in _picks(BalancedGroup(group, balancer), 20)


def test_no_panic_pick_allocates_nothing_new() -> None:
    # The common case takes the usual path: no set of exclusions, no panic list.
    group = _group(2)
    balanced = BalancedGroup(group, "round_robin")
    calls: List[str] = []
    balanced._pick_in_panic = lambda *a: calls.append("panic")  # type: ignore[method-assign]
    assert balanced.pick("k") is not None
    assert calls == []


# -- thresholds and log lines ----------------------------------------------------------------


def _config(threshold: Optional[float]) -> BackendConfig:
    check = HealthCheckConfig(panic_threshold=threshold) if threshold is not None else None
    return BackendConfig(id="b", health_check=check)


def test_group_threshold_comes_from_a_backend_or_the_server_default() -> None:
    assert group_threshold([_config(None), _config(None)], 50.0) == 50.0
    assert group_threshold([_config(None), _config(20.0)], 50.0) == 20.0
    assert group_threshold([BackendConfig(id="b", health_check=HealthCheckConfig())], 35.0) == 35.0
    assert group_threshold([], 50.0) == 50.0


def test_describe_names_the_group_and_the_counts() -> None:
    group = _group(3, 60.0)
    _down(group, 0, 1)
    entering = describe("default", group.backends, 60.0, True)
    assert entering.startswith("upstream default: entering panic: 1 of 3 backends healthy by passive checks")
    assert "panic_threshold 60%" in entering
    leaving = describe("default", group.backends, 60.0, False)
    assert leaving.startswith("upstream default: leaving panic:")


def test_backend_group_reference_follows_membership() -> None:
    group = _group(2)
    assert all(backend.group is group for backend in group.backends)
    kept = group.backends[0]
    group.apply([kept.config])
    assert group.backends == [kept] and kept.group is group
    loose = Backend(BackendConfig(id="x"))
    loose.mark_down(NOW)  # no group: nothing to tell
    assert loose.down_until == NOW
