"""Tests for :mod:`speedproxy.admin.grpc.bridge`, with a hand-cranked reactor stand-in."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from typing import Any, Callable, List, Tuple

import pytest
from twisted.internet.defer import Deferred

import grpc_unit_support  # noqa: F401  (skips on PyPy)

from speedproxy.admin.grpc.bridge import BridgeClosed, BridgeTimeout, ReactorBridge


class QueueReactor:
    """``callFromThread`` queues; the test runs the queue as the reactor thread would."""

    def __init__(self) -> None:
        self.queued: List[Tuple[Callable[..., Any], Tuple[Any, ...]]] = []
        self.arrived = threading.Event()

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        self.queued.append((function, args))
        self.arrived.set()

    def run(self) -> None:
        assert self.arrived.wait(5.0), "nothing was handed to the reactor"
        self.arrived.clear()
        queued, self.queued = self.queued, []
        for function, args in queued:
            function(*args)


def in_thread(target: Callable[[], Any]) -> Tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = target()
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_value_and_a_later_deferred_come_back_to_the_thread() -> None:
    reactor = QueueReactor()
    bridge = ReactorBridge(reactor)
    later: Deferred = Deferred()
    thread, outcome = in_thread(lambda: bridge.call(lambda: later, timeout=5.0))
    reactor.run()
    assert thread.is_alive()  # waiting for the Deferred
    later.callback({"ok": 1})
    thread.join(5.0)
    assert outcome == {"value": {"ok": 1}}


def test_the_reactor_sides_exception_is_raised_in_the_thread() -> None:
    reactor = QueueReactor()
    bridge = ReactorBridge(reactor)

    def refuse() -> None:
        raise KeyError("nope")

    thread, outcome = in_thread(lambda: bridge.call(refuse, timeout=5.0))
    reactor.run()
    thread.join(5.0)
    assert isinstance(outcome["error"], KeyError)


def test_close_releases_the_waiting_threads_and_refuses_new_calls() -> None:
    reactor = QueueReactor()
    bridge = ReactorBridge(reactor)
    thread, outcome = in_thread(lambda: bridge.call(lambda: Deferred(), timeout=30.0))
    reactor.run()
    bridge.close()
    thread.join(5.0)
    assert isinstance(outcome["error"], BridgeClosed)
    with pytest.raises(BridgeClosed):
        bridge.call(lambda: 1, timeout=1.0)
    assert reactor.queued == []  # nothing more reached the reactor


def test_a_timeout_ends_the_wait_and_a_late_result_is_dropped() -> None:
    reactor = QueueReactor()
    bridge = ReactorBridge(reactor)
    late: Deferred = Deferred()
    waiter = bridge.submit(lambda: late)
    reactor.run()
    with pytest.raises(BridgeTimeout):
        bridge.wait(waiter, 0.05)
    late.callback("too late")  # no error: the waiter is settled already
    assert waiter.future.cancelled()


def test_cancel_stops_waiting_and_the_work_is_not_started_if_still_queued() -> None:
    reactor = QueueReactor()
    bridge = ReactorBridge(reactor)
    started: List[int] = []
    waiter = bridge.submit(lambda: started.append(1))
    waiter.cancel()
    with pytest.raises(CancelledError):
        bridge.wait(waiter, 1.0)
    reactor.run()
    assert started == []
