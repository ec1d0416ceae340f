"""The HLS filters on a route, in memory: lifetimes, prefetch, coalescing, rewriting."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from speedproxy.cache import control as cache_control
from speedproxy.testing import InMemoryClient, InMemoryProxy, ParsedResponse

CONFIG = """\
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
routing:
  default:
    path: /
    upstream: default
    load_balancer: round_robin
    cache: {enabled: true}
    hls: {enabled: true%s}
"""

PLAYLIST_TYPE = b"application/vnd.apple.mpegurl"


def media(count: int, first: int = 0, end: bool = True, target: int = 2, prefix: str = "") -> bytes:
    lines = ["#EXTM3U", f"#EXT-X-TARGETDURATION:{target}", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    for number in range(first, first + count):
        lines += ["#EXTINF:2.0,", f"{prefix}seg{number}.ts"]
    if end:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


MASTER = b"""#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360
v0/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720
v1/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=5000000,RESOLUTION=1920x1080
v2/index.m3u8
"""

Answer = Tuple[int, List[Tuple[bytes, bytes]], bytes]


def answer(body: bytes, content_type: bytes = b"video/mp2t", *headers: Tuple[bytes, bytes], status: int = 200) -> Answer:
    return status, [(b"Content-Type", content_type)] + list(headers), body


class Origin:
    """Answers the proxy's connections (one request each: ``Connection: close``)."""

    def __init__(self, proxy: InMemoryProxy) -> None:
        self.proxy = proxy
        self.files: Dict[bytes, Answer] = {}
        #: (target, request head lines) of every request, in order.
        self.log: List[Tuple[bytes, List[bytes]]] = []
        self.held: List[Tuple[object, bytes]] = []
        self.hold = False

    def add(self, path: bytes, value: Answer) -> None:
        self.files[path] = value

    def targets(self, prefix: bytes = b"") -> List[bytes]:
        return [target for target, _ in self.log if target.startswith(prefix)]

    def prefetched(self) -> List[bytes]:
        return [target for target, head in self.log if b"X-Speedproxy-Prefetch: 1" in head]

    def response(self, target: bytes) -> bytes:
        path = target.split(b"?", 1)[0]
        status, headers, body = self.files.get(path) or (404, [(b"Cache-Control", b"no-store")], b"missing")
        lines = [b"HTTP/1.1 %d X" % status] + [name + b": " + value for name, value in headers]
        lines += [b"Content-Length: %d" % len(body), b"Connection: close"]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def serve(self) -> None:
        proxy = self.proxy
        for _ in range(200):
            proxy.reactor.advance(0)
            if not proxy.pending_connects():
                return
            backend = proxy.accept()
            head = backend.received().split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            target = head[0].split(b" ")[1]
            self.log.append((target, head[1:]))
            if self.hold:
                self.held.append((backend, target))
            else:
                backend.send(self.response(target))

    def release(self) -> None:
        held, self.held = self.held, []
        for backend, target in held:
            backend.send(self.response(target))  # type: ignore[attr-defined]
        self.serve()


class Harness:
    def __init__(self, options: str = "") -> None:
        self.proxy = InMemoryProxy(CONFIG % options)
        self.origin = Origin(self.proxy)

    def send(self, target: bytes, *headers: bytes, client: Optional[InMemoryClient] = None) -> InMemoryClient:
        client = client or self.proxy.client()
        extra = b"".join(header + b"\r\n" for header in headers)
        client.send(b"GET %s HTTP/1.1\r\nHost: h\r\n%s\r\n" % (target, extra))
        return client

    def get(self, target: bytes, *headers: bytes, client: Optional[InMemoryClient] = None) -> ParsedResponse:
        client = self.send(target, *headers, client=client)
        self.origin.serve()
        response = client.response()
        client.take()
        return response

    def advance(self, seconds: float) -> None:
        self.proxy.reactor.advance(seconds)
        self.origin.serve()

    def info(self) -> Dict[str, object]:
        return cache_control.info(self.proxy.core)["hls"]["default"]  # type: ignore[index]


def status_of(response: ParsedResponse) -> bytes:
    return response.header(b"Cache-Status") or b""


