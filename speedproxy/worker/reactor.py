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

from typing import Any, Callable

from twisted.python import log as _log


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
