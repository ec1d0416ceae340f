"""The HTTP cache of a route, as a filter on its chain (RFC 9111 shared cache).

Request side: a fresh stored response answers at once (``Cache-Status:
speedproxy; hit``), a stale one is revalidated (or served while a
background refresh runs, RFC 5861), and a miss either joins the origin
response already coming for the key (:class:`~speedproxy.cache.fill.Fill`)
or becomes that response's leader.  Response side: a storable response is
stored as it streams to the client and to every request waiting for it; a
304 freshens the stored response; an error may be answered with a stale
one (stale-if-error).  Unsafe methods invalidate what they touch.

A filter earlier on the route's chain (the HLS filter, :mod:`speedproxy.hls`)
may steer the cache per request through ``view.state``:

``lifetime_override``
    An object with ``applies(status, headers, lowered) -> bool``, asked when
    the origin's response head arrives (``True``: the response is stored
    even without explicit freshness; ``no-store``, ``private``,
    ``Authorization`` and ``Set-Cookie`` still keep it out), and
    ``lifetime(status, headers, lowered, body) -> Optional[float]``, asked
    when it is stored or freshened by a 304 (``body`` is ``None`` when not at
    hand): seconds of freshness replacing the origin's (its ``no-cache`` is
    then dropped too), or ``None`` to keep the origin's.  Such a lifetime
    counts from the response's arrival, less its ``Age`` and the time it
    took, not from its ``Date``, whose whole seconds would eat the
    sub-second lifetimes of live playlists.
``collapse_stale``
    A stale stored response is refreshed once per key for the whole host:
    requests meanwhile wait for that refresh (in this worker) or for the
    fresh copy another worker stores on the disk tier, instead of each
    revalidating on its own (a live HLS playlist polled by many players).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from speedproxy.cache import policy
from speedproxy.cache.entry import CachedObject
from speedproxy.cache.fill import Fill, set_cache_status
from speedproxy.cache.fetch import fetch
from speedproxy.cache.hit import fresh_answer, hit_status, whole_answer
from speedproxy.cache.keys import vary_names, variant_key
from speedproxy.config.model import RouteCacheConfig
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalBody, LocalResponse

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.exchange import Exchange

log = Logger(namespace="speedproxy.cache")

# Results counted per route (speedproxy_cache_requests_total{result}).
HIT, MISS, STALE, REVALIDATED, BYPASS = range(5)

_CONDITIONALS = (b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since")
#: Request fields that make an answer from the cache other than the whole stored response.
_ANSWER_FIELDS = frozenset(_CONDITIONALS + (b"range",))
#: The same and the request's cache directives: a request without any of
#: them, answered from a fresh stored response, is the plain hit.
_HIT_FIELDS = _ANSWER_FIELDS | {b"cache-control", b"pragma"}
_UNSAFE_KEEP = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

# Roles of a request in view.state["role"].
_LEADER, _FOLLOWER, _BYPASS, _INVALIDATE, _WAITING = "leader", "follower", "bypass", "invalidate", "waiting"

#: Host values whose key prefix a route's cache remembers (then it starts again).
ORIGINS_LIMIT = 1024

#: Seconds between looks at the disk tier while another worker fetches a key.
WAIT_POLL = 0.02


class _Descriptor:
    """Owns a duplicated descriptor of a disk hit while one answer sends it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def _has_conditionals(lowered: List[bytes]) -> bool:
    for name in _CONDITIONALS:
        if name in lowered:
            return True
    return False