def vod(harness: Harness, prefix: bytes = b"/s", count: int = 8, segment_headers: Tuple[Tuple[bytes, bytes], ...] = ()) -> None:
    harness.origin.add(prefix + b"/index.m3u8", answer(media(count), PLAYLIST_TYPE))
    for number in range(count):
        harness.origin.add(prefix + b"/seg%d.ts" % number, answer(b"S%d" % number, b"video/mp2t", *segment_headers))


# -- lifetimes ---------------------------------------------------------------------------


def test_playlists_and_listed_segments_get_the_configured_lifetimes() -> None:
    harness = Harness()
    origin = harness.origin
    origin.add(b"/s/master.m3u8", answer(MASTER, PLAYLIST_TYPE, (b"Cache-Control", b"max-age=5")))
    vod(harness, segment_headers=((b"Cache-Control", b"max-age=5"),))
    assert status_of(harness.get(b"/s/master.m3u8")).endswith(b"stored")
    assert status_of(harness.get(b"/s/master.m3u8")) == b"speedproxy; hit; ttl=3600"
    assert status_of(harness.get(b"/s/index.m3u8")).endswith(b"stored")
    assert status_of(harness.get(b"/s/index.m3u8")) == b"speedproxy; hit; ttl=3600"
    harness.get(b"/s/seg0.ts")
    hit = harness.get(b"/s/seg0.ts")
    assert status_of(hit) == b"speedproxy; hit; ttl=604800" and hit.body == b"S0"
    harness.advance(100.0)
    assert status_of(harness.get(b"/s/seg0.ts")) == b"speedproxy; hit; ttl=604700"
    assert origin.targets() == [b"/s/master.m3u8", b"/s/index.m3u8", b"/s/seg0.ts"]


def test_a_playlist_is_recognised_by_its_content_type_too() -> None:
    harness = Harness()
    harness.origin.add(b"/p/list", answer(media(2, prefix="/p/"), b"application/x-mpegURL"))
    harness.origin.add(b"/p/seg0.ts", answer(b"S0"))
    harness.get(b"/p/list")
    assert status_of(harness.get(b"/p/list")) == b"speedproxy; hit; ttl=3600"
    harness.get(b"/p/seg0.ts")
    assert status_of(harness.get(b"/p/seg0.ts")) == b"speedproxy; hit; ttl=604800"


def test_origin_no_store_still_wins_and_other_objects_keep_origin_rules() -> None:
    harness = Harness()
    vod(harness, segment_headers=((b"Cache-Control", b"no-store"),))
    harness.origin.add(b"/s/other.bin", answer(b"O", b"application/octet-stream"))
    harness.origin.add(b"/s/unlisted.ts", answer(b"U"))
    harness.get(b"/s/index.m3u8")
    first = harness.get(b"/s/seg0.ts")
    assert status_of(first) == b"speedproxy; fwd=miss; fwd-status=200; detail=no-store"
    assert status_of(harness.get(b"/s/other.bin")).endswith(b"detail=no-freshness")
    # Not listed in a playlist this worker read, but a segment by its type.
    harness.get(b"/s/unlisted.ts")
    assert status_of(harness.get(b"/s/unlisted.ts")) == b"speedproxy; hit; ttl=604800"
    harness.get(b"/s/seg0.ts")
    assert harness.origin.targets(b"/s/seg0.ts") == [b"/s/seg0.ts", b"/s/seg0.ts"]


def test_live_playlist_is_fresh_for_half_its_target_duration_whatever_the_origin_says() -> None:
    harness = Harness(", prefetch_depth: 0")  # (with prefetch, a stale one is refreshed for the player: test_hls_live)
    harness.origin.add(
        b"/l/index.m3u8",
        answer(media(4, first=10, end=False, target=4), PLAYLIST_TYPE, (b"Cache-Control", b"no-cache"), (b"Date", b"Thu, 01 Jan 1970 00:00:00 GMT")),
    )
    harness.get(b"/l/index.m3u8")
    assert status_of(harness.get(b"/l/index.m3u8")) == b"speedproxy; hit; ttl=2"
    harness.advance(1.9)
    assert status_of(harness.get(b"/l/index.m3u8")).startswith(b"speedproxy; hit")
    harness.advance(0.2)
    assert status_of(harness.get(b"/l/index.m3u8")).startswith(b"speedproxy; fwd=stale")
    assert len(harness.origin.targets(b"/l/")) == 2


