"""The lean event dispatch keeps Twisted's error handling."""

from __future__ import annotations

from typing import Any, List

from twisted.python import log

from speedproxy.worker.reactor import _LeanLog, install_lean_dispatch


class Selectable:
    def logPrefix(self) -> str:
        return "selectable"


def test_calls_through_and_returns_the_result() -> None:
    assert _LeanLog.callWithLogger(Selectable(), lambda a, b=0: a + b, 1, b=2) == 3


def test_an_exception_is_logged_not_raised() -> None:
    seen: List[Any] = []
    log.addObserver(seen.append)
    try:
        def boom() -> None:
            raise ValueError("broken handler")

        assert _LeanLog.callWithLogger(Selectable(), boom) is None
    finally:
        log.removeObserver(seen.append)
    assert any(event.get("isError") and "broken handler" in str(event.get("failure")) for event in seen)


def test_other_log_names_still_resolve() -> None:
    assert _LeanLog().msg is log.msg


def test_install_is_idempotent() -> None:
    from twisted.internet import epollreactor

    original = epollreactor.log
    try:
        assert install_lean_dispatch()
        assert install_lean_dispatch()
        assert isinstance(epollreactor.log, _LeanLog)
    finally:
        epollreactor.log = original
