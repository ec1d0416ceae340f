"""The shared state of one worker's data path, swappable at run time."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from speedproxy import __version__
from speedproxy.accesslog import AccessLogFormatter, IAccessLog, JsonAccessLogFormatter, open_access_log
from speedproxy.config.model import Config, ServerConfig
from speedproxy.edge.upstream_credentials import rules_for
from speedproxy.panic import describe as describe_panic, group_threshold
from speedproxy.proxy.backlog import Backlog
from speedproxy.proxy.forwarding import ClientAddressResolver
from speedproxy.proxy.splicing import PipePool, splice_supported
from speedproxy.proxy.timeouts import TimeoutSweeper
from speedproxy.proxy.upstream import ConnectionPool
from speedproxy.routing import Route, Router, build_routes
from speedproxy.stats.segment import StatsIndex, StatsSegment, layout_for
from speedproxy.stats.shared import SharedView
from speedproxy.cache.memory import UseCounter
from speedproxy.tracing import apply_tracing
from speedproxy.upstreams import RetryBudget, UpstreamGroup, build_groups

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.cache.tiers import CacheTiers
    from speedproxy.upstreams import Backend
    from speedproxy.proxy.client import ClientConnection
    from speedproxy.proxy.exchange import Exchange

upstream_log = Logger(namespace="speedproxy.upstreams")
access_log_errors = Logger(namespace="speedproxy.access")


class ProxyCore:
    """Config, routes, backends and the connection pool of one worker.

    Every client connection holds a reference to the core and reads the
    *current* settings from it per request, so :meth:`apply_config` takes
    effect for the next request without touching open connections.
    """

    def __init__(
        self,
        reactor: object,
        config: Config,
        access_log: Optional[IAccessLog] = None,
        sweep_interval: float = 0.25,
        shared: Optional[SharedView] = None,
        stats_index: Optional[StatsIndex] = None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor  # type: ignore[assignment]
        self.sweeper = TimeoutSweeper(self.clock, sweep_interval)
        server = config.server
        self.pool = ConnectionPool(
            reactor,
            self.sweeper,
            connect_timeout=server.upstream_connect_timeout,
            read_timeout=server.upstream_read_timeout,
            keepalive_timeout=server.upstream_keepalive_timeout,
            max_idle=server.upstream_keepalive,
        )
        self.access_log = access_log
        #: Opens the access log of a ``server.access_log`` setting (on reload).
        self.open_access_log: Callable[[str], Optional[IAccessLog]] = open_access_log
        self._access_log_setting = config.server.access_log
        self._pipes: Optional[PipePool] = None
        self._formatter = AccessLogFormatter()
        self.server_tag = b"X-Speedproxy: %s\r\nVia: 1.1 speedproxy\r\n" % __version__.encode()
        self.retries = 2
        self.clients: Set["ClientConnection"] = set()
        self.groups: Dict[str, UpstreamGroup] = {}
        self.routes: List[Route] = []
        self._id_prefix = os.urandom(4).hex().encode("ascii")
        self._id_counter = 0
        self.requests_served = 0
        self._drained: List[Deferred] = []
        self.sweeper.also.append(self.housekeeping)
        #: Called as ``(exchange, status, seconds)`` for requests at or over
        #: ``server.slow_request_threshold`` (set by the request tracker).
        self.on_slow_request: Optional[Callable[["Exchange", int, float], None]] = None
        self.slow_threshold = float("inf")
        #: Some route has ``protocols.grpc`` (HTTP/2 streams are checked for gRPC calls).
        self.grpc_routes = False
        #: HTTP/2 connections to ``h2c``/``h2`` backends (made on the first gRPC call).
        self.h2_pool: Optional[Any] = None
        #: The worker's cache tiers (``None`` until a route enables its cache).
        self.cache: Optional["CacheTiers"] = None
        #: Origin responses being shared per cache key (request coalescing).
        self.cache_fills: Dict[bytes, Any] = {}
        #: Keys being refreshed in the background (stale-while-revalidate).
        self.cache_refreshing: Set[bytes] = set()
        self.cache_uses = UseCounter()
        #: Called with cache keys an unsafe request invalidated here, so the
        #: other workers drop them too (set by the worker process).
        self.announce_invalidation: Optional[Callable[[List[bytes]], None]] = None
        if shared is None:
            # Serving in one process: a private segment with one slot.
            segment = StatsSegment.anonymous(
                layout_for(1, len(config.routing), sum(len(b) for b in config.backends.values()))
            )
            shared = SharedView(segment, 0)
        self.shared = shared
        self.stats = shared.writer
        self.stats_index = stats_index
        #: Span recorder (``None``: no span export) and new trace ids, set
        #: from ``config.tracing`` by :func:`speedproxy.tracing.apply_tracing`.
        self.tracer: Optional[Any] = None
        self.trace_ids: Any = None
        self.apply_config(config, stats_index)

    def apply_config(self, config: Config, stats_index: Optional[StatsIndex] = None) -> None:
        """Make ``config`` the live one; backend state of kept ids survives.

        ``stats_index`` (from the master) numbers routes and backends in the
        shared stats segment; without one the core numbers them itself.
        """
        if stats_index is None:
            stats_index = self.stats_index or StatsIndex()
            stats_index.assign_config(config, self.shared.segment.layout)
        self.stats_index = stats_index
        server = config.server
        # Slots 0..N-1 belong to the N workers; the rest stay zero.
        workers = server.workers if server.workers is not None else (os.cpu_count() or 1)
        self.shared.use_slots(max(workers, self.shared.slot + 1))
        self.config = config
        self.server: ServerConfig = server
        self.resolver = ClientAddressResolver(server.trusted_proxies, server.real_ip_header)
        self.groups = build_groups(config.backends, self.groups)
        self._apply_cache(config)
        self.routes = build_routes(config.routing, self.groups, self.routes, self.reactor, self)
        self.router = Router(self.routes)
        self.grpc_routes = any(route.grpc is not None for route in self.routes)
        self.retries = server.retries
        self.slow_threshold = server.slow_request_threshold
        apply_tracing(self, config.tracing)
        if server.access_log != getattr(self, "_access_log_setting", server.access_log):
            self._switch_access_log(server.access_log)
        wanted = JsonAccessLogFormatter if server.access_log_format == "json" else AccessLogFormatter
        if type(self._formatter) is not wanted:
            self._formatter = wanted()
        for name, group in self.groups.items():
            if group.retry_budget.ratio != server.retry_budget:
                group.retry_budget = RetryBudget(server.retry_budget)
            for backend in group.backends:
                backend.shared = self.shared
                backend.stats_index = stats_index.backends.get(
                    StatsIndex.backend_key(name, backend.id), -1
                )
            self._configure_group(name, group, config, stats_index)
        for route in self.routes:
            route.stats_index = stats_index.routes.get(route.name, -1)
        if server.zero_copy and splice_supported():
            if self._pipes is None or self._pipes.closed:
                self._pipes = PipePool()
            self.pool.pipes = self._pipes
        else:
            self.pool.pipes = None
            if self._pipes is not None:
                self._pipes.close()
        self.pool.configure(
            server.upstream_connect_timeout,
            server.upstream_read_timeout,
            server.upstream_keepalive_timeout,
            server.upstream_keepalive,
        )

    def _configure_group(self, name: str, group: UpstreamGroup, config: Config, stats_index: StatsIndex) -> None:
        """Panic threshold, stats slot and queue settings of one group."""
        server = config.server
        group.panic_threshold = group_threshold(config.backends.get(name, ()), server.panic_threshold)
        group.stats_index = stats_index.upstreams.get(name, -1)
        group.rules = rules_for(config.upstreams.get(name))
        group.update_panic()
        if group.backlog is None:
            group.backlog = Backlog(self.clock, group, self.shared)
        group.backlog.configure(server.queue_timeout, server.queue_size, self.shared)
        self.shared.set_queue(group.stats_index, len(group.waiting))

    def set_backend_health(self, upstream: str, backend_id: str, healthy: bool) -> bool:
        """Apply an active health check's verdict; False if no such backend.

        A backend that comes back also leaves any passive down period (the
        probe just succeeded) and starts its slow-start ramp.
        """
        group = self.groups.get(upstream)
        backend = group.get(backend_id) if group is not None else None
        if backend is None:
            return False
        if healthy and not backend.healthy:
            backend.up_since = self.clock.seconds()
        backend.healthy = healthy
        if healthy:
            if backend.down_until:
                backend.half_open()
            backend.consecutive_failures = 0
        group.update_panic()  # type: ignore[union-attr]
        return True

    def _switch_access_log(self, setting: str) -> None:
        """A reload named another access log: flush and close the old one first."""
        try:
            new = self.open_access_log(setting)
        except OSError as error:
            access_log_errors.error("access log {setting!r} cannot be opened ({error}); keeping the old one", setting=setting, error=error)
            return
        old, self.access_log = self.access_log, new
        self._access_log_setting = setting
        if old is not None:
            old.close()

    def reopen_access_log(self) -> None:
        """SIGUSR1 (logrotate): reopen the access log file; no line is lost."""
        log = self.access_log
        reopen = getattr(log, "reopen", None)
        if reopen is not None:
            reopen()

    def _apply_cache(self, config: Config) -> None:
        """Open the cache tiers when a route caches; follow ``cache:`` changes."""
        wanted = any(route.cache.enabled for route in config.routing.values())
        if self.cache is None:
            if wanted:
                from speedproxy.cache.tiers import CacheTiers

                self.cache = CacheTiers(config.cache, reactor=self.reactor)
        else:
            self.cache.apply_config(config.cache)

    def housekeeping(self, now: float) -> None:
        """Every sweep: passive health verdicts, shared with the other workers."""
        shared = self.shared
        for group in self.groups.values():
            for backend in group.backends:
                if backend.stats_index >= 0:
                    others = shared.down_until(backend.stats_index)
                    if others > now and others > backend.down_until:
                        backend.down_until = others  # another worker saw it fail
                if backend.down_until and backend.down_until <= now:
                    backend.half_open()
            group.update_panic()
            if group.panic != group.panic_reported:
                self._report_panic(group)
        if self.access_log is not None:
            self.access_log.flush()
        cache = self.cache
        if cache is not None:
            report = getattr(self.stats, "cache_memory", None)
            if report is not None:
                memory = cache.memory
                report(memory.bytes, len(memory), memory.evictions)

    def _report_panic(self, group: UpstreamGroup) -> None:
        """Export a group's new panic state; log it from one worker only."""
        group.panic_reported = group.panic
        self.shared.set_panic(group.stats_index, group.panic)
        if self.shared.speaks_for_all():
            message = describe_panic(group.name, group.backends, group.panic_threshold, group.panic)
            upstream_log.info("{message}", message=message)

    def disconnect_backend(self, upstream: str, backend_id: str) -> int:
        """Close every connection to one backend, pooled and in flight.

        In-flight requests to it fail as if the backend had dropped them
        (retried elsewhere when that is safe).  Returns how many closed.
        """
        group = self.groups.get(upstream)
        backend = group.get(backend_id) if group is not None else None
        if backend is None:
            return 0
        return self.cut_backend(backend)

    def cut_backend(self, backend: "Backend", close_idle: bool = True) -> int:
        """Abort a backend's in-flight connections (and its idle ones).

        Requests cut this way fail without counting against the backend's
        passive health: an operator did it, not the backend.
        """
        config = backend.config
        closed = self.pool.close_backend(config.host, config.port) if close_idle else 0
        for exchange in self.in_flight():
            if exchange.backend is backend and exchange.upstream is not None:
                exchange.cut_by_operator()
                closed += 1
        if self.h2_pool is not None:  # gRPC calls and HTTP/2 connections (speedproxy.proxy.grpc_relay)
            from speedproxy.proxy.grpc_dispatch import cut_calls

            closed += cut_calls(self.h2_pool, backend, close_idle)
        return closed

    def in_flight(self) -> List["Exchange"]:
        """Every exchange in progress: one per HTTP/1.1 connection, one per HTTP/2 stream."""
        found = []
        for client in list(self.clients):
            exchange = client.exchange
            if exchange is not None:
                found.append(exchange)
            streams = getattr(client, "streams", None)  # speedproxy.proxy.http2
            if streams:
                found.extend(stream.exchange for stream in list(streams.values()) if stream.exchange is not None)
        return found

    def start(self) -> None:
        """Start the timers of the data path."""
        self.sweeper.start()

    def stop(self) -> None:
        self.sweeper.stop()
        for group in self.groups.values():
            if group.backlog is not None:
                group.backlog.stop()
        self.pool.close_idle()
        if self.h2_pool is not None:
            self.h2_pool.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.cache is not None:
            self.cache.close()
        if self.tracer is not None:
            self.tracer.shutdown()

    # -- bookkeeping used by connections -------------------------------------

    def new_request_id(self) -> bytes:
        """A request id unique to this worker process."""
        self._id_counter += 1
        return b"%s-%x" % (self._id_prefix, self._id_counter)

    def client_opened(self, client: "ClientConnection") -> None:
        self.clients.add(client)
        self.sweeper.watch(client)
        self.shared.client_opened()

    def client_closed(self, client: "ClientConnection") -> None:
        self.clients.discard(client)
        self.sweeper.unwatch(client)
        self.shared.client_closed()
        if not self.clients and self._drained:
            waiting, self._drained = self._drained, []
            for deferred in waiting:
                deferred.callback(None)

    def when_no_clients(self) -> Deferred:
        """A Deferred that fires once no client connection is open."""
        if not self.clients:
            return succeed(None)
        deferred: Deferred = Deferred()
        self._drained.append(deferred)
        return deferred

    def over_connection_limit(self) -> bool:
        """Is ``server.max_conn`` exceeded, counting every worker's clients?"""
        if len(self.clients) > self.server.max_conn:
            return True
        return self.shared.active_clients() > self.server.max_conn

    def log_exchange(self, exchange: "Exchange", status: int, grpc_status: Optional[int] = None) -> None:
        """Account for (and access-log) one finished exchange (or gRPC call, with its status)."""
        self.requests_served += 1
        backend = exchange.tried[-1] if exchange.tried else None
        route = exchange.route
        seconds = self.clock.seconds() - exchange.started
        self.stats.request_done(
            route.stats_index if route is not None else -1,
            backend.stats_index if backend is not None else -1,
            status,
            seconds,
            exchange.bytes_sent + exchange.head_bytes,
            exchange.bytes_received,
        )
        if seconds >= self.slow_threshold and self.on_slow_request is not None:
            self.on_slow_request(exchange, status, seconds)
        if self.tracer is not None:
            self.tracer.record(exchange, status, exchange.started + seconds)
        log = self.access_log
        if log is None:
            return
        request = exchange.request
        lowered = request.lowered  # lower-cased once by the parser
        headers = request.headers
        log.write(
            self._formatter.format(
                exchange.client_ip,
                request.method,
                request.target,
                request.version,
                status,
                exchange.bytes_sent,
                headers[lowered.index(b"referer")][1] if b"referer" in lowered else None,
                headers[lowered.index(b"user-agent")][1] if b"user-agent" in lowered else None,
                seconds,
                backend.config.address if backend is not None else "-",
                exchange.request_id,
                exchange.queue_time if exchange.queued_at >= 0.0 else None,
                request.host,
                exchange.trace[0],
                grpc_status,
            )
        )

    def log_refusal(self, client: "ClientConnection", status: int, request_id: bytes) -> None:
        """Access-log a request refused before it could be parsed."""
        self.requests_served += 1
        self.stats.request_done(-1, -1, status, 0.0, 0)
        log = self.access_log
        if log is not None:
            log.write(
                self._formatter.format(
                    client.peer_ip, b"-", b"-", b"-", status, 0, None, None, 0.0, "-", request_id
                )
            )