def test_configured_lifetimes_and_zero_leaves_them_to_the_origin() -> None:
    harness = Harness(", live_playlist_ttl: 1s, vod_playlist_ttl: 0s, segment_ttl: 1h")
    harness.origin.add(b"/l/index.m3u8", answer(media(2, end=False, target=6), PLAYLIST_TYPE))
    vod(harness)
    harness.get(b"/l/index.m3u8")
    assert status_of(harness.get(b"/l/index.m3u8")) == b"speedproxy; hit; ttl=1"
    # 0s: the origin's lifetime, here none: stored, and revalidated on every use.
    harness.get(b"/s/index.m3u8")
    assert status_of(harness.get(b"/s/index.m3u8")).startswith(b"speedproxy; fwd=stale")
    harness.get(b"/l/seg0.ts")
    harness.origin.add(b"/l/seg0.ts", answer(b"L0"))
    harness.get(b"/l/seg0.ts")
    assert status_of(harness.get(b"/l/seg0.ts")) == b"speedproxy; hit; ttl=3600"


# -- coalescing of live refreshes --------------------------------------------------------


def test_concurrent_players_share_one_refresh_of_a_stale_live_playlist() -> None:
    harness = Harness(", prefetch_depth: 0")  # the cache's coalescing (with prefetch: test_hls_live)
    harness.origin.add(b"/l/index.m3u8", answer(media(4, end=False, target=2), PLAYLIST_TYPE))
    harness.get(b"/l/index.m3u8")
    harness.advance(1.5)  # stale (ttl 1 s)
    harness.origin.hold = True
    clients = [harness.send(b"/l/index.m3u8") for _ in range(5)]
    harness.origin.serve()
    assert len(harness.origin.held) == 1  # one refresh for the five
    harness.origin.release()
    statuses = [status_of(client.response()) for client in clients]
    assert statuses[0] == b"speedproxy; fwd=stale; fwd-status=200; stored"
    assert statuses[1:] == [b"speedproxy; fwd=stale; fwd-status=200; collapsed"] * 4
    assert len(harness.origin.targets(b"/l/")) == 2


# -- prefetch ----------------------------------------------------------------------------


def test_sequential_viewing_prefetches_the_next_segments() -> None:
    harness = Harness()
    vod(harness)
    harness.get(b"/s/index.m3u8")
    harness.get(b"/s/seg0.ts")
    assert harness.origin.prefetched() == []  # one request says nothing yet
    harness.get(b"/s/seg1.ts")
    harness.advance(0)
    assert harness.origin.prefetched() == [b"/s/seg2.ts", b"/s/seg3.ts", b"/s/seg4.ts"]
    assert status_of(harness.get(b"/s/seg2.ts")) == b"speedproxy; hit; ttl=604800"
    harness.advance(0)
    assert harness.origin.prefetched()[3:] == [b"/s/seg5.ts"]  # 3 and 4 are stored already
    prefetch = harness.info()["prefetch"]
    assert prefetch["started"] == 4 and prefetch["ok"] == 4 and prefetch["cached"] == 2  # type: ignore[index]
    assert prefetch["in_flight"] == 0  # type: ignore[index]


def test_a_seek_does_not_prefetch_until_the_viewer_settles() -> None:
    harness = Harness()
    vod(harness, count=12)
    harness.get(b"/s/index.m3u8")
    harness.get(b"/s/seg0.ts")
    harness.get(b"/s/seg6.ts")  # a jump
    harness.advance(0)
    assert harness.origin.prefetched() == []
    harness.get(b"/s/seg7.ts")  # settled
    harness.advance(0)
    assert harness.origin.prefetched() == [b"/s/seg8.ts", b"/s/seg9.ts", b"/s/seg10.ts"]


