"""HealthState rise/fall and HealthMonitor scheduling, on a fake clock."""

from __future__ import annotations

from typing import Dict, List, Tuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedproxy.config.model import BackendConfig, HealthCheckConfig
from speedproxy.health import HealthMonitor, HealthState, IHealthChecker
from speedproxy.health.http import HTTPHealthChecker


@implementer(IHealthChecker)
class ScriptedChecker:
    """Answers probes from a per-backend script of results."""

    def __init__(self) -> None:
        self.results: Dict[str, bool] = {}
        self.calls: List[str] = []
        self.pending: Dict[str, Deferred] = {}
        self.hold = False

    def check(self, backend: BackendConfig) -> Deferred:
        self.calls.append(backend.id)
        if self.hold:
            d: Deferred = Deferred()
            self.pending[backend.id] = d
            return d
        return succeed(self.results.get(backend.id, True))


def backend(id: str, interval: float = 1.0, failures: int = 3, successes: int = 2) -> BackendConfig:
    return BackendConfig(
        id=id,
        health_check=HealthCheckConfig(interval=interval, failures=failures, successes=successes),
    )


def test_checkers_provide_the_interface() -> None:
    assert verifyObject(IHealthChecker, ScriptedChecker())
    assert verifyObject(IHealthChecker, HTTPHealthChecker(Clock()))


def test_state_goes_down_after_failures_and_up_after_successes() -> None:
    state = HealthState(failures=3, successes=2)
    assert [state.record(False) for _ in range(3)] == [False, False, True]
    assert not state.healthy
    assert [state.record(True) for _ in range(2)] == [False, True]
    assert state.healthy


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5), st.integers(1, 5))
def test_state_flips_only_after_a_full_run(results: List[bool], failures: int, successes: int) -> None:
    state = HealthState(failures=failures, successes=successes)
    healthy = True
    run: List[bool] = []
    for ok in results:
        run = run + [ok] if run and run[-1] == ok else [ok]
        flipped = state.record(ok)
        if healthy and not ok and len(run) >= failures and flipped:
            healthy = False
        elif not healthy and ok and len(run) >= successes and flipped:
            healthy = True
        assert state.healthy == healthy
        # a single result of the other kind never flips a settled state
        assert not flipped or len(run) == (failures if not ok else successes)


def test_monitor_probes_on_interval_and_reports_transitions() -> None:
    clock = Clock()
    checker = ScriptedChecker()
    changes: List[Tuple[str, str, bool]] = []
    monitor = HealthMonitor(clock, checker, lambda u, b, h: changes.append((u, b, h)))
    monitor.update({"default": (backend("a", interval=2.0, failures=2, successes=2), BackendConfig(id="nocheck"))})
    assert checker.calls == ["a"]  # probed at once; the unchecked backend never
    checker.results["a"] = False
    clock.advance(2.0)
    assert changes == []
    clock.advance(2.0)
    assert changes == [("default", "a", False)]
    assert not monitor.healthy("default", "a")
    checker.results["a"] = True
    clock.advance(2.0)
    clock.advance(2.0)
    assert changes[-1] == ("default", "a", True)
    assert len(checker.calls) == 5


def test_slow_probe_is_not_stacked() -> None:
    clock = Clock()
    checker = ScriptedChecker()
    checker.hold = True
    monitor = HealthMonitor(clock, checker, lambda *a: None)
    monitor.update({"default": (backend("a", interval=1.0),)})
    clock.advance(1.0)
    clock.advance(1.0)
    assert checker.calls == ["a"]
    checker.pending["a"].callback(True)
    clock.advance(1.0)
    assert checker.calls == ["a", "a"]


def test_changed_backend_keeps_its_verdict_and_removed_one_is_released() -> None:
    clock = Clock()
    checker = ScriptedChecker()
    changes: List[Tuple[str, str, bool]] = []
    monitor = HealthMonitor(clock, checker, lambda u, b, h: changes.append((u, b, h)))
    checker.results["a"] = False
    monitor.update({"default": (backend("a", failures=1),)})
    assert changes == [("default", "a", False)]
    # a weight change must not silently bring it back
    changed = BackendConfig(id="a", weight=5, health_check=HealthCheckConfig(interval=1.0, failures=1))
    monitor.update({"default": (changed,)})
    assert not monitor.healthy("default", "a")
    monitor.update({"default": ()})
    assert changes[-1] == ("default", "a", True)
    assert monitor.probes == {}
    clock.advance(5)
    monitor.stop()
