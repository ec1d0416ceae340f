"""The HLS filters of a route: around its cache filter.

A route with ``hls.enabled`` gets two filters (see
:func:`speedproxy.routing.build_filters`)::

    [operator filters...] HlsFilter  CacheFilter  HlsRewriteFilter  -> origin

:class:`HlsFilter` (before the cache) recognises playlists (``.m3u8``, or a
playlist content type) and the URIs they list, tells the cache their
lifetimes (``view.state["lifetime_override"]``, the cache's documented
hook) and to refresh stale playlists once for all players
(``collapse_stale``), learns the streams from the playlists that pass or are
served from the cache, follows viewers and prefetches the segments after
the one a sequential viewer asks for.  On a route that prefetches, a
player asking for a stale live playlist waits while the worker refreshes
it and prefetches the new segments it lists, so players learn of a
segment only once it is stored (:mod:`speedproxy.hls.live`).  It also
puts the route's bandwidth limits on client connections
(:mod:`speedproxy.hls.bandwidth`, only when the route has some), accounts
every request to its stream
(:mod:`speedproxy.hls.streams`) and heats the segments players ask for
(:mod:`speedproxy.hls.heat`).  The cache key of the route always keeps the
LL-HLS directives (:func:`key_ll_hls`).

:class:`HlsRewriteFilter` (after the cache, so on misses only) rewrites
playlists coming from the origin (variant cap, absolute URIs); the cache
stores and serves the rewritten playlist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from speedproxy.cache import policy
from speedproxy.cache.entry import CachedObject, VaryMarker
from speedproxy.cache.fetch import InternalClient, fetch
from speedproxy.cache.keys import variant_key
from speedproxy.config.model import RouteConfig, RouteHlsConfig
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest, FilterResponse
from speedproxy.hls.bandwidth import RouteBucket, throttle_for, worker_share
from speedproxy.hls.heat import heat_of
from speedproxy.hls.live import Hold, LiveHolds, hold_bound
from speedproxy.hls.playlist import (
    EVENT,
    LIVE,
    SEGMENT,
    Playlist,
    is_playlist_path,
    is_playlist_type,
    is_segment_type,
    parse_playlist,
    playlist_lifetime,
    playlist_outline,
)
from speedproxy.hls.prefetch import PREFETCH_HEADER_LOWER, Prefetcher
from speedproxy.hls.registry import Rendition, StreamRegistry
from speedproxy.hls.rewrite import origin_hosts, rewrite_playlist
from speedproxy.hls.streams import StreamFigures
from speedproxy.hls.viewers import ViewerTracker

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.cache.filter import CacheFilter
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.exchange import Exchange

log = Logger(namespace="speedproxy.hls")

#: Playlists larger than this are neither parsed nor rewritten (relayed as they are).
MAX_PLAYLIST = 8 * 1024 * 1024
#: Playlists larger than this (some 400 segments, ~7 ms of m3u8) are parsed
#: in the reactor's thread pool, not in the reactor (see :mod:`speedproxy.hls.playlist`).
THREAD_PARSE = 16 * 1024

#: What a request is, in ``view.state["hls"]``.
PLAYLIST = "playlist"
#: Not known: a playlist if its content type says so.
OTHER = "other"

#: Request fields a prefetch copies from the viewer's request that caused it
#: (besides those in the route's cache key): what the player would send.
_PREFETCH_COPIED = (b"cookie", b"authorization")


class HlsRoute:
    """What one worker knows and does for one HLS route; outlives the filter
    instances (a reload that changes the route's filters keeps it)."""

    def __init__(self, core: "ProxyCore") -> None:
        self.registry = StreamRegistry()
        self.viewers = ViewerTracker()
        self.prefetcher = Prefetcher(core)
        self.streams = StreamFigures()
        #: The ``max_bandwidth`` bucket of the route in this worker, if limited.
        self.bandwidth: Optional[RouteBucket] = None
        self.counters: Dict[str, float] = {
            "playlists_parsed": 0, "parse_seconds": 0.0, "live_segments_seen": 0, "threaded_parses": 0
        }
        #: Versions of stored playlists being parsed in the thread pool.
        self.parsing: Set[float] = set()
        #: Paths of playlists being parsed in the thread pool (how many parses each).
        self.parsing_paths: Dict[str, int] = {}
        #: Players held until a refreshed live playlist's new segments are stored.
        self.live = LiveHolds(core.reactor, self.parsing_paths.__contains__)

    def parsed(self, playlist: Optional[Playlist], seconds: float = 0.0) -> None:
        self.counters["playlists_parsed"] += 1
        self.counters["parse_seconds"] += playlist.parse_seconds if playlist is not None else seconds

    def info(self, now: float) -> Dict[str, Any]:
        figures: Dict[str, Any] = {
            "prefetch": self.prefetcher.info(),
            "live_hold": self.live.info(),
            "viewers": self.viewers.active(now),
            "playlists_parsed": int(self.counters["playlists_parsed"]),
            "parse_ms": round(self.counters["parse_seconds"] * 1000.0, 3),
            "live_segments_seen": int(self.counters["live_segments_seen"]),
            "threaded_parses": int(self.counters["threaded_parses"]),
            "served_bytes": self.streams.served_bytes,
            "origin_bytes": self.streams.origin_bytes,
        }
        figures.update(self.registry.info())
        figures["streams"] = self.streams.info(now)
        return figures


def route_state(core: "ProxyCore", route: str) -> HlsRoute:
    """The :class:`HlsRoute` of ``route`` in this worker (made on first use)."""
    routes: Optional[Dict[str, HlsRoute]] = getattr(core, "hls_routes", None)
    if routes is None:
        routes = {}
        core.hls_routes = routes  # type: ignore[attr-defined]
    state = routes.get(route)
    if state is None:
        state = routes[route] = HlsRoute(core)
    return state


def hls_info(core: "ProxyCore") -> Optional[Dict[str, Any]]:
    """Per route: prefetch counters, viewers, what is known (``None``: no HLS route)."""
    routes: Optional[Dict[str, HlsRoute]] = getattr(core, "hls_routes", None)
    if not routes:
        return None
    now = core.clock.seconds()
    routing = core.config.routing
    return {
        name: state.info(now)
        for name, state in routes.items()
        if name in routing and routing[name].hls.enabled  # (not routes since turned off)
    } or None


def _hosts_for(core: "ProxyCore", config: RouteConfig, request_host: bytes) -> frozenset:
    backends = core.config.backends.get(config.upstream, ())
    return origin_hosts(request_host, [(backend.host, backend.port, backend.scheme) for backend in backends])


class Lifetimes:
    """The cache's ``lifetime_override`` for one request (see :mod:`speedproxy.cache.filter`)."""

    __slots__ = ("settings", "kind", "state")

    def __init__(self, settings: RouteHlsConfig, kind: str, state: Dict[str, Any]) -> None:
        self.settings = settings
        self.kind = kind
        self.state = state

    def _kind(self, headers: List[Tuple[bytes, bytes]], lowered: List[bytes]) -> Optional[str]:
        """What the response is: a playlist, a segment (or init section, key), or neither."""
        kind = self.kind
        if kind != OTHER:
            return kind
        content_type = headers[lowered.index(b"content-type")][1] if b"content-type" in lowered else None
        if is_playlist_type(content_type):
            return PLAYLIST
        if is_segment_type(content_type):
            return SEGMENT  # not listed in a playlist this worker read, but one by its type
        return None

    def applies(self, status: int, headers: List[Tuple[bytes, bytes]], lowered: List[bytes]) -> bool:
        if status != 200:
            return False
        settings = self.settings
        kind = self._kind(headers, lowered)
        if kind is None:
            return False
        if kind == PLAYLIST:
            return settings.vod_playlist_ttl > 0 or settings.live_playlist_ttl != 0
        return settings.segment_ttl > 0

    def lifetime(
        self, status: int, headers: List[Tuple[bytes, bytes]], lowered: List[bytes], body: Optional[bytes]
    ) -> Optional[float]:
        settings = self.settings
        if self._kind(headers, lowered) != PLAYLIST:
            return settings.segment_ttl or None
        if body is None or len(body) > MAX_PLAYLIST:
            return None
        outline = playlist_outline(body)  # a scan, not a parse: the cache is storing now
        if outline is None:
            return None
        return playlist_lifetime(outline, settings.live_playlist_ttl, settings.vod_playlist_ttl)


class HlsFilter(Filter):
    """Recognition, lifetimes, stream knowledge and prefetch (before the cache)."""

    wants_body = True
    rewrites_body = False

    def __init__(self, core: "ProxyCore", config: RouteConfig, cache: "CacheFilter") -> None:
        self.core = core
        self.config = config
        self.settings = config.hls
        self.cache = cache
        self.route = route_state(core, config.name)
        self.heat = heat_of(core)
        self.throttle = self._throttle(core, self.settings)
        self._key_headers = tuple(name.lower().encode("latin-1") for name in config.cache.key.headers)
        #: Players wait for a stale live playlist's new segments (the route prefetches).
        self._holds_live = self.settings.prefetch_depth > 0 and self.settings.max_prefetch_downloads > 0

    def _throttle(self, core: "ProxyCore", settings: RouteHlsConfig) -> Optional[Callable[["Exchange"], Any]]:
        """What paces a client connection of this route (``None``: no limits, nothing to pay)."""
        rate, after, total = settings.rate_limit, settings.rate_limit_after, settings.max_bandwidth
        if not rate and not total:
            self.route.bandwidth = None
            return None
        bucket = None
        if total:
            share = worker_share(total, core.config.server.workers)
            route_bucket = self.route.bandwidth
            if route_bucket is None:
                route_bucket = self.route.bandwidth = RouteBucket(share, core.clock.seconds())
            route_bucket.set_rate(share)
            bucket = route_bucket.bucket
        reactor = core.reactor

        def throttle(exchange: "Exchange") -> Any:
            return throttle_for(exchange, reactor, rate, after, bucket)

        return throttle

    def _hosts(self, exchange: "Exchange") -> frozenset:
        request_host = exchange.request.host
        if self.settings.rewrite_absolute_urls:
            return _hosts_for(self.core, self.config, request_host)
        return origin_hosts(request_host, ())

    # -- request side -----------------------------------------------------------------

    def request(self, view: FilterRequest) -> None:
        exchange: "Exchange" = view._exchange
        request = exchange.request
        if request.method != b"GET":
            return None
        state = view.state
        path = request.path
        registry = self.route.registry
        throttle = self.throttle
        if throttle is not None:
            if type(exchange.client) is not InternalClient:
                throttle(exchange)
        elif getattr(exchange.client, "hls_throttle", None) is not None:
            exchange.client.hls_throttle.configure(0, 0, None)  # limits gone (a reload): unpaced
        if is_playlist_path(path) or registry.version(path.decode("latin-1")) is not None:
            state["hls"] = PLAYLIST
            state["lifetime_override"] = Lifetimes(self.settings, PLAYLIST, state)
            state["collapse_stale"] = True
            text = path.decode("latin-1")
            group = registry.groups.get(text)  # a rendition some master playlist lists
            if group is not None:
                state["hls_stream"] = (group[0], text)
            elif text in registry.renditions:
                state["hls_stream"] = (text, text)
            else:
                state["hls_stream"] = (text, None)
            if (
                self._holds_live
                and type(exchange.client) is not InternalClient
                and PREFETCH_HEADER_LOWER not in request.lowered
                and b"range" not in request.lowered
            ):
                rendition = registry.renditions.get(text)
                if rendition is not None and rendition.kind in (LIVE, EVENT) and rendition.target_duration > 0:
                    return self._live(exchange, text, rendition)
            return None
        target = (path + request.query).decode("latin-1")
        ref = registry.segment(target)
        if ref is None:
            state["hls"] = OTHER
            state["lifetime_override"] = Lifetimes(self.settings, OTHER, state)
            return None
        state["hls"] = ref.role
        state["lifetime_override"] = Lifetimes(self.settings, ref.role, state)
        rendition = ref.rendition
        state["hls_stream"] = (registry.group_of(rendition)[0], rendition.path)
        if (
            ref.role == SEGMENT
            and PREFETCH_HEADER_LOWER not in request.lowered
            and type(exchange.client) is not InternalClient  # warm-ups are no viewers
        ):
            self._viewer_asked(exchange, ref)
        return None

    def _live(self, exchange: "Exchange", path: str, rendition: Rendition) -> "Optional[Deferred[None]]":
        """A player asks for a live playlist: wait if it is being refreshed (or
        refresh it now, when it is stale) until its new segments are stored."""
        holds = self.route.live
        key = self.cache.key_for(exchange)
        hold = holds.get(key)
        if hold is not None:
            return hold.wait(exchange)
        core = self.core
        tiers = core.cache
        if tiers is None or key in core.cache_fills:
            return None  # (a refresh under way without a hold: the cache joins it)
        request = exchange.request
        entry = tiers.memory.peek(key)
        if isinstance(entry, VaryMarker):
            entry = tiers.memory.peek((key, variant_key(entry.names, request.headers, request.lowered)))
        if not isinstance(entry, CachedObject) or entry.status != 200:
            return None
        outcome, _ = policy.evaluate(entry.policy, policy.NO_DIRECTIVES, core.clock.seconds())
        if outcome != policy.MUST_REVALIDATE:
            return None  # fresh (or servable stale): the cache answers it
        settings = self.settings
        outline = Playlist(rendition.kind, target_duration=rendition.target_duration)
        interval = playlist_lifetime(outline, settings.live_playlist_ttl, settings.vod_playlist_ttl)
        bound = hold_bound(rendition.target_duration, interval if interval is not None else entry.policy.lifetime)
        server = core.server
        deadline = server.upstream_connect_timeout + server.upstream_read_timeout + bound
        headers = self._copied_headers(request)
        host, scheme, target = request.host, exchange.client.scheme, request.target
        reactor = core.reactor

        def refresh() -> "Deferred[int]":
            # Next turn: not from inside this request's filter chain.
            done: "Deferred[int]" = Deferred()

            def start() -> None:
                try:
                    fetch(core, host, target, headers, scheme=scheme).chainDeferred(done)
                except Exception:
                    done.errback()

            reactor.callLater(0, start)
            return done

        hold = holds.start(key, path, bound, deadline, refresh)
        if hold is None:
            return None
        hold.context = (host, scheme, headers)
        return hold.wait(exchange)

    def _held_learned(self, hold: Hold, fresh: List[str]) -> None:
        """The playlist a hold waits for is learnt: prefetch its new segments (next turn)."""
        targets = hold.learned(fresh, self.settings.prefetch_depth)
        if targets:
            self.core.reactor.callLater(0, self._held_prefetch, hold, targets)

    def _held_prefetch(self, hold: Hold, targets: List[str]) -> None:
        if hold.released:
            return
        prefetcher = self.route.prefetcher
        host, scheme, headers = hold.context
        try:
            prefetcher.prefetch(self.cache, host, scheme, targets, headers, self.settings.max_prefetch_downloads)
        finally:
            hold.watch(prefetcher.watch(targets, hold.segment_done))

    def _copied_headers(self, request: Any) -> List[Tuple[bytes, bytes]]:
        """The fields of a player's request an internal one on its behalf carries."""
        wanted = self._key_headers
        return [
            (name, value)
            for (name, value), lname in zip(request.headers, request.lowered)
            if lname in _PREFETCH_COPIED or lname in wanted
        ]

    def _viewer_asked(self, exchange: "Exchange", ref: Any) -> None:
        """A player asked for a segment: prefetch what follows if it watches sequentially."""
        settings = self.settings
        route = self.route
        request = exchange.request
        rendition = ref.rendition
        agent = b""
        if b"user-agent" in request.lowered:
            agent = request.headers[request.lowered.index(b"user-agent")][1]
        viewer = (exchange.client_ip, agent, route.registry.group_of(rendition))
        sequential = route.viewers.saw(viewer, rendition, ref.sequence, self.core.clock.seconds())
        if not sequential or settings.prefetch_depth <= 0 or settings.max_prefetch_downloads <= 0:
            return
        targets = route.registry.following(rendition, ref.sequence, settings.prefetch_depth)
        if targets:
            self._prefetch(exchange, targets)

    def _prefetch(self, exchange: "Exchange", targets: List[str]) -> None:
        request = exchange.request
        headers = self._copied_headers(request)
        # After this request's own hooks have run: not from inside the chain.
        self.core.reactor.callLater(
            0,
            self.route.prefetcher.prefetch,
            self.cache,
            request.host,
            exchange.client.scheme,
            targets,
            headers,
            self.settings.max_prefetch_downloads,
        )

    def _account(self, exchange: "Exchange", stream: Tuple[str, Optional[str]]) -> None:
        """Per-stream figures of a request that is over."""
        internal = type(exchange.client) is InternalClient
        origin = exchange.bytes_sent if exchange.upstream_started else 0
        viewer = None
        if not internal:
            request = exchange.request
            agent = b""
            if b"user-agent" in request.lowered:
                agent = request.headers[request.lowered.index(b"user-agent")][1]
            viewer = (exchange.client_ip, agent)
        self.route.streams.finished(
            self.core.clock.seconds(), stream[0], stream[1], viewer,
            0 if internal else exchange.bytes_sent, origin, not exchange.upstream_started,
        )

    # -- response side: learning from playlists -----------------------------------------

    def response_head(self, view: FilterRequest, response: FilterResponse) -> None:
        state = view.state
        kind = state.get("hls")
        if kind is None or response.status != 200:
            return None
        if kind == PLAYLIST or (kind == OTHER and is_playlist_type((response.header("content-type") or "").encode("latin-1"))):
            state["hls"] = PLAYLIST
            state["hls_body"] = []
            state["hls_size"] = 0
        return None

    def response_body(self, view: FilterRequest, data: bytes) -> bytes:
        state = view.state
        chunks = state.get("hls_body")
        if chunks is not None:
            size = state["hls_size"] + len(data)
            if size > MAX_PLAYLIST:
                state["hls_body"] = None
            else:
                state["hls_size"] = size
                chunks.append(bytes(data))
        return data

    def response_end(self, view: FilterRequest) -> None:
        state = view.state
        chunks = state.pop("hls_body", None)
        if chunks is None:
            return None
        exchange: "Exchange" = view._exchange
        state["hls_learned"] = True
        self._parse(b"".join(chunks), exchange.request.path.decode("latin-1"), self._learn_passed, view, exchange)
        return None

    def _parse(self, body: bytes, path: str, then: Callable[..., None], *args: Any) -> None:
        """``then(playlist, *args)`` once ``body`` (of the playlist at ``path``) is
        parsed: at once for a small body, from the reactor's thread pool for one
        over :data:`THREAD_PARSE` (``path`` is in ``parsing_paths`` meanwhile)."""
        reactor = self.core.reactor
        pool = getattr(reactor, "getThreadPool", None)
        if len(body) <= THREAD_PARSE or pool is None:
            then(parse_playlist(body), *args)
            return
        from twisted.internet.threads import deferToThreadPool

        route = self.route
        route.counters["threaded_parses"] += 1
        parsing = route.parsing_paths
        parsing[path] = parsing.get(path, 0) + 1

        def parsed(result: Any) -> Any:
            left = parsing.get(path, 1) - 1
            if left > 0:
                parsing[path] = left
            else:
                parsing.pop(path, None)
            return result

        call = deferToThreadPool(reactor, pool(), parse_playlist, body)
        call.addBoth(parsed)
        call.addCallback(then, *args)
        call.addErrback(lambda failure: log.failure("hls: parsing a playlist failed", failure))

    def _learn_passed(self, playlist: Optional[Playlist], view: FilterRequest, exchange: "Exchange") -> None:
        """Learn a playlist that passed this filter (from the origin, or a cache hit)."""
        state = view.state
        self.route.parsed(playlist)
        if playlist is None:
            state["hls_learned"] = False
            return
        # The version stored, when finished() ran before a threaded parse was done.
        version = state.get("hls_version", -1.0)
        path = exchange.request.path.decode("latin-1")
        fresh = self.route.registry.learn(path, playlist, self._hosts(exchange), version=version)
        hold = self.route.live.learned(path, fresh) if self.route.live.holds else None
        if hold is not None:
            # The refresh players are held for: its new segments before them.
            self.route.counters["live_segments_seen"] += len(fresh)
            self._held_learned(hold, fresh)
        elif fresh and playlist.is_live and state.get("stored"):
            # A live playlist this worker fetched lists new segments: the
            # players will ask for them now; fetch the newest ones at once.
            self.route.counters["live_segments_seen"] += len(fresh)
            depth = self.settings.prefetch_depth
            if depth > 0 and self.settings.max_prefetch_downloads > 0:
                self._prefetch(exchange, fresh[-depth:])

    def finished(self, view: FilterRequest, complete: bool) -> None:
        """A playlist request is over: learn the version the cache holds now
        (served from the cache, maybe stored by another worker)."""
        state = view.state
        throttle = getattr(view._exchange.client, "hls_throttle", None)
        if throttle is not None:
            throttle.finished()  # a later request on the connection is not paced
        stream = state.get("hls_stream")
        if stream is not None:
            self._account(view._exchange, stream)
        kind = state.get("hls")
        if kind == SEGMENT:
            key = state.get("key")
            if key is not None and type(view._exchange.client) is not InternalClient:
                self.heat.touch(key)  # a player's demand (not a prefetch's, nor a warm-up's)
            return
        if kind != PLAYLIST:
            return
        key = state.get("key")
        tiers = self.core.cache
        if key is None or tiers is None:
            return
        exchange: "Exchange" = view._exchange
        request = exchange.request
        entry = tiers.memory.peek(key)
        if isinstance(entry, VaryMarker):
            entry = tiers.memory.peek((key, variant_key(entry.names, request.headers, request.lowered)))
        if not isinstance(entry, CachedObject) or entry.status != 200 or entry.file is not None:
            return
        path = request.path.decode("latin-1")
        registry = self.route.registry
        version = entry.policy.response_time
        if state.get("hls_learned"):
            state["hls_version"] = version
            registry.set_version(path, version)
            return
        if registry.version(path) == version or len(entry.body) > MAX_PLAYLIST:
            return
        if not is_playlist_path(request.path) and not is_playlist_type(entry.header(b"content-type")):
            return
        if version in self.route.parsing:
            return  # this version is being parsed (in the thread pool) for another request
        hosts = self._hosts(exchange)
        self.route.parsing.add(version)

        def learn(playlist: Optional[Playlist]) -> None:
            self.route.parsing.discard(version)
            self.route.parsed(playlist)
            if playlist is not None:
                fresh = registry.learn(path, playlist, hosts, version=version)
                live = self.route.live
                hold = live.learned(path, fresh) if live.holds else None
                if hold is not None:  # (refreshed by another worker: from the disk tier)
                    self.route.counters["live_segments_seen"] += len(fresh)
                    self._held_learned(hold, fresh)

        self._parse(entry.body, path, learn)


class HlsRewriteFilter(Filter):
    """Playlists from the origin, rewritten before the cache stores them (after the cache).

    Only the playlists it rewrites change length: it declares
    ``rewrites_body = False`` (segments keep their ``Content-Length``) and
    drops the length of those playlists itself, so they go out chunked.
    """

    wants_body = True
    rewrites_body = False

    def __init__(self, core: "ProxyCore", config: RouteConfig) -> None:
        self.core = core
        self.config = config
        self.settings = config.hls
        key = config.cache.key
        #: ``?max_bw=`` is honoured only if it is part of the cache key (else a
        #: playlist capped for one request would be served to others).
        self.per_request = (
            "max_bw" not in key.ignore_query
            and (key.query == "all" or (not isinstance(key.query, str) and "max_bw" in key.query))
        )

    def request(self, view: FilterRequest) -> None:
        exchange: "Exchange" = view._exchange
        request = exchange.request
        if request.method != b"GET":
            return None
        cap = self.settings.max_variant_bandwidth
        if b"max_bw=" in request.query:
            asked, target = take_max_bw(request.target)
            request.target = target  # the origin does not see our parameter
            if asked is not None and self.per_request:
                cap = min(cap, asked) if cap else asked
        view.state["hls_cap"] = cap
        return None

    def response_head(self, view: FilterRequest, response: FilterResponse) -> None:
        state = view.state
        cap = state.get("hls_cap")
        if cap is None or response.status != 200:
            return None
        if not cap and not self.settings.rewrite_absolute_urls:
            return None
        exchange: "Exchange" = view._exchange
        if not is_playlist_path(exchange.request.path) and not is_playlist_type(
            (response.header("content-type") or "").encode("latin-1")
        ):
            return None
        head = response._head
        if head.content_length is not None and head.content_length > MAX_PLAYLIST:
            return None
        head.content_length = None  # its length may change: chunked
        state["hls_rewrite"] = []
        state["hls_rewrite_size"] = 0
        return None

    def response_body(self, view: FilterRequest, data: bytes) -> bytes:
        state = view.state
        chunks = state.get("hls_rewrite")
        if chunks is None:
            return data
        size = state["hls_rewrite_size"] + len(data)
        if size > MAX_PLAYLIST:  # not a playlist we rewrite after all: let it through
            state["hls_rewrite"] = None
            return b"".join(chunks) + bytes(data)
        state["hls_rewrite_size"] = size
        chunks.append(bytes(data))
        return b""

    def response_end(self, view: FilterRequest) -> Optional[bytes]:
        state = view.state
        chunks = state.pop("hls_rewrite", None)
        if chunks is None:
            return None
        exchange: "Exchange" = view._exchange
        hosts = _hosts_for(self.core, self.config, exchange.request.host) if self.settings.rewrite_absolute_urls else ()
        return rewrite_playlist(b"".join(chunks), state.get("hls_cap") or 0, hosts)


def take_max_bw(target: bytes) -> Tuple[Optional[int], bytes]:
    """``max_bw`` (bits/s) of a request target and the target without it.

    The value is a whole number, or one with ``k``/``M``/``G`` (powers of
    1000); an invalid or zero one is ignored (``None``), and dropped all the same.
    """
    path, _, query = target.partition(b"?")
    kept = []
    value: Optional[int] = None
    for part in query.split(b"&"):
        name, _, raw = part.partition(b"=")
        if name != b"max_bw":
            if part:
                kept.append(part)
            continue
        value = _bits(raw) or None
    return value, path + (b"?" + b"&".join(kept) if kept else b"")


def _bits(raw: bytes) -> int:
    text = raw.decode("latin-1").strip().lower()
    scale = 1
    if text[-1:] in ("k", "m", "g"):
        scale = {"k": 1000, "m": 1000**2, "g": 1000**3}[text[-1]]
        text = text[:-1]
    try:
        number = float(text)
    except ValueError:
        return 0
    if not number >= 0 or number > 1e15:
        return 0
    return int(number * scale)


#: LL-HLS delivery directives (RFC 8216bis 6.2.5.2): a blocking playlist
#: reload names the media sequence number and part it waits for, and a
#: delta update what it may skip; the answers differ, so they are part of the key.
LL_HLS_DIRECTIVES = (b"_HLS_msn", b"_HLS_part", b"_HLS_skip")


def key_ll_hls(cache: "CacheFilter") -> None:
    """Keep the LL-HLS directives in the cache key of ``cache`` whatever its
    route's ``cache.key`` says (``query: none``, a list, ``ignore_query``).

    With them in the key, players held on the same blocking reload share
    one cache fill: the first one's request goes to the origin and is held
    there; the others wait for its answer (in the worker, the fill; across
    workers, the disk tier's lock), and later ones get it from the cache.
    """
    query = cache._query
    if query == "none":
        cache._query = frozenset(LL_HLS_DIRECTIVES)
    elif not isinstance(query, str):
        cache._query = frozenset(query) | frozenset(LL_HLS_DIRECTIVES)
    cache._ignore = frozenset(cache._ignore) - frozenset(LL_HLS_DIRECTIVES)


def build_hls_filters(core: "ProxyCore", config: RouteConfig, cache: "CacheFilter") -> Tuple[Filter, Filter]:
    """The filters to put before and after the route's cache filter."""
    key_ll_hls(cache)
    return HlsFilter(core, config, cache), HlsRewriteFilter(core, config)