def test_prefetch_stops_at_the_end_of_the_playlist() -> None:
    harness = Harness()
    vod(harness, count=4)
    harness.get(b"/s/index.m3u8")
    harness.get(b"/s/seg1.ts")
    harness.get(b"/s/seg2.ts")
    harness.advance(0)
    assert harness.origin.prefetched() == [b"/s/seg3.ts"]


def test_a_rendition_switch_moves_prefetch_to_the_new_rendition() -> None:
    harness = Harness()
    harness.origin.add(b"/m/master.m3u8", answer(MASTER, PLAYLIST_TYPE))
    for variant in (b"v0", b"v1"):
        vod(harness, b"/m/" + variant, count=10)
    harness.get(b"/m/master.m3u8")
    harness.get(b"/m/v0/index.m3u8")
    harness.get(b"/m/v0/seg0.ts")
    harness.get(b"/m/v0/seg1.ts")
    harness.advance(0)
    assert harness.origin.prefetched() == [b"/m/v0/seg2.ts", b"/m/v0/seg3.ts", b"/m/v0/seg4.ts"]
    harness.get(b"/m/v1/index.m3u8")
    harness.get(b"/m/v1/seg2.ts")  # up a rendition, at the next position
    harness.advance(0)
    assert harness.origin.prefetched()[3:] == [b"/m/v1/seg3.ts", b"/m/v1/seg4.ts", b"/m/v1/seg5.ts"]
    harness.get(b"/m/v1/seg3.ts")
    harness.advance(0)
    assert harness.origin.prefetched()[6:] == [b"/m/v1/seg6.ts"]


def test_viewers_are_told_apart_by_address_and_user_agent() -> None:
    harness = Harness()
    vod(harness, count=10)
    harness.get(b"/s/index.m3u8")
    harness.get(b"/s/seg0.ts", b"User-Agent: a")
    harness.get(b"/s/seg4.ts", b"User-Agent: b")
    harness.get(b"/s/seg1.ts", b"User-Agent: b")  # b jumped back: no
    harness.get(b"/s/seg1.ts", b"User-Agent: a", client=harness.proxy.client("10.9.9.9"))  # another address
    harness.advance(0)
    assert harness.origin.prefetched() == []
    harness.get(b"/s/seg1.ts", b"User-Agent: a")
    harness.advance(0)
    assert harness.origin.prefetched() == [b"/s/seg2.ts", b"/s/seg3.ts"]  # seg4 is stored


def test_requests_marked_as_prefetches_never_prefetch() -> None:
    harness = Harness()
    vod(harness)
    harness.get(b"/s/index.m3u8")
    for number in range(4):
        harness.get(b"/s/seg%d.ts" % number, b"X-Speedproxy-Prefetch: 1")
    harness.advance(0)
    assert harness.origin.targets(b"/s/seg") == [b"/s/seg%d.ts" % number for number in range(4)]  # theirs only
    assert harness.info()["prefetch"]["started"] == 0  # type: ignore[index]


def test_prefetches_under_way_are_bounded_per_worker() -> None:
    harness = Harness(", prefetch_depth: 6, max_prefetch_downloads: 2")
    vod(harness, count=10)
    harness.get(b"/s/index.m3u8")
    harness.get(b"/s/seg0.ts")
    harness.origin.hold = True
    harness.send(b"/s/seg1.ts")
    harness.origin.serve()
    prefetch = harness.info()["prefetch"]
    assert prefetch["started"] == 2 and prefetch["in_flight"] == 2 and prefetch["dropped"] == 4  # type: ignore[index]
    harness.origin.release()
    assert harness.info()["prefetch"]["in_flight"] == 0  # type: ignore[index]


def test_a_player_asking_a_segment_being_prefetched_joins_it() -> None:
    harness = Harness()
    vod(harness)
    harness.get(b"/s/index.m3u8")
    harness.get(b"/s/seg0.ts")
    harness.origin.hold = True
    first = harness.send(b"/s/seg1.ts")
    harness.origin.serve()
    player = harness.send(b"/s/seg2.ts")
    harness.origin.serve()
    harness.origin.release()
    assert status_of(player.response()) == b"speedproxy; fwd=miss; fwd-status=200; collapsed"
    assert first.response().body == b"S1"
    assert harness.origin.targets(b"/s/seg2") == [b"/s/seg2.ts"]


