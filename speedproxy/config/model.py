"""The validated, immutable configuration model.

Every class here is a frozen dataclass with a default for every field, so a
whole config can be swapped atomically at run time (SIGHUP, admin API) by
replacing one :class:`Config` reference.  Durations are float seconds and sizes
are int bytes; each field's kind, declared once in its section's table
(:mod:`speedproxy.config.schema`; ``server``, ``routes``... modules), reads
the human forms (``30s``, ``64KiB``) found in YAML and writes them back.  A
new field goes into that table too: ``tests/unit/config/test_config_schema.py``
walks every field of every class here against the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, List, Mapping, Optional, Tuple
from typing import Union

#: Balancer names an operator may use in ``routing.*.load_balancer``.
BALANCER_NAMES = (
    "round_robin",
    "weight",
    "ip_hash",
    "least_connections",
    "least_connections_weight",
    "performance",
)

#: Backend schemes spoken over HTTP/2 (gRPC routes only).
HTTP2_SCHEMES = ("h2c", "h2")


@dataclass(frozen=True)
class HealthCheckConfig:
    """Active health check of one backend."""

    path: str = "/health"
    interval: float = 30.0
    timeout: float = 5.0
    #: Consecutive failures before a backend is marked down.
    failures: int = 3
    #: Consecutive successes before a down backend is marked up again.
    successes: int = 2
    #: Inclusive range of statuses that count as healthy.
    expected_status: Tuple[int, int] = (200, 399)
    #: Passive check in every worker: consecutive failed requests (connect
    #: errors, timeouts, and 5xx when ``passive_5xx``) that take the backend
    #: out for ``unhealthy_timeout``.  0 disables passive checks.
    passive_failures: int = 3
    passive_5xx: bool = False
    unhealthy_timeout: float = 10.0
    #: Panic threshold of the backend's upstream group, in percent: below
    #: this share of backends healthy by passive checks, the group balances
    #: across all its actively healthy backends.  ``None``: not set here,
    #: ``server.panic_threshold`` applies.  Backends of one group must agree.
    panic_threshold: Optional[float] = None


@dataclass(frozen=True)
class BackendConfig:
    """One origin server inside an upstream group."""

    id: str
    host: str = "127.0.0.1"
    port: int = 80
    weight: int = 100
    #: ``http``, ``https`` (HTTP/1.1), ``h2c`` (HTTP/2 in clear) or ``h2``
    #: (HTTP/2 over TLS, ALPN ``h2``); the HTTP/2 ones serve gRPC routes only.
    scheme: str = "http"
    active: bool = True
    max_conn: int = 1000
    health_check: Optional[HealthCheckConfig] = None
    #: The admin API of this backend when it is a speedproxy too (for
    #: ``cache.cascade_purge``), e.g. ``http://10.0.0.2:9901``, and its key.
    admin_url: str = ""
    admin_api_key: str = ""
    #: A display name (SpeedMimi's ``name``), shown beside the id in the
    #: admin API, ``/stats`` and metrics labels; empty: none.
    name: str = ""

    @cached_property
    def address(self) -> str:
        """``host:port`` as shown in logs and the access log (worked out once)."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProtocolBalancers:
    """Balancer used for long-lived protocols on a route."""

    websocket: str = "ip_hash"
    sse: str = "ip_hash"
    #: gRPC calls (HTTP/2, ``content-type: application/grpc``) relayed over
    #: HTTP/2 to the route's ``h2c``/``h2`` backends with this balancer
    #: (:mod:`speedproxy.proxy.grpc_relay`); ``off``: not a gRPC route.
    grpc: str = "off"


