"""``rate_limit``: a token bucket per client of a route, shared by the workers.

``rate_limit: {requests: 20, per: 1s, burst: 40, key: client_ip}``: each
bucket holds at most ``burst`` tokens (``requests`` when 0), starts full and
gets ``requests`` tokens back every ``per``; a request takes one.  A request
finding the bucket empty is answered here with 429, a JSON error, and
``Retry-After`` plus the ``RateLimit-Policy`` and ``RateLimit`` fields of the
IETF httpapi draft (draft-ietf-httpapi-ratelimit-headers-10)::

    RateLimit-Policy: "video";q=20;w=1;spx-burst=40
    RateLimit: "video";r=0;t=1

Whose bucket: ``client_ip`` (the real client address), ``header:<Name>``
(e.g. an API key; without the header, the client address) or ``session``
(the session id the sessions filter found; without one, the address).

The buckets live in an :class:`~speedproxy.edge.state.IEdgeState` (every
worker of the host, or the fleet through Redis).  When that store fails,
the request goes through: a limiter must never be why a request fails.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Dict, Optional

from twisted.logger import Logger

from speedproxy.config.model import RateLimitConfig
from speedproxy.edge.refusals import refusal
from speedproxy.edge.state import IEdgeState, Take
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest, LocalResponse

log = Logger(namespace="speedproxy.edge")

#: Where the sessions filter leaves the id of a request's live session.
SESSION_STATE = "edge.session"

#: ``reason`` label of ``speedproxy_refused_total`` for this filter.
REASON = "rate_limit"

#: Bucket keys of client addresses remembered per filter.
IP_KEYS = 4096


def _sf_string(text: str) -> str:
    """An RFC 8941 sf-string (printable ASCII; anything else is dropped)."""
    clean = "".join(ch for ch in text if " " <= ch <= "~")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_field(route: str, config: RateLimitConfig) -> str:
    """The ``RateLimit-Policy`` value: the quota over a whole-second window."""
    window = max(1, round(config.per))
    quota = max(1, round(config.requests * window / config.per))
    return f"{_sf_string(route)};q={quota};w={window};spx-burst={config.capacity}"


def _no_refusal_counter(reason: str) -> None:
    return None


class RateLimitFilter(Filter):
    """The ``rate_limit`` filter of one route in one worker."""

    def __init__(
        self,
        route: str,
        config: RateLimitConfig,
        state: IEdgeState,
        count_refused: Callable[[str], None] = _no_refusal_counter,
    ) -> None:
        self.route = route
        self.config = config
        self.state = state
        self.count_refused = count_refused
        self._rate = config.rate
        self._burst = float(config.capacity)
        self._prefix = b"rl\0" + route.encode("utf-8") + b"\0"
        kind = config.key
        self._header = kind[len("header:"):] if kind.startswith("header:") else None
        self._session = kind == "session"
        #: The bucket is the client address's alone (no header, no session to look at).
        self._by_ip = self._header is None and not self._session
        self._policy = policy_field(route, config)
        self._name = _sf_string(route)
        self._warned = False
        #: Client address -> its bucket key (clients come back).
        self._ip_keys: Dict[str, bytes] = {}

    def bucket(self, request: FilterRequest) -> bytes:
        """The key of the bucket a request takes from."""
        if self._header is not None:
            value = request.header(self._header)
            if value:
                raw = value.encode("latin-1")
                if len(raw) > 64:  # keys are remembered per process: keep them short
                    raw = hashlib.blake2b(raw, digest_size=16).digest()
                return self._prefix + b"h\0" + raw
        elif self._session:
            session = request.state.get(SESSION_STATE)
            if session:
                return self._prefix + b"s\0" + session.encode("ascii")
        client_ip = request._exchange.client_ip
        key = self._ip_keys.get(client_ip)
        if key is None:
            key = self._prefix + b"ip\0" + client_ip.encode("ascii", "replace")
            if len(self._ip_keys) >= IP_KEYS:
                self._ip_keys.clear()
            self._ip_keys[client_ip] = key
        return key

    def request(self, request: FilterRequest) -> Any:
        exchange = request._exchange
        if getattr(exchange.client, "internal", False):  # (is_internal, inline)
            return None
        key = self._ip_keys.get(exchange.client_ip) if self._by_ip else None
        try:
            answer = self.state.take(key or self.bucket(request), self._rate, self._burst)
        except Exception:
            self._store_failed()
            return None
        if isinstance(answer, Take):
            return None if answer[0] else self._refuse(request, answer)  # (answer.allowed)
        return answer.addCallbacks(self._decided, self._failed, callbackArgs=(request,))

    def _decided(self, answer: Take, request: FilterRequest) -> Optional[LocalResponse]:
        return None if answer.allowed else self._refuse(request, answer)

    def _failed(self, failure: Any) -> None:
        self._store_failed(failure)
        return None

    def _store_failed(self, failure: Any = None) -> None:
        if not self._warned:
            self._warned = True
            log.warn(
                "route {route}: the rate-limit store failed ({error}); requests go through unlimited",
                route=self.route,
                error=failure.getErrorMessage() if failure is not None else "exception",
            )

    def _refuse(self, request: FilterRequest, answer: Take) -> LocalResponse:
        self.count_refused(REASON)
        wait = max(1, math.ceil(answer.retry_after))
        return refusal(
            request,
            429,
            "rate_limited",
            f"more than {self.config.requests} requests per {self.config.per:g}s "
            f"(burst {self.config.capacity}); retry in {wait}s",
            [
                ("Retry-After", str(wait)),
                ("RateLimit-Policy", self._policy),
                ("RateLimit", f"{self._name};r=0;t={wait}"),
            ],
        )


def build(core: Any, config: Any, route: Any) -> Optional[RateLimitFilter]:
    """The ``rate_limit`` filter of ``route`` (``None`` without the key)."""
    if route.rate_limit is None:
        return None
    from speedproxy.edge.refusals import refusal_counter
    from speedproxy.edge.state import edge_state_for

    return RateLimitFilter(route.name, route.rate_limit, edge_state_for(core), refusal_counter(core, route.name))
