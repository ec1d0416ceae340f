"""``sessions``: requests of a route need a live session, shared by the workers.

``sessions: {required: true, cookie: spx_session, ttl: 4h, max_per_client: 3, realm: tv, bind_client_ip: false}``

A session belongs to a **realm**: ``realm``, by default the route's name.
It opens the routes of its realm only (a session started on ``video`` is
``session_unknown`` on ``premium`` unless both say ``realm: tv``); with
``bind_client_ip`` it is accepted only from the client IP it was opened for.

A session starts in two ways: a request that carries a valid signed URL
(the ``signed_urls`` filter earlier on the chain says so in
``request.state["edge.signed"]``) and no live session of its own gets one,
sent back as ``Set-Cookie`` and ``X-Speedproxy-Session`` (a player sending no
cookies gets the same live session back for every URL of one signed link,
the same expiry from the same client, rather than a new one per request); or an application asks the
admin API (``POST /api/v1/sessions``, :mod:`speedproxy.admin.api_sessions`)
and hands the id to its player.  Later requests present the id as the
cookie or as a query parameter of the same name (for players that send no
cookies).  Without a live session, a request is refused with 403 naming why
(``session_required``, ``session_unknown``, ``session_expired``,
``session_revoked``), unless ``required`` is false.  A client (IP) holds at
most ``max_per_client`` live sessions: one more is refused with 429
(``too_many_sessions``) until one ends.

The sessions live in an :class:`~speedproxy.edge.state.IEdgeState`: a
revoked session (``DELETE /api/v1/sessions/<id>``) is refused by every worker
from its next request on.  The id of a request's live session is left in
``request.state["edge.session"]`` (the ``session`` key of ``rate_limit``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.logger import Logger

from speedproxy.config.model import SessionsConfig
from speedproxy.edge import is_internal
from speedproxy.edge.refusals import refusal
from speedproxy.edge.signed_urls import take_params
from speedproxy.edge.rate_limit import SESSION_STATE, _no_refusal_counter
from speedproxy.edge.state import IEdgeState, Session, SessionLimitReached, SessionStatus, SessionStoreFull
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalResponse

log = Logger(namespace="speedproxy.edge")

#: ``reason`` label of ``speedproxy_refused_total`` for this filter.
REASON = "session"

#: Set by the signed-URL filter on a request whose signature it verified:
#: ``(expires, client_ip or None)`` (``True`` from :func:`mark_signed`).
SIGNED_STATE = "edge.signed"
_NEW = "edge.new_session"

#: Seconds between two log lines saying the session store is full.
FULL_LOG_INTERVAL = 60.0


def mark_signed(request: FilterRequest) -> None:
    """Say that ``request`` carries a valid signed URL (called by the ``signed_urls`` filter)."""
    request.state[SIGNED_STATE] = True


def is_signed(request: FilterRequest) -> bool:
    return bool(request.state.get(SIGNED_STATE))


def signed_link(request: FilterRequest) -> bytes:
    """What tells one signed link from another for :meth:`IEdgeState.open_session`'s ``reuse``.

    Its expiry: the URLs of one issue (a playlist and the segments it lists,
    signed together) share it.  Empty when the signed-URL filter said no more
    than "signed".
    """
    signed = request.state.get(SIGNED_STATE)
    if isinstance(signed, tuple) and signed:
        return f"expires={signed[0]}".encode("ascii")
    return b""


def find_token(request: FilterRequest, name: str) -> Optional[str]:
    """The session id a request presents: the cookie ``name``, else the query parameter.

    The query parameter is taken off the request's URL (as the signed-URL
    parameters are): neither the cache key, nor the backend, nor the access
    log sees it.
    """
    found: Optional[str] = None
    headers, lowered = request._lists()
    for index, lname in enumerate(lowered):  # HTTP/2 may split cookies over several fields
        if lname != b"cookie" or found is not None:
            continue
        cookies = headers[index][1].decode("latin-1")
        if name in cookies:
            for part in cookies.split(";"):
                key, _, value = part.strip().partition("=")
                if key == name and value:
                    found = value.strip('"')
                    break
    exchange = request._exchange
    raw = exchange.request
    wanted = name.encode("ascii")
    if wanted in raw.query:
        query, (values,) = take_params(raw.query, (wanted,))
        if query != raw.query:
            raw.query = query
            raw.target = raw.target.partition(b"?")[0] + query
        if found is None:
            found = next((value.decode("latin-1") for value in values if value), None)
    return found


class SessionsFilter(Filter):
    """The ``sessions`` filter of one route in one worker."""

    def __init__(
        self,
        route: str,
        config: SessionsConfig,
        state: IEdgeState,
        count_refused: Callable[[str], None] = _no_refusal_counter,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self.route = route
        self.config = config
        self.state = state
        self.count_refused = count_refused
        self._cookie = config.cookie
        self._max_age = int(config.ttl)
        #: The realm whose sessions open this route.
        self.realm = config.realm or route
        self._bind = config.bind_client_ip
        self._clock = clock or time.monotonic
        self._full_logged: Optional[float] = None
        #: Requests let through without a session because the store was full.
        self.store_full = 0

    # -- request side -----------------------------------------------------------

    def request(self, request: FilterRequest) -> Any:
        if is_internal(request):
            return None
        token = find_token(request, self._cookie)
        if token is None:
            return self._without_session(request, "session_required", "this route needs a session")
        try:
            status = self.state.check_session(token, self.realm, request.client_ip if self._bind else None)
        except Exception:
            log.failure("route {route}: the session store failed; request let through", route=self.route)
            return None
        if isinstance(status, SessionStatus):
            return self._checked(status, request, token)
        return status.addCallbacks(self._checked, self._check_failed, callbackArgs=(request, token))

    def _check_failed(self, failure: Any) -> None:
        log.failure("route {route}: the session store failed; request let through", failure, route=self.route)
        return None

    def _checked(self, status: SessionStatus, request: FilterRequest, token: str) -> Optional[Any]:
        if status is SessionStatus.VALID:
            request.state[SESSION_STATE] = token
            return None
        return self._without_session(request, "session_" + status.value, f"the session is {status.value}")

    def _without_session(self, request: FilterRequest, code: str, detail: str) -> Any:
        if is_signed(request):
            return self._open(request)
        if not self.config.required:
            return None
        self.count_refused(REASON)
        return refusal(request, 403, code, detail)

    def _open(self, request: FilterRequest) -> Any:
        config = self.config
        try:
            opened = self.state.open_session(
                request.client_ip, config.ttl, config.max_per_client, self.realm, signed_link(request)
            )
        except SessionLimitReached as error:
            return self._too_many(request, error)
        except SessionStoreFull as error:
            return self._store_full(error)
        except Exception:
            log.failure("route {route}: could not open a session; request let through", route=self.route)
            return None
        if isinstance(opened, Session):
            return self._opened(opened, request)
        return opened.addCallbacks(self._opened, self._open_failed, callbackArgs=(request,), errbackArgs=(request,))

    def _opened(self, session: Session, request: FilterRequest) -> None:
        request.state[SESSION_STATE] = session.id
        request.state[_NEW] = session.id
        return None

    def _open_failed(self, failure: Any, request: FilterRequest) -> Optional[LocalResponse]:
        if failure.check(SessionLimitReached):
            return self._too_many(request, failure.value)
        if failure.check(SessionStoreFull):
            return self._store_full(failure.value)
        log.failure("route {route}: could not open a session; request let through", failure, route=self.route)
        return None

    def _store_full(self, error: SessionStoreFull) -> None:
        """Let the (validly signed) request through without a session; one log line per interval."""
        self.store_full += 1
        now = self._clock()
        if self._full_logged is None or now - self._full_logged >= FULL_LOG_INTERVAL:
            log.warn(
                "route {route}: {error}; {count} request(s) let through without a session "
                "(logged once per {interval:g}s)",
                route=self.route, error=str(error), count=self.store_full, interval=FULL_LOG_INTERVAL,
            )
            self._full_logged = now
            self.store_full = 0
        return None

    def _too_many(self, request: FilterRequest, error: SessionLimitReached) -> LocalResponse:
        self.count_refused(REASON)
        return refusal(
            request,
            429,
            "too_many_sessions",
            f"this client already has {error.limit} live session(s); end one first",
        )

    # -- response side: hand a new session to the client ---------------------------

    def _set_cookie(self, session_id: str) -> str:
        return f"{self._cookie}={session_id}; Path=/; Max-Age={self._max_age}; HttpOnly; SameSite=Lax"

    def response_head(self, request: FilterRequest, response: FilterResponse) -> None:
        session_id = request.state.get(_NEW)
        if session_id is not None:
            headers, lowered = response._lists()  # added beside the backend's own cookies
            headers.append((b"Set-Cookie", self._set_cookie(session_id).encode("ascii")))
            lowered.append(b"set-cookie")
            response.set_header("X-Speedproxy-Session", session_id)
        return None

    def local_response(self, request: FilterRequest, response: LocalResponse) -> None:
        session_id = request.state.get(_NEW)
        if session_id is not None and 200 <= response.status < 400:
            response.headers.append((b"Set-Cookie", self._set_cookie(session_id).encode("ascii")))
            response.headers.append((b"X-Speedproxy-Session", session_id.encode("ascii")))


def build(core: Any, config: Any, route: Any) -> Optional[SessionsFilter]:
    """The ``sessions`` filter of ``route`` (``None`` without the key)."""
    if route.sessions is None:
        return None
    from speedproxy.edge.refusals import refusal_counter
    from speedproxy.edge.state import edge_state_for

    return SessionsFilter(route.name, route.sessions, edge_state_for(core), refusal_counter(core, route.name))