class CacheFilter(Filter):
    """The cache of one route in one worker."""

    wants_body = True
    rewrites_body = False

    def __init__(self, core: "ProxyCore", route: str, settings: RouteCacheConfig) -> None:
        self.core = core
        self.route = route
        self.settings = settings
        key = settings.key
        self._query = key.query if isinstance(key.query, str) else frozenset(name.encode() for name in key.query)
        self._ignore = frozenset(name.encode() for name in key.ignore_query)
        self._headers = tuple(name.lower().encode() for name in key.headers)
        #: :meth:`answer` is this class's own (a subclass may look at every answer).
        self._plain_answers = type(self).answer is CacheFilter.answer
        #: Host field value -> (scheme, ``scheme://host`` as in keys): :meth:`key_for`.
        self._origins: Dict[bytes, Tuple[bytes, bytes]] = {}

    # -- keys and counters ----------------------------------------------------------

    def key_of(
        self, host: bytes, path: bytes, query: bytes, scheme: bytes, headers: Any = (), lowered: Any = ()
    ) -> bytes:
        """The key a request for ``path``/``query`` (``?`` included) would have."""
        return policy.cache_key(
            host,
            path,
            query,
            scheme=scheme,
            query_mode=self._query,
            ignore_query=self._ignore,
            header_names=self._headers,
            request_headers=list(headers),
            lowered=list(lowered),
        )

    def key_for(self, exchange: "Exchange") -> bytes:
        request = exchange.request
        if not request.query and not self._headers:
            # No query and no key fields: the key is the origin, memoised per
            # Host value, and the path.
            scheme = exchange.client.scheme
            known = self._origins.get(request.host)
            if known is None or known[0] != scheme:
                known = self._origin(request.host, scheme)
            return known[1] + request.path
        return policy.cache_key(
            request.host,
            request.path,
            request.query,
            scheme=exchange.client.scheme,
            query_mode=self._query,
            ignore_query=self._ignore,
            header_names=self._headers,
            request_headers=request.headers,
            lowered=request.lowered,
        )

    def _origin(self, host: bytes, scheme: bytes) -> Tuple[bytes, bytes]:
        """``(scheme, key prefix)`` of requests for ``host`` over ``scheme``, remembered."""
        origins = self._origins
        if len(origins) >= ORIGINS_LIMIT:
            origins.clear()
        known = origins[host] = (scheme, policy.cache_key(host, b"", b"", scheme=scheme))
        return known

    def _count(self, exchange: "Exchange", result: int) -> None:
        route = exchange.route
        counter = getattr(self.core.stats, "cache_result", None)
        if counter is not None and route is not None:
            counter(route.stats_index, result)

    # -- request side ---------------------------------------------------------------

    def request(self, view: FilterRequest) -> Any:
        exchange: "Exchange" = view._exchange  # the filter is part of the data path
        request = exchange.request
        method = request.method
        state = view.state
        core = self.core
        tiers = core.cache
        if tiers is None:
            return None
        if method != b"GET" and method != b"HEAD":
            if method not in _UNSAFE_KEEP:
                state["role"] = _INVALIDATE
                state["key"] = self.key_for(exchange)
            else:
                state["role"] = _BYPASS
                state["fwd"] = b"method"
            self._count(exchange, BYPASS)
            return None
        lowered = request.lowered
        plain = _HIT_FIELDS.isdisjoint(lowered)  # no directives, conditionals nor range
        if not plain and (b"cache-control" in lowered or b"pragma" in lowered):
            directives = policy.request_directives(request.headers, lowered)
            if directives.no_store:
                state["role"] = _BYPASS
                state["fwd"] = b"request"
                self._count(exchange, BYPASS)
                return None
        else:
            directives = policy.NO_DIRECTIVES
        if not request.query and not self._headers:
            # (self.key_for's first case, spelled out)
            known = self._origins.get(request.host)
            if known is None or known[0] != exchange.client.scheme:
                known = self._origin(request.host, exchange.client.scheme)
            key = known[1] + request.path
        else:
            key = self.key_for(exchange)
        now = core.clock.seconds()
        entry = tiers.lookup(key, request.headers, lowered)
        state["key"] = key
        state["directives"] = directives
        if entry is not None:
            stored = entry.policy
            if directives is policy.NO_DIRECTIVES and not stored.no_cache:
                # The common hit, spelled out (policy.evaluate's first case):
                # fresh for a request without directives.
                age = now - stored.response_time
                age = stored.initial_age + age if age > 0 else stored.initial_age
                ttl = stored.lifetime - age
                if ttl > 0:
                    route = exchange.route  # (self._count, spelled out)
                    counter = getattr(core.stats, "cache_result", None)
                    if counter is not None and route is not None:
                        counter(route.stats_index, HIT)
                    if plain and self._plain_answers and entry.file is None:
                        return fresh_answer(entry, age, ttl)  # (self.answer's first case)
                    return self.answer(exchange, entry, now, hit_status(ttl))
            outcome, ttl = policy.evaluate(stored, directives, now)
            if outcome == policy.FRESH:
                self._count(exchange, HIT)
                return self.answer(exchange, entry, now, policy.cache_status(True, ttl=ttl))
            if outcome == policy.STALE_SERVABLE:
                self._count(exchange, STALE)
                return self.answer(exchange, entry, now, policy.cache_status(True, ttl=ttl, detail=b"max-stale"))
            if outcome == policy.STALE_REVALIDATE:
                self._count(exchange, STALE)
                self.refresh(exchange, entry)
                return self.answer(
                    exchange, entry, now, policy.cache_status(True, ttl=ttl, detail=b"stale-while-revalidate")
                )
            # MUST_REVALIDATE
            if directives.only_if_cached:
                self._count(exchange, MISS)
                return _gateway_timeout("only-if-cached: the stored response is stale")
            state["stale"] = entry
            # RFC 9211: "request" when the client's directives forced it.
            state["fwd"] = b"request" if ttl > 0 and not entry.policy.no_cache else b"stale"
            if state.get("collapse_stale") and method == b"GET" and b"range" not in request.lowered:
                collapsed = self._collapse_stale(view, key, now)
                if collapsed is not None:
                    return collapsed
        elif directives.only_if_cached:
            self._count(exchange, MISS)
            return _gateway_timeout("only-if-cached: nothing stored for this request")
        if method == b"HEAD" or (b"range" in request.lowered and entry is None):
            # Not a fill: a HEAD has no body to store; a range of a missing
            # object goes to the origin as asked.
            state["role"] = _BYPASS
            state["fwd"] = b"miss"
            self._count(exchange, MISS)
            return None
        fills = core.cache_fills
        fill = fills.get(key)
        if fill is not None and entry is None:
            state["role"] = _FOLLOWER
            self._count(exchange, MISS)
            return fill
        if entry is not None:
            self._ask_with_validators(exchange, entry, state)
        else:
            self._count(exchange, MISS)
            if self.settings.min_uses > 1 and core.cache_uses.add(key) < self.settings.min_uses:
                state["role"] = _BYPASS
                state["fwd"] = b"miss"
                state["detail"] = b"min-uses"
                return None
            locks = tiers.locks
            if locks is not None:
                if not locks.acquire(key):
                    # Another worker of this host is fetching it: wait for
                    # it on the disk tier (and let local requests join us).
                    state["fill"] = Fill(fills, key, core.config.cache.max_object_size)
                    state["role"] = _WAITING
                    return self._wait_for_other_worker(view, key, now)
                state["locked"] = True
        self._lead(view, now)
        return None

    def _lead(self, view: FilterRequest, now: float) -> None:
        """This request asks the origin for its key; others may follow it."""
        state = view.state
        exchange: "Exchange" = view._exchange
        core = self.core
        state["role"] = _LEADER
        state["request_time"] = now
        if "fill" not in state:
            state["fill"] = Fill(core.cache_fills, state["key"], core.config.cache.max_object_size)
        counter = getattr(core.stats, "origin_request", None)
        if counter is not None and exchange.route is not None:
            counter(exchange.route.stats_index)

    def _collapse_stale(self, view: FilterRequest, key: bytes, now: float) -> Any:
        """``collapse_stale``: join the refresh of a stale key under way, in this
        worker or another; ``None``: this request refreshes it (the lock of the
        key taken, with a disk tier)."""
        exchange: "Exchange" = view._exchange
        state = view.state
        core = self.core
        fill = core.cache_fills.get(key)
        if fill is not None:
            state["role"] = _FOLLOWER
            self._count(exchange, MISS)
            return fill
        tiers = core.cache
        locks = tiers.locks if tiers is not None else None
        if locks is None:
            return None
        stale = state.get("stale")
        fresh = self._fresh_on_disk(exchange, key, now, stale)
        if fresh is None and locks.acquire(key):
            # (Another worker may have stored it just before letting go.)
            fresh = self._fresh_on_disk(exchange, key, now, stale)
            if fresh is None:
                state["locked"] = True
                return None
            locks.release(key)
        if fresh is not None:
            entry, ttl = fresh
            state.pop("stale", None)
            self._count(exchange, HIT)
            return self.answer(exchange, entry, now, policy.cache_status(True, ttl=ttl))
        state["fill"] = Fill(core.cache_fills, key, core.config.cache.max_object_size)
        state["role"] = _WAITING
        self._count(exchange, STALE)
        return self._wait_for_other_worker(view, key, now)

    def _fresh_on_disk(
        self, exchange: "Exchange", key: bytes, now: float, stale: Optional[CachedObject] = None
    ) -> Optional[Tuple[CachedObject, float]]:
        """The disk tier's copy of ``key`` when it is fresh (another worker
        refreshed it), read past this worker's ``stale`` copy in memory."""
        tiers = self.core.cache
        request = exchange.request
        tiers.forget_copy(key)  # type: ignore[union-attr]
        if stale is not None and stale.variant:
            tiers.forget_copy(key, stale.variant)  # type: ignore[union-attr]
        entry = tiers.lookup(key, request.headers, request.lowered)  # type: ignore[union-attr]
        if entry is None:
            return None
        outcome, ttl = policy.evaluate(entry.policy, policy.NO_DIRECTIVES, now)
        return (entry, ttl) if outcome == policy.FRESH else None

    def _wait_for_other_worker(self, view: FilterRequest, key: bytes, now: float) -> "Deferred[Optional[LocalResponse]]":
        """Poll the disk tier until the other worker's response is stored there,
        or its lock is free (it did not store one): then fetch it ourselves.

        Waiting to refresh a stale response (``collapse_stale``), only a fresh
        copy will do, and our own request carries the stale one's validators.
        """
        core = self.core
        exchange: "Exchange" = view._exchange
        state = view.state
        tiers = core.cache
        locks = tiers.locks  # type: ignore[union-attr]
        request = exchange.request
        fill: Fill = state["fill"]
        stale: Optional[CachedObject] = state.get("stale")

        def stored(at: float) -> Optional[CachedObject]:
            if stale is None:
                return tiers.lookup(key, request.headers, request.lowered)  # type: ignore[union-attr]
            fresh = self._fresh_on_disk(exchange, key, at, stale)
            return fresh[0] if fresh is not None else None
        deadline = now + core.server.upstream_connect_timeout + core.server.upstream_read_timeout
        waited: "Deferred[Optional[LocalResponse]]" = Deferred()

        def found(entry: CachedObject) -> None:
            at = core.clock.seconds()
            outcome, ttl = policy.evaluate(entry.policy, state["directives"], at)
            value = policy.cache_status(True, ttl=ttl, collapsed=True)
            state["role"] = None
            fill.deliver(lambda other: self.answer(other, entry, at, value, shared=True))
            waited.callback(self.answer(exchange, entry, at, value))

        def poll() -> None:
            if exchange.finished:
                state["role"] = None
                fill.failed()
                waited.callback(None)
                return
            entry = stored(core.clock.seconds())
            if entry is not None:
                found(entry)
                return
            if locks.acquire(key):
                entry = stored(core.clock.seconds())
                if entry is not None:
                    locks.release(key)
                    found(entry)
                    return
                state["locked"] = True
            elif core.clock.seconds() < deadline:
                core.reactor.callLater(WAIT_POLL, poll)
                return
            if stale is not None:
                self._ask_with_validators(exchange, stale, state)
            self._lead(view, core.clock.seconds())
            waited.callback(None)

        core.reactor.callLater(WAIT_POLL, poll)
        return waited

    def _ask_with_validators(self, exchange: "Exchange", entry: CachedObject, state: Dict[str, Any]) -> None:
        """Revalidate: the request goes on with the stored response's validators.

        The client's own head is kept aside: its conditionals (if any) are
        answered from the refreshed response, never the cache's own.
        """
        request = exchange.request
        validators = policy.validators(entry.headers, entry.lowered)
        if not validators:
            return
        state["client_head"] = (request.headers, request.lowered)
        keep = [index for index, name in enumerate(request.lowered) if name not in _CONDITIONALS]
        request.headers = [request.headers[index] for index in keep] + list(validators)
        request.lowered = [request.lowered[index] for index in keep] + [name.lower() for name, _ in validators]

    def refresh(self, exchange: "Exchange", entry: CachedObject) -> None:
        """Refresh a stale entry in the background, once at a time per key."""
        core = self.core
        key = entry.key + b"\n" + entry.variant
        refreshing: Set[bytes] = core.cache_refreshing
        if key in refreshing:
            return
        refreshing.add(key)
        request = exchange.request
        headers: List[Tuple[bytes, bytes]] = [(b"Cache-Control", b"no-cache")]
        wanted = set(entry.vary) | set(self._headers)
        for (name, value), lname in zip(request.headers, request.lowered):
            if lname in wanted:
                headers.append((name, value))
        target = request.path + request.query
        done = fetch(core, request.host, target, headers, scheme=exchange.client.scheme)
        done.addBoth(lambda result: refreshing.discard(key) or result)
        done.addErrback(lambda failure: log.failure("cache: background refresh failed", failure))

    # -- answers from the cache ---------------------------------------------------

    def answer(
        self,
        exchange: "Exchange",
        entry: CachedObject,
        now: float,
        status_value: bytes,
        client_head: Optional[Tuple[Any, List[bytes]]] = None,
        shared: bool = False,
    ) -> LocalResponse:
        """The stored response as an answer to this request (304, 206, 416 or whole).

        ``client_head``: the request's fields as the client sent them, when
        the cache changed them (revalidation).  A hit whose body is in a
        disk file (``entry.file``) hands its descriptor to the answer, which
        closes it when sent: ``shared`` answers (the followers of a fill,
        answered before the request that owns the hit) get one of their own.
        """
        if entry.file is None and client_head is None and _ANSWER_FIELDS.isdisjoint(exchange.request.lowered):
            return whole_answer(entry, now, status_value)  # (most hits)
        response = self._answer(exchange, entry, now, status_value, client_head)
        file = entry.file
        if file is not None:
            if response.status == entry.status and not response.body:
                fd = os.dup(file.fd) if shared else file.fd
                response.file = LocalBody(fd, file.offset, file.length, _Descriptor(fd) if shared else file)
            elif not shared:
                file.close()
        return response

    def _answer(
        self,
        exchange: "Exchange",
        entry: CachedObject,
        now: float,
        status_value: bytes,
        client_head: Optional[Tuple[Any, List[bytes]]],
    ) -> LocalResponse:
        request = exchange.request
        headers, lowered = client_head if client_head is not None else (request.headers, request.lowered)
        if _ANSWER_FIELDS.isdisjoint(lowered):
            return whole_answer(entry, now, status_value)
        age = policy.current_age(entry.policy.initial_age, entry.policy.response_time, now)
        extra = b"Age: " + policy.age_header(age) + b"\r\nCache-Status: " + status_value + b"\r\n"
        if _has_conditionals(lowered):
            verdict = policy.evaluate_conditionals(
                request.method, headers, lowered, entry.headers, entry.lowered, entry.status
            )
            if verdict == 304:
                fields = policy.not_modified_headers(entry.headers, entry.lowered)
                block = b"".join(b"%s: %s\r\n" % pair for pair in fields)
                return LocalResponse.prebuilt(304, None, block + extra, b"")
            if verdict == 412:
                return LocalResponse.prebuilt(412, None, extra, b"")
        if b"range" in lowered:
            length = entry.length
            ranges = policy.range_request(
                request.method, headers, lowered, entry.headers, entry.lowered, length, entry.status
            )
            if ranges is policy.UNSATISFIABLE:
                block = b"Content-Range: " + policy.unsatisfied_range(length) + b"\r\n"
                return LocalResponse.prebuilt(416, None, block + extra, b"")
            if ranges:
                return self._partial(entry, ranges, extra)
        return LocalResponse.prebuilt(entry.status, entry.reason.decode("latin-1"), entry.block + extra, entry.body)

    def _partial(self, entry: CachedObject, ranges: List[Tuple[int, int]], extra: bytes) -> LocalResponse:
        length = entry.length
        base = b"".join(
            b"%s: %s\r\n" % pair
            for pair, name in zip(entry.headers, entry.lowered)
            if name not in (b"content-type", b"content-range", b"content-length", b"age", b"cache-status")
        )
        if len(ranges) == 1:
            first, last = ranges[0]
            content_type = entry.header(b"content-type")
            block = base + (b"Content-Type: " + content_type + b"\r\n" if content_type else b"")
            block += b"Content-Range: " + policy.content_range(first, last, length) + b"\r\n"
            return LocalResponse.prebuilt(206, None, block + extra, entry.read_body(first, last))
        content_type, parts, closing, _ = policy.multipart_byteranges(
            ranges, length, entry.header(b"content-type"), policy.make_boundary()
        )
        pieces = []
        for head, first, last in parts:
            pieces += (head, entry.read_body(first, last))
        pieces.append(closing)
        block = base + b"Content-Type: " + content_type + b"\r\n"
        return LocalResponse.prebuilt(206, None, block + extra, b"".join(pieces))

    # -- response side ----------------------------------------------------------------

    def response_head(self, view: FilterRequest, response: FilterResponse) -> Optional[LocalResponse]:
        state = view.state
        role = state.get("role")
        if role is None:
            return None
        exchange: "Exchange" = view._exchange
        head = response._head
        if role == _FOLLOWER:
            if exchange.source is None:
                # Released to the origin (the shared response was not storable):
                # say why this one is not stored either.
                request = exchange.request
                ok, reason = policy.storable(
                    request.method, head.status, request.headers, request.lowered, head.headers, head.lowered,
                    has_authorization=b"authorization" in request.lowered,
                    heuristic_allowed_by_config=self.settings.default_ttl > 0,
                )
                detail = (reason or None) if not ok else b"released"
                set_cache_status(head, policy.cache_status(False, fwd=b"miss", fwd_status=head.status, detail=detail))
            return None  # else its Cache-Status came with the shared head
        if role == _INVALIDATE:
            set_cache_status(head, policy.cache_status(False, fwd=b"method", fwd_status=head.status))
            self._invalidate(exchange, state["key"], head.status, head.headers, head.lowered)
            return None
        if role == _BYPASS:
            detail = state.get("detail")
            set_cache_status(head, policy.cache_status(False, fwd=state.get("fwd", b"bypass"), fwd_status=head.status, detail=detail))
            return None
        fill: Fill = state["fill"]
        now = self.core.clock.seconds()
        request = exchange.request
        stale: Optional[CachedObject] = state.get("stale")
        status = head.status
        if stale is not None:
            if status == 304:
                return self._revalidated(exchange, state, stale, head, now)
            if status in policy.ERROR_STATUSES and policy.stale_on_error(stale.policy, state["directives"], now):
                state["role"] = None
                self._count(exchange, STALE)
                value = policy.cache_status(True, fwd=b"stale", fwd_status=status, detail=b"stale-if-error")
                fill.deliver(lambda other: self.answer(other, stale, now, value, shared=True))
                return self.answer(exchange, stale, now, value, state.get("client_head"))
        override = state.get("lifetime_override")
        forced = override is not None and override.applies(status, head.headers, head.lowered)
        ok, reason = policy.storable(
            request.method,
            status,
            request.headers,
            request.lowered,
            head.headers,
            head.lowered,
            has_authorization=b"authorization" in request.lowered,
            heuristic_allowed_by_config=self.settings.default_ttl > 0 or forced,
        )
        fwd = state.get("fwd", b"stale") if stale is not None else b"miss"
        if ok and head.content_length is not None and head.content_length > self.core.config.cache.max_object_size:
            ok, reason = False, "size"
        if ok and status == 206:
            ok, reason = False, "partial"
        if not ok:
            state["role"] = None
            fill.release()
            set_cache_status(head, policy.cache_status(False, fwd=fwd, fwd_status=status, detail=reason or None))
            return None
        names = vary_names(head.headers, head.lowered) or ()
        state["storing"] = True
        state["chunks"] = []
        state["size"] = 0
        state["vary"] = names
        state["variant"] = variant_key(names, request.headers, request.lowered) if names else b""
        state["head"] = (status, head.reason, list(head.headers), list(head.lowered))
        shared = policy.cache_status(False, fwd=fwd, fwd_status=status, collapsed=True)
        fill.head_arrived(head, request.method == b"HEAD", shared)
        set_cache_status(head, policy.cache_status(False, fwd=fwd, fwd_status=status, stored=True))
        return None

    def _revalidated(
        self, exchange: "Exchange", state: Dict[str, Any], stale: CachedObject, head: Any, now: float
    ) -> LocalResponse:
        """A 304 to our validators: freshen the stored response and serve it."""
        state["role"] = None
        headers, lowered = policy.freshen_headers(stale.headers, stale.lowered, head.headers, head.lowered, now)
        stale.set_headers(headers, lowered)
        stale.policy = self._policy(
            state, stale.status, headers, lowered, now, stale.body if stale.file is None else None
        )
        self.core.cache.refresh(stale)  # type: ignore[union-attr]
        state["stored"] = True  # other workers wait for the refreshed copy on disk
        self._count(exchange, REVALIDATED)
        ttl = stale.policy.lifetime - policy.current_age(stale.policy.initial_age, now, now)
        value = policy.cache_status(True, fwd=state.get("fwd", b"stale"), fwd_status=304, ttl=ttl)
        state["fill"].deliver(lambda other: self.answer(other, stale, now, value, shared=True))
        return self.answer(exchange, stale, now, value, state.get("client_head"))

    def _policy(
        self, state: Dict[str, Any], status: int, headers: Any, lowered: List[bytes], now: float, body: Optional[bytes]
    ) -> policy.StoredPolicy:
        """The freshness of a response being stored or freshened (a
        ``lifetime_override`` from an earlier filter replaces the origin's)."""
        stored = policy.stored_policy(
            status,
            headers,
            lowered,
            state["request_time"],
            now,
            default_ttl=self.settings.default_ttl,
            stale_while_revalidate=self.settings.stale_while_revalidate,
            stale_if_error=self.settings.stale_if_error,
            heuristic_allowed=self.settings.default_ttl > 0,
        )
        override = state.get("lifetime_override")
        if override is not None and override.applies(status, headers, lowered):
            lifetime = override.lifetime(status, headers, lowered, body)
            if lifetime is not None:
                stored.lifetime = float(lifetime)
                stored.no_cache = False
                stored.initial_age = policy.age_value(headers, lowered) + max(0.0, now - state["request_time"])
        return stored

    def response_body(self, view: FilterRequest, data: bytes) -> bytes:
        state = view.state
        if state.get("storing"):
            size = state["size"] + len(data)
            if size > self.core.config.cache.max_object_size:
                state["storing"] = False
                state["chunks"] = []
            else:
                state["size"] = size
                state["chunks"].append(data)
            state["fill"].body_arrived(data)
        return data

    def response_end(self, view: FilterRequest) -> Optional[bytes]:
        state = view.state
        if state.get("role") != _LEADER:
            return None
        fill: Fill = state["fill"]
        if state.get("storing"):
            state["storing"] = False
            exchange: "Exchange" = view._exchange
            status, reason, headers, lowered = state["head"]
            now = self.core.clock.seconds()
            body = b"".join(state["chunks"])
            stored_headers, stored_lowered = policy.storage_headers(headers, lowered)
            entry = CachedObject(
                state["key"],
                state["variant"],
                state["vary"],
                status,
                reason,
                stored_headers,
                stored_lowered,
                body,
                self._policy(state, status, headers, lowered, now, body),
                state["request_time"],
            )
            state["chunks"] = []
            state["stored"] = True
            try:
                self.core.cache.store(entry)  # type: ignore[union-attr]
            except Exception:
                log.failure("cache: storing {key!r} failed", key=state["key"])
        state["role"] = None
        fill.completed()
        return None

    def error(self, view: FilterRequest, status: int) -> Optional[LocalResponse]:
        state = view.state
        view.error_headers = b"Cache-Status: " + policy.cache_status(
            False, fwd=state.get("fwd", b"miss") if state.get("role") is not None else b"bypass", detail=b"error"
        ) + b"\r\n"
        if state.get("role") != _LEADER:
            return None
        fill: Fill = state["fill"]
        stale: Optional[CachedObject] = state.get("stale")
        now = self.core.clock.seconds()
        state["role"] = None
        if stale is not None and policy.stale_on_error(stale.policy, state["directives"], now):
            exchange: "Exchange" = view._exchange
            self._count(exchange, STALE)
            value = policy.cache_status(True, fwd=b"stale", detail=b"stale-if-error")
            fill.deliver(lambda other: self.answer(other, stale, now, value, shared=True))
            return self.answer(exchange, stale, now, value)
        fill.failed()
        return None

    def finished(self, view: FilterRequest, complete: bool) -> None:
        state = view.state
        if "fill" not in state and "locked" not in state:
            return  # (a hit: nothing to let go)
        fill: Optional[Fill] = state.get("fill")
        if fill is not None and state.get("role") in (_LEADER, _WAITING):
            state["role"] = None
            fill.failed()  # the leader's response broke off: followers go on alone
        if state.get("locked"):
            state["locked"] = False
            self._unlock(state["key"], state.get("stored", False))

    def _unlock(self, key: bytes, stored: bool) -> None:
        """Let other workers fetch ``key`` again, once what we stored is on disk."""
        core = self.core
        tiers = core.cache
        if tiers is None or tiers.locks is None:
            return
        locks = tiers.locks
        disk = tiers.disk
        if stored and disk is not None:
            reactor = core.reactor
            if disk.when_committed(lambda: reactor.callFromThread(locks.release, key)):
                return
        locks.release(key)

    # -- invalidation -------------------------------------------------------------------

    def _invalidate(self, exchange: "Exchange", key: bytes, status: int, headers: Any, lowered: Any) -> None:
        """RFC 9111 4.4: an unsafe request that succeeded invalidates its target."""
        if not policy.invalidates(exchange.request.method, status):
            return
        request = exchange.request
        tiers = self.core.cache
        if tiers is None:
            return
        keys = [key]
        for target in policy.invalidation_targets(request.host, exchange.client.scheme, headers, lowered, request.target):
            path, _, query = target.partition(b"?")
            keys.append(
                policy.cache_key(request.host, path, query, scheme=exchange.client.scheme, query_mode=self._query, ignore_query=self._ignore)
            )
        for item in keys:
            tiers.purge(item)
        announce = getattr(self.core, "announce_invalidation", None)
        if announce is not None:
            announce(keys)


def _gateway_timeout(detail: str) -> LocalResponse:
    body = b'{"error": "gateway_timeout", "detail": "%s"}\n' % detail.encode()
    return LocalResponse(504, [("Content-Type", "application/json"), ("Cache-Status", "speedproxy; fwd=miss; detail=only-if-cached")], body)