@dataclass(frozen=True)
class FilterConfig:
    """One entry of a route's ``filters`` list."""

    name: str
    #: The options as written (plain YAML/JSON data).
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: The options as the filter kind's ``check_options`` returned them.
    checked: Any = field(default=None, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class CacheKeyConfig:
    """What a route's cache key is made of, beyond scheme, host and path."""

    #: ``"all"``, ``"none"`` or a tuple of the query parameter names kept.
    query: Any = "all"
    #: Query parameters left out of the key (signatures, expiry stamps).
    ignore_query: Tuple[str, ...] = ()
    #: Request header fields added to the key.
    headers: Tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteCacheConfig:
    """A route's HTTP cache (RFC 9111 shared cache)."""

    enabled: bool = False
    #: Freshness given to responses that may be cached heuristically (no
    #: Cache-Control max-age/s-maxage nor Expires); 0: none are.
    default_ttl: float = 0.0
    key: CacheKeyConfig = field(default_factory=CacheKeyConfig)
    #: Serve stale this long past freshness while refreshing in the background.
    stale_while_revalidate: float = 0.0
    #: Serve stale this long past freshness when the origin fails.
    stale_if_error: float = 0.0
    #: Store a response only once its key has been asked for this many times.
    min_uses: int = 1


@dataclass(frozen=True)
class RouteHlsConfig:
    """A route in front of an HLS origin (:mod:`speedproxy.hls`); needs the route's cache."""

    enabled: bool = False
    #: Segments fetched ahead of the one a player asked for (0: no prefetch).
    prefetch_depth: int = 3
    #: Prefetches of this route under way at once, per worker (more are dropped).
    max_prefetch_downloads: int = 8
    #: Freshness of live and EVENT media playlists; ``None`` (``auto``): half
    #: the playlist's target duration (RFC 8216 6.2.2); 0: the origin's.
    live_playlist_ttl: Optional[float] = None
    #: Freshness of VOD media playlists and master playlists (0: the origin's).
    vod_playlist_ttl: float = 3600.0
    #: Freshness of segments, init sections and keys listed in a playlist (0: the origin's).
    segment_ttl: float = 7 * 86400.0
    #: Playlist URIs pointing at the origin become relative (players come back through us).
    rewrite_absolute_urls: bool = True
    #: Bytes/s per client connection (0: unlimited), after ``rate_limit_after``
    #: bytes of each response (:mod:`speedproxy.hls.bandwidth`).
    rate_limit: int = 0
    rate_limit_after: int = 2 * 1024 * 1024
    #: Bytes/s for the whole route (0: unlimited), split between the workers.
    max_bandwidth: int = 0
    #: Master playlists list only variants whose BANDWIDTH (bits/s) is at most
    #: this (0: no cap); a request's ``?max_bw=`` may lower it.
    max_variant_bandwidth: int = 0


@dataclass(frozen=True)
class CorsConfig:
    """Cross-origin requests a route allows (:mod:`speedproxy.edge.cors`)."""

    #: Allowed origins (``https://player.example.com``, ``https://*.example.com``) or ``*``.
    origins: Tuple[str, ...] = ()
    methods: Tuple[str, ...] = ("GET", "HEAD")
    #: Request headers a page may send (besides the CORS-safelisted ones), or ``*``.
    headers: Tuple[str, ...] = ()
    #: Response headers a page may read (besides the CORS-safelisted ones).
    expose: Tuple[str, ...] = ()
    credentials: bool = False
    #: How long a browser may keep a preflight answer (0: not sent).
    max_age: float = 600.0


@dataclass(frozen=True)
class SignedUrlsConfig:
    """Requests of a route must carry a valid HMAC signature (:mod:`speedproxy.edge.signed_urls`)."""

    #: The keys, resolved (the first signs, every one verifies).
    secrets: Tuple[str, ...] = field(default=(), repr=False)
    #: The keys as written (``${file:...}``, ``${env:...}`` or the key itself): shown and written back.
    sources: Tuple[str, ...] = field(default=(), repr=False)
    param_signature: str = "sig"
    param_expires: str = "exp"
    #: The signature also covers the client's IP address.
    bind_client_ip: bool = False
    #: ``signed``: the signature covers the query too (its canonical form,
    #: :mod:`speedproxy.edge.canonical_query`); ``ignore``: the path only.
    query: str = "signed"


@dataclass(frozen=True)
class RateLimitConfig:
    """A token bucket per client of a route, shared by the workers (:mod:`speedproxy.edge.rate_limit`)."""

    #: ``requests`` tokens come back every ``per`` seconds...
    requests: int = 20
    per: float = 1.0
    #: ...into a bucket of at most ``burst`` (0: ``requests``).
    burst: int = 0
    #: Whose bucket: ``client_ip``, ``header:<Name>`` (the client IP without
    #: the header) or ``session`` (the client IP without a session).
    key: str = "client_ip"

    @property
    def rate(self) -> float:
        return self.requests / self.per

    @property
    def capacity(self) -> int:
        return self.burst or self.requests


@dataclass(frozen=True)
class ConnectionLimitConfig:
    """Requests in flight per client IP on the host (:mod:`speedproxy.edge.connection_limit`)."""

    per_client: int = 32
    #: Status of a refused request (nginx's ``limit_conn_status`` is 503).
    status: int = 503


@dataclass(frozen=True)
class SessionsConfig:
    """Client sessions on a route (:mod:`speedproxy.edge.sessions`)."""

    #: Requests without a live session are refused (403).
    required: bool = True
    #: The cookie (and query parameter) carrying the session id.
    cookie: str = "spx_session"
    ttl: float = 4 * 3600.0
    #: Live sessions one client IP may hold at once.
    max_per_client: int = 3
    #: Routes with the same realm accept each other's sessions; empty: the route's name
    #: (a session opens only the route it was started on).
    realm: str = ""
    #: A session is accepted only from the client IP it was opened for.
    bind_client_ip: bool = False


@dataclass(frozen=True)
class RouteCompressionConfig:
    """Responses of a route compressed for clients (:mod:`speedproxy.edge.compression`)."""

    #: Media types compressed (``text/*`` matches every text type).
    types: Tuple[str, ...] = ("application/vnd.apple.mpegurl", "application/json", "text/*")
    #: Bodies shorter than this (by ``Content-Length``) are sent as they are.
    min_size: int = 1024
    gzip_level: int = 5
    #: Offer brotli too when the ``brotli`` package is installed (``speedproxy[brotli]``).
    brotli: bool = True
    #: brotli quality of a stored object's kept copy (compressed once).
    brotli_level: int = 4
    #: brotli quality of an answer compressed as it is relayed (every request pays it).
    brotli_stream_level: int = 2


@dataclass(frozen=True)
class UpstreamRulesConfig:
    """What the proxy adds to requests sent to one upstream group, and checks
    in its answers (:mod:`speedproxy.edge.upstream_credentials`,
    :mod:`speedproxy.edge.response_validation`)."""

    #: Query parameters added to (replacing any of the same name in) every
    #: request target: ``(name, value)``, values resolved (secrets).
    add_query: Tuple[Tuple[str, str], ...] = field(default=(), repr=False)
    #: Header fields set on every request: ``(name, value)``, values resolved.
    set_headers: Tuple[Tuple[str, str], ...] = field(default=(), repr=False)
    #: The values of both as written (``${env:...}``, ``${file:...}`` or
    #: the value itself): what is shown and written back.
    add_query_sources: Tuple[Tuple[str, str], ...] = field(default=(), repr=False)
    set_headers_sources: Tuple[Tuple[str, str], ...] = field(default=(), repr=False)
    #: Media types a 2xx answer must have (``image/*``); others are a
    #: backend failure.  Empty: not checked.
    expect_content_type: Tuple[str, ...] = ()


@dataclass(frozen=True)
class CacheConfig:
    """The cache tiers of a host (``cache:`` at the top of the file)."""

    #: Memory tier per worker, in bytes (0: no memory tier).
    memory_size: int = 64 * 1024 * 1024
    #: Disk tier shared by the workers of the host (empty: no disk tier).
    disk_path: str = ""
    disk_size: int = 10 * 1024 * 1024 * 1024
    #: Larger responses are relayed, not stored.
    max_object_size: int = 1024 * 1024 * 1024
    #: Forward clears and purges to backends that are speedproxies too.
    cascade_purge: bool = False


@dataclass(frozen=True)
class RouteConfig:
    """Maps a path prefix (and optionally a Host) to an upstream group."""

    name: str
    path: str = "/"
    host: Optional[str] = None
    upstream: str = "default"
    load_balancer: str = "least_connections_weight"
    protocols: ProtocolBalancers = field(default_factory=ProtocolBalancers)
    #: Filters run on this route's requests and responses, in order.
    filters: Tuple[FilterConfig, ...] = ()
    cache: RouteCacheConfig = field(default_factory=RouteCacheConfig)
    hls: RouteHlsConfig = field(default_factory=RouteHlsConfig)
    #: Responses compressed for clients (``None``: never).
    compression: Optional[RouteCompressionConfig] = None
    #: Client addresses (CIDR) let in / refused (:mod:`speedproxy.edge.ip_lists`).
    allow: Tuple[str, ...] = ()
    deny: Tuple[str, ...] = ()
    #: Cross-origin requests (``None``: no CORS handling).
    cors: Optional[CorsConfig] = None
    #: Signed URLs required (``None``: not required).
    signed_urls: Optional[SignedUrlsConfig] = None
    #: Token bucket per client (``None``: no limit; :mod:`speedproxy.edge.rate_limit`).
    rate_limit: Optional[RateLimitConfig] = None
    #: Requests in flight per client (``None``: no limit; :mod:`speedproxy.edge.connection_limit`).
    connection_limit: Optional[ConnectionLimitConfig] = None
    #: Sessions (``None``: none; :mod:`speedproxy.edge.sessions`).
    sessions: Optional[SessionsConfig] = None


@dataclass(frozen=True)
class ServerConfig:
    """Client-facing listener and data-path limits."""

    host: str = "0.0.0.0"
    port: int = 8080
    #: ``None`` means ``auto``: one worker per CPU.
    workers: Optional[int] = None
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    idle_timeout: float = 60.0
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 60.0
    #: Idle pooled upstream connections are closed after this long.
    upstream_keepalive_timeout: float = 60.0
    #: Idle pooled upstream connections kept per backend and worker.
    upstream_keepalive: int = 64
    max_conn: int = 10000
    max_header_size: int = 64 * 1024
    #: 0 means unlimited.
    max_body_size: int = 0
    real_ip_header: str = "X-Real-IP"
    trusted_proxies: Tuple[str, ...] = ("127.0.0.1/32", "10.0.0.0/8")
    #: ``-`` logs to twistd's log, ``off`` disables, anything else is a file path.
    access_log: str = "-"
    #: ``combined`` (nginx's, plus rt/qt/upstream/rid) or ``json`` (one object a line).
    access_log_format: str = "combined"
    shutdown_grace: float = 30.0
    #: Requests slower than this are logged and listed by the admin API
    #: (``/api/v1/performance/slow-requests``).
    slow_request_threshold: float = 1.0
    #: Extra attempts on another backend for a request that failed before
    #: any response byte (idempotent, or body not yet sent).
    retries: int = 2
    #: Retries may add at most this fraction of extra load (plus a small
    #: floor), so a failing pool cannot be hit by a retry storm.
    retry_budget: float = 0.2
    #: Idle time after which a WebSocket tunnel is closed.
    websocket_idle_timeout: float = 3600.0
    #: Time an event stream may go without an event before it is closed.
    sse_idle_timeout: float = 3600.0
    #: Relay large response bodies (Content-Length, 16 KiB or more) between
    #: plain TCP sockets with splice(2), without copying them through the
    #: worker.  Linux with Python 3.10+ only; elsewhere bodies are copied.
    zero_copy: bool = True
    #: Fold runs of ``/`` in request paths into one before routing.
    merge_slashes: bool = False
    #: Forward the path bytes the client sent instead of the normalised
    #: path (routing still uses the normalised one).
    forward_original_path: bool = False
    #: ``refuse`` (400) or ``keep`` (forwarded still encoded) an encoded
    #: ``/`` or ``\`` (``%2F``, ``%5C``) or a raw ``\`` in a request path.
    escaped_slashes: str = "refuse"
    #: The longest request line accepted (414 over it).
    max_request_line: int = 16 * 1024
    #: Default panic threshold of every upstream group, in percent (0 turns
    #: panic routing off, except that a group's only backend always stays in).
    panic_threshold: float = 50.0
    #: How long a request may wait for a backend slot when every eligible
    #: backend is at ``max_conn`` (0: no queue, 503 at once).
    queue_timeout: float = 5.0
    #: Requests waiting per upstream group and worker (beyond it: 503 at once).
    queue_size: int = 1000
    #: Pin worker processes to CPUs: ``off``, ``auto`` (worker N on the N-th
    #: CPU the master may use) or CPU numbers, one per worker, cycled
    #: (:mod:`speedproxy.master.affinity`).
    cpu_affinity: Union[str, Tuple[int, ...]] = "off"
    #: Client addresses (CIDR) let in / refused on every route, before the
    #: route's own lists (:mod:`speedproxy.edge.ip_lists`); empty: no check.
    allow: Tuple[str, ...] = ()
    deny: Tuple[str, ...] = ()
    #: Streams an HTTP/2 client may have open at once on one connection
    #: (SETTINGS_MAX_CONCURRENT_STREAMS; :mod:`speedproxy.proxy.http2`).
    h2_max_concurrent_streams: int = 128


@dataclass(frozen=True)
class SSLConfig:
    """TLS on the client-facing listener."""

    enabled: bool = False
    cert_file: str = "certs/server.crt"
    key_file: str = "certs/server.key"


@dataclass(frozen=True)
class AdminConfig:
    """The JSON control API served by the master."""

    listen: str = "127.0.0.1:9901"
    api_key: str = ""
    api_key_file: str = ""
    #: Largest request body the admin API accepts (413 above it).
    max_body_size: int = 1024 * 1024


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry spans of proxied requests (the ``speedproxy[otel]`` extra).

    W3C ``traceparent``/``tracestate`` are forwarded whatever is set here;
    spans are exported only when ``otlp_endpoint`` is set.
    """

    #: OTLP/HTTP collector URL (``http://collector:4318``; ``/v1/traces`` is
    #: added when no path is given); empty: no spans are exported.
    otlp_endpoint: str = ""
    service_name: str = "speedproxy"
    #: Share of new traces sampled (0..1); a client's ``traceparent``
    #: decides for its own trace (its ``sampled`` flag).
    sample_ratio: float = 1.0


@dataclass(frozen=True)
class GrpcConfig:
    """The gRPC management service of the master (SpeedMimi's ``grpc`` section).

    Needs the ``speedproxy[grpc]`` extra (grpcio); see
    :mod:`speedproxy.admin.grpc`.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9090


@dataclass(frozen=True)
class ClusterConfig:
    """The fleet: nodes sharing limits, sessions and purges through Redis (:mod:`speedproxy.cluster`)."""

    #: ``redis://host:port/db`` or ``sentinel://host:26379,host2:26379/service/db``;
    #: empty: no fleet, state stays on this host.
    redis: str = ""
    #: This node's name in the fleet; empty: the host name.
    node_name: str = ""
    #: How often a node renews its registration (it is forgotten after 3 missed).
    heartbeat: float = 2.0
    #: A Redis command without an answer this long counts as Redis being down.
    timeout: float = 0.5
    #: Prefix of every key and channel speedproxy uses in Redis.
    key_prefix: str = "speedproxy:"


@dataclass(frozen=True)
class AccountingConfig:
    """Traffic accounting: bytes and requests per session, key and route (:mod:`speedproxy.cluster.accounting`)."""

    #: How often the counts are flushed.
    interval: float = 10.0
    #: A Redis stream (``XADD``) to flush to; needs ``cluster.redis``.
    redis_stream: str = ""
    #: An HTTP(S) URL that gets each batch as a JSON ``POST``.
    collector: str = ""
    #: Records kept while the destination is down; past it they are dropped (and counted).
    max_buffer: int = 10000
    #: Routes accounted; empty: every route (when a destination is set).
    routes: Tuple[str, ...] = ()
    #: Request header holding the API key accounted (its SHA-256 prefix is recorded, never the key).
    api_key_header: str = "X-API-Key"

    @property
    def enabled(self) -> bool:
        return bool(self.redis_stream or self.collector)


def _default_backends() -> Mapping[str, Tuple[BackendConfig, ...]]:
    return {"default": (BackendConfig(id="backend1", host="127.0.0.1", port=8081),)}


def _default_routing() -> Mapping[str, RouteConfig]:
    return {"default": RouteConfig(name="default")}


@dataclass(frozen=True)
class Config:
    """A whole, validated speedproxy configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    backends: Mapping[str, Tuple[BackendConfig, ...]] = field(default_factory=_default_backends)
    routing: Mapping[str, RouteConfig] = field(default_factory=_default_routing)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    #: Per upstream group (a ``backends:`` name): credentials added to its
    #: requests, content types expected of its answers.
    upstreams: Mapping[str, UpstreamRulesConfig] = field(default_factory=dict)
    #: The file this config was read from, if any.
    source: Optional[str] = None


def restart_required(old: Config, new: Config) -> List[str]:
    """Keys whose change only takes effect after a restart (listeners, TLS)."""
    keys = []
    if (old.server.host, old.server.port) != (new.server.host, new.server.port):
        keys.append("server.host/server.port")
    if old.admin.listen != new.admin.listen:
        keys.append("admin.listen")
    if old.ssl.enabled != new.ssl.enabled:
        keys.append("ssl.enabled")
    if old.grpc != new.grpc:
        keys.append("grpc")
    if old.cluster != new.cluster:
        keys.append("cluster")
    if old.accounting.enabled != new.accounting.enabled or (
        old.accounting.redis_stream, old.accounting.collector, old.accounting.interval, old.accounting.max_buffer
    ) != (new.accounting.redis_stream, new.accounting.collector, new.accounting.interval, new.accounting.max_buffer):
        keys.append("accounting (its destination, interval and bound; routes apply at once)")
    return keys
