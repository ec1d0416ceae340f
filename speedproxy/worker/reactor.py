"""A leaner event dispatch for worker reactors.

For every readable or writable socket, Twisted's poll reactors call the
handler through ``log.callWithLogger``, which asks the connection for its log
prefix and pushes a logging context (a dict copy and half a dozen calls)
before the handler runs, twice per proxied request.  Workers log with
namespaced loggers and do not use that context, so :func:`install_lean_dispatch`
gives the epoll reactor module a stand-in whose ``callWithLogger`` calls the
handler directly and still logs, rather than propagates, anything it raises.
Everything else is looked up on :mod:`twisted.python.log` as before.
"""

from __future__ import annotations

import errno
import sys
import types
from typing import Any, Callable

from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log as _log
from twisted.python.runtime import platformType

EWOULDBLOCK = errno.WSAEWOULDBLOCK if platformType == "win32" else errno.EWOULDBLOCK  # type: ignore[attr-defined]


class _LeanLog:
    """``twisted.python.log`` with a direct ``callWithLogger``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_log, name)

    @staticmethod
    def callWithLogger(logger: Any, func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return func(*args, **kw)
        except KeyboardInterrupt:
            raise
        except BaseException:
            _log.err(system=getattr(logger, "logPrefix", lambda: "-")())
            return None


def install_lean_dispatch() -> bool:
    """Use direct dispatch in the epoll reactor module; False if not available."""
    try:
        from twisted.internet import epollreactor
    except ImportError:  # not Linux
        return False
    if getattr(epollreactor, "log", None) is _log:
        epollreactor.log = _LeanLog()  # type: ignore[assignment]
        return True
    return isinstance(getattr(epollreactor, "log", None), _LeanLog)


def _lean_do_poll(self: Any, timeout: Any) -> None:
    """``EPollReactor.doPoll`` with a direct path for plain read events.

    A readable socket with nothing else to report (the overwhelming case
    on the data path) goes straight to ``doRead``; any other event takes
    Twisted's own ``_doReadOrWrite``.  Errors are handled as Twisted does:
    logged, and the connection is closed with the exception as reason.
    """
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as error:
        if error.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    read_only = self._POLL_IN
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        if event == read_only:
            try:
                if type(selectable) in _TCP_CONNECTIONS and "doRead" not in selectable.__dict__:
                    # tcp.Connection.doRead and _dataReceived, inlined (not while
                    # connecting or aborting: Twisted swaps doRead on the instance).
                    try:
                        data = selectable.socket.recv(selectable.bufferSize)
                    except OSError as error:
                        why = None if error.args[0] == EWOULDBLOCK else CONNECTION_LOST
                    else:
                        if data:
                            selectable.protocol.dataReceived(data)
                            why = None
                        else:
                            why = CONNECTION_DONE
                else:
                    why = selectable.doRead()
            except BaseException:
                why = sys.exc_info()[1]
                _log.err()
            if why:
                self._disconnectSelectable(selectable, why, True)
        else:
            try:
                self._doReadOrWrite(selectable, fd, event)
            except BaseException:
                _log.err()


def _tcp_connection_types() -> Any:
    from twisted.internet import tcp

    # Exactly these classes: a subclass may override doRead.
    return frozenset({tcp.Server, tcp.Client})


_TCP_CONNECTIONS: Any = frozenset()


def install_lean_reactor(reactor: Any) -> bool:
    """Give an epoll reactor instance the direct read path; False if not epoll."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        return False
    if not isinstance(reactor, EPollReactor) or not hasattr(reactor, "_doReadOrWrite"):
        return False
    global _TCP_CONNECTIONS
    _TCP_CONNECTIONS = _tcp_connection_types()
    lean = types.MethodType(_lean_do_poll, reactor)
    reactor.doPoll = lean
    reactor.doIteration = lean
    return True