def test_live_playlist_refresh_prefetches_new_segments() -> None:
    harness = Harness(", prefetch_depth: 2")
    harness.origin.add(b"/l/index.m3u8", answer(media(3, first=0, end=False, target=2), PLAYLIST_TYPE))
    for number in range(10):
        harness.origin.add(b"/l/seg%d.ts" % number, answer(b"L%d" % number))
    harness.get(b"/l/index.m3u8")
    assert harness.origin.prefetched() == []  # the first look: the player picks where to start
    harness.origin.add(b"/l/index.m3u8", answer(media(3, first=3, end=False, target=2), PLAYLIST_TYPE))
    harness.advance(1.1)
    harness.get(b"/l/index.m3u8")
    harness.advance(0)
    assert harness.origin.prefetched() == [b"/l/seg4.ts", b"/l/seg5.ts"]
    assert status_of(harness.get(b"/l/seg5.ts")) == b"speedproxy; hit; ttl=604800"


# -- rewriting ---------------------------------------------------------------------------


def test_master_capped_by_config_keeps_order_and_tags() -> None:
    harness = Harness(", max_variant_bandwidth: 2M")
    harness.origin.add(b"/m/master.m3u8", answer(MASTER, PLAYLIST_TYPE))
    response = harness.get(b"/m/master.m3u8")
    assert response.header(b"Transfer-Encoding") == b"chunked"
    assert response.body == MASTER.replace(b"#EXT-X-STREAM-INF:BANDWIDTH=5000000,RESOLUTION=1920x1080\nv2/index.m3u8\n", b"")
    hit = harness.get(b"/m/master.m3u8")
    assert hit.body == response.body and status_of(hit).startswith(b"speedproxy; hit")


def test_max_bw_per_request_lowers_the_cap_and_is_not_sent_to_the_origin() -> None:
    harness = Harness(", max_variant_bandwidth: 2M")
    harness.origin.add(b"/m/master.m3u8", answer(MASTER, PLAYLIST_TYPE))
    low = harness.get(b"/m/master.m3u8?max_bw=1000000")
    assert b"v0/index.m3u8" in low.body and b"v1/" not in low.body and b"v2/" not in low.body
    none_fits = harness.get(b"/m/master.m3u8?a=1&max_bw=10")
    assert b"v0/index.m3u8" in none_fits.body and b"v1/" not in none_fits.body
    higher = harness.get(b"/m/master.m3u8?max_bw=9M")  # cannot raise the route's cap
    assert b"v1/index.m3u8" in higher.body and b"v2/" not in higher.body
    assert harness.origin.targets() == [b"/m/master.m3u8", b"/m/master.m3u8?a=1", b"/m/master.m3u8"]
    assert status_of(harness.get(b"/m/master.m3u8?max_bw=1000000")).startswith(b"speedproxy; hit")


def test_segments_keep_their_length() -> None:
    harness = Harness(", max_variant_bandwidth: 2M")
    vod(harness)
    harness.get(b"/s/index.m3u8")
    response = harness.get(b"/s/seg0.ts")
    assert response.header(b"Content-Length") == b"2" and response.header(b"Transfer-Encoding") is None


def test_absolute_uris_to_the_origin_come_back_through_us_and_are_prefetched() -> None:
    harness = Harness()
    body = media(6, prefix="http://10.1.0.1:8081/a/").replace(b"seg5.ts", b"seg5.ts?t=1")
    body = body.replace(b"http://10.1.0.1:8081/a/seg4.ts", b"http://h/a/seg4.ts")
    body = body.replace(b"http://10.1.0.1:8081/a/seg3.ts", b"https://cdn.example/a/seg3.ts")
    harness.origin.add(b"/a/index.m3u8", answer(body, PLAYLIST_TYPE))
    for number in range(6):
        harness.origin.add(b"/a/seg%d.ts" % number, answer(b"A%d" % number))
    playlist = harness.get(b"/a/index.m3u8").body
    assert b"\n/a/seg0.ts\n" in playlist and b"\n/a/seg4.ts\n" in playlist and b"\n/a/seg5.ts?t=1\n" in playlist
    assert b"\nhttps://cdn.example/a/seg3.ts\n" in playlist and b"10.1.0.1" not in playlist
    harness.get(b"/a/seg0.ts")
    harness.get(b"/a/seg1.ts")
    harness.advance(0)
    assert harness.origin.prefetched() == [b"/a/seg2.ts", b"/a/seg4.ts"]  # seg3 is another host's


