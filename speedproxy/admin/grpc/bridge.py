"""Run reactor code from grpcio's threads and wait for its result.

grpcio calls its handlers in threads of its own pool; everything the admin
API touches (the config, the workers' control channels, Deferreds) belongs
to the Twisted reactor's thread.  :meth:`ReactorBridge.call` hands a
function to the reactor (``callFromThread``), lets it return a value or a
Deferred, and blocks the calling gRPC thread until that fires, like
:func:`twisted.internet.threads.blockingCallFromThread`, but with a bound:
the wait ends when the gRPC call's deadline passes, when the client goes
away (:meth:`Waiter.cancel`), or when the bridge is closed because the
service stops, so no gRPC thread can outlive the reactor.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future, TimeoutError as FutureTimeout
from typing import Any, Callable, Optional, Set

from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure


class BridgeClosed(Exception):
    """The service is stopping: the call was not (or no longer) waited for."""


class BridgeTimeout(Exception):
    """The reactor did not answer within the time allowed."""


class Waiter:
    """One pending call: the future its gRPC thread waits on."""

    def __init__(self, bridge: "ReactorBridge") -> None:
        self.bridge = bridge
        self.future: Future = Future()

    def settle(self, value: Any = None, error: Optional[BaseException] = None) -> None:
        """Fire the future once (later settlements are ignored)."""
        with self.bridge.lock:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

    def cancel(self) -> None:
        """Stop waiting (the client went away); the reactor work still completes."""
        with self.bridge.lock:
            if not self.future.done():
                self.future.cancel()


class ReactorBridge:
    """Calls into ``reactor`` from other threads, with bounded waits."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.lock = threading.RLock()  # futures run their callbacks (_forget) under it
        self.closed = False
        self._pending: Set[Waiter] = set()

    def submit(self, function: Callable[..., Any], *args: Any) -> Waiter:
        """Schedule ``function(*args)`` in the reactor thread; return its waiter."""
        waiter = Waiter(self)
        with self.lock:
            if self.closed:
                waiter.future.set_exception(BridgeClosed("speedproxy is stopping"))
                return waiter
            self._pending.add(waiter)
        waiter.future.add_done_callback(lambda _: self._forget(waiter))

        def start() -> None:
            if waiter.future.done():
                return

            def failed(failure: Failure) -> None:
                waiter.settle(error=failure.value)

            maybeDeferred(function, *args).addCallbacks(waiter.settle, failed)

        self.reactor.callFromThread(start)
        return waiter

    def call(self, function: Callable[..., Any], *args: Any, timeout: Optional[float] = None) -> Any:
        """Run ``function(*args)`` in the reactor thread and return its (Deferred's) result.

        :raises BridgeClosed: the bridge was closed before the result came.
        :raises BridgeTimeout: no result within ``timeout`` seconds.
        :raises concurrent.futures.CancelledError: :meth:`Waiter.cancel` was called.
        Any exception ``function`` raised (or its Deferred failed with) is raised here.
        """
        return self.wait(self.submit(function, *args), timeout)

    @staticmethod
    def wait(waiter: Waiter, timeout: Optional[float]) -> Any:
        try:
            return waiter.future.result(timeout)
        except FutureTimeout:
            waiter.cancel()
            raise BridgeTimeout(f"no answer within {timeout:g} s") from None
        except CancelledError:
            raise

    def _forget(self, waiter: Waiter) -> None:
        with self.lock:
            self._pending.discard(waiter)

    def close(self) -> None:
        """Fail every pending and future call with :class:`BridgeClosed` (thread-safe)."""
        with self.lock:
            self.closed = True
            pending, self._pending = list(self._pending), set()
        for waiter in pending:
            waiter.settle(error=BridgeClosed("speedproxy is stopping"))
