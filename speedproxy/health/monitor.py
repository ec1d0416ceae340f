"""Runs probes on schedule and turns results into up/down with rise/fall counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedproxy.config.model import BackendConfig
from speedproxy.health.interface import IHealthChecker

log = Logger(namespace="speedproxy.health")

BackendKey = Tuple[str, str]


@dataclass
class HealthState:
    """Rise/fall state of one backend: flaps are absorbed by the counts.

    A healthy backend goes down after ``failures`` consecutive failed probes;
    a down backend comes back after ``successes`` consecutive good ones.
    """

    failures: int
    successes: int
    healthy: bool = True
    failed_in_a_row: int = 0
    passed_in_a_row: int = 0

    def record(self, ok: bool) -> bool:
        """Fold one probe result in; return True when ``healthy`` flipped."""
        if ok:
            self.failed_in_a_row = 0
            self.passed_in_a_row += 1
            if not self.healthy and self.passed_in_a_row >= self.successes:
                self.healthy = True
                return True
        else:
            self.passed_in_a_row = 0
            self.failed_in_a_row += 1
            if self.healthy and self.failed_in_a_row >= self.failures:
                self.healthy = False
                return True
        return False


class _Probe:
    def __init__(self, monitor: "HealthMonitor", key: BackendKey, backend: BackendConfig) -> None:
        check = backend.health_check
        assert check is not None
        self.monitor = monitor
        self.key = key
        self.backend = backend
        self.state = HealthState(check.failures, check.successes)
        self.loop = LoopingCall(self.run)
        self.loop.clock = monitor.clock
        self.running = False

    def start(self) -> None:
        assert self.backend.health_check is not None
        self.loop.start(self.backend.health_check.interval, now=True)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def run(self) -> None:
        if self.running:  # the previous probe is still out (timeout >= interval)
            return
        self.running = True
        probe = self.monitor.checker.check(self.backend)

        def done(ok: bool) -> None:
            self.running = False
            if self.state.record(bool(ok)):
                self.monitor.changed(self.key, self.state.healthy)

        probe.addCallback(done)
        probe.addErrback(lambda failure: log.failure("health probe crashed", failure))


class HealthMonitor:
    """Probes every backend that has a ``health_check``, once (in the master)."""

    def __init__(
        self,
        clock: Any,
        checker: IHealthChecker,
        on_change: Callable[[str, str, bool], Any],
    ) -> None:
        self.clock = clock
        self.checker = checker
        self.on_change = on_change
        self.probes: Dict[BackendKey, _Probe] = {}

    def update(self, backends: Mapping[str, Sequence[BackendConfig]]) -> None:
        """Follow a new config: start, restart (changed) or stop probes."""
        wanted: Dict[BackendKey, BackendConfig] = {
            (upstream, backend.id): backend
            for upstream, configs in backends.items()
            for backend in configs
            if backend.health_check is not None
        }
        carried: Dict[BackendKey, HealthState] = {}
        for key in list(self.probes):
            probe = self.probes[key]
            backend = wanted.get(key)
            if backend is not None and backend == probe.backend:
                continue
            probe.stop()
            del self.probes[key]
            if backend is None:
                if not probe.state.healthy:
                    # A removed (or no longer checked) backend is not held down.
                    self.on_change(key[0], key[1], True)
            else:
                carried[key] = probe.state  # a changed backend keeps its verdict
        for key, backend in wanted.items():
            if key not in self.probes:
                probe = _Probe(self, key, backend)
                state = carried.get(key)
                if state is not None:
                    state.failures = probe.state.failures
                    state.successes = probe.state.successes
                    probe.state = state
                self.probes[key] = probe
                probe.start()

    def changed(self, key: BackendKey, healthy: bool) -> None:
        log.info(
            "backend {upstream}/{backend} is now {state}",
            upstream=key[0], backend=key[1], state="UP" if healthy else "DOWN",
        )
        self.on_change(key[0], key[1], healthy)

    def healthy(self, upstream: str, backend_id: str) -> bool:
        probe = self.probes.get((upstream, backend_id))
        return True if probe is None else probe.state.healthy

    def stop(self) -> None:
        for probe in self.probes.values():
            probe.stop()
        self.probes.clear()