def test_absolute_uris_kept_when_not_asked() -> None:
    harness = Harness(", rewrite_absolute_urls: false")
    body = media(2, prefix="http://10.1.0.1:8081/a/")
    harness.origin.add(b"/a/index.m3u8", answer(body, PLAYLIST_TYPE))
    response = harness.get(b"/a/index.m3u8")
    assert response.body == body and response.header(b"Content-Length") == b"%d" % len(body)


def test_counters_are_in_the_workers_cache_info() -> None:
    harness = Harness()
    vod(harness)
    harness.get(b"/s/index.m3u8")
    info = harness.info()
    assert info["renditions"] == 1 and info["uris"] == 8 and info["playlists_parsed"] == 1
    assert set(info["prefetch"]) == {"started", "ok", "failed", "cached", "coalesced", "dropped", "in_flight"}  # type: ignore[arg-type]


# -- LL-HLS keys and threaded parses ----------------------------------------------------------


def test_ll_hls_directives_stay_in_the_cache_key_whatever_the_route_keeps() -> None:
    from speedproxy.hls.filter import LL_HLS_DIRECTIVES, key_ll_hls

    class Cache:
        _ignore = frozenset({b"_HLS_msn", b"sig"})

    for query, expected in (("all", "all"), ("none", frozenset(LL_HLS_DIRECTIVES)),
                            (frozenset({b"v"}), frozenset(LL_HLS_DIRECTIVES) | {b"v"})):
        cache = Cache()
        cache._query = query  # type: ignore[attr-defined]
        key_ll_hls(cache)  # type: ignore[arg-type]
        assert cache._query == expected and cache._ignore == frozenset({b"sig"})  # type: ignore[attr-defined]
    harness = Harness()
    harness.origin.add(b"/ll/index.m3u8", answer(media(2, end=False), PLAYLIST_TYPE))
    harness.get(b"/ll/index.m3u8?_HLS_msn=5&_HLS_part=1")
    assert status_of(harness.get(b"/ll/index.m3u8?_HLS_msn=5&_HLS_part=1")).startswith(b"speedproxy; hit")
    assert status_of(harness.get(b"/ll/index.m3u8?_HLS_msn=5&_HLS_part=2")).startswith(b"speedproxy; fwd=miss")


def test_large_playlists_are_parsed_in_the_thread_pool_small_ones_at_once() -> None:
    from speedproxy.hls import filter as hls_filter

    class Pool:
        def __init__(self) -> None:
            self.calls = 0

        def callInThreadWithCallback(self, done, function, *args):  # type: ignore[no-untyped-def]
            self.calls += 1
            done(True, function(*args))

    pool = Pool()

    class Reactor:
        def getThreadPool(self) -> Pool:
            return pool

        def callFromThread(self, function, *args):  # type: ignore[no-untyped-def]
            function(*args)

    harness = Harness()
    core = harness.proxy.core
    real = core.reactor
    state = hls_filter.route_state(core, "default")
    parsed: List[object] = []
    small, large = media(3), media(2000)
    assert len(small) < hls_filter.THREAD_PARSE < len(large)
    core.reactor = Reactor()
    try:
        hls_filter.HlsFilter._parse(type("F", (), {"core": core, "route": state})(), small, "/s", parsed.append)
        assert pool.calls == 0 and len(parsed[-1].segments) == 3  # type: ignore[attr-defined]
        hls_filter.HlsFilter._parse(type("F", (), {"core": core, "route": state})(), large, "/l", parsed.append)
        assert pool.calls == 1 and len(parsed[-1].segments) == 2000  # type: ignore[attr-defined]
        assert state.counters["threaded_parses"] == 1
    finally:
        core.reactor = real
