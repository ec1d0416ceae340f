"""The compression filter and the cache's compressed copies, in memory
(:mod:`speedproxy.edge.compression`, :mod:`speedproxy.edge.compression_copies`)."""

from __future__ import annotations

import gzip
import zlib
from typing import Any, Dict, List, Optional

import brotli
import pytest

from speedproxy.edge.compression import EVENTS, add_vary, encoded_headers, weak_etag
from speedproxy.stats.segment import COMPRESSION_WORDS
from speedproxy.testing import InMemoryProxy, ParsedResponse

PLAYLIST = b"#EXTM3U\n" + b"#EXTINF:4.0,\nsegment.ts\n" * 400
TYPE = b"application/vnd.apple.mpegurl"


def config(cache: bool, settings: str = "{min_size: 1KiB}") -> str:
    cached = ", cache: {enabled: true}" if cache else ""
    return f"""\
backends:
  default:
    - {{id: b1, host: 10.1.0.1, port: 8081}}
routing:
  default: {{path: /, upstream: default, load_balancer: round_robin, compression: {settings}{cached}}}
  bare: {{path: /bare/, upstream: default, load_balancer: round_robin}}
"""


def request(path: str = "/live.m3u8", accept: Optional[bytes] = b"gzip, br", method: bytes = b"GET", extra: bytes = b"") -> bytes:
    line = b"%s %s HTTP/1.1\r\nHost: h\r\n" % (method, path.encode())
    if accept is not None:
        line += b"Accept-Encoding: " + accept + b"\r\n"
    return line + extra + b"\r\n"


def origin_head(body: bytes = PLAYLIST, content_type: bytes = TYPE, extra: bytes = b"", length: bool = True) -> bytes:
    framing = b"Content-Length: %d\r\n" % len(body) if length else b""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\n"
        b"Cache-Control: max-age=60\r\n%s%s\r\n" % (content_type, framing, extra)
    )


def fetch(proxy: InMemoryProxy, data: bytes, answer: Optional[bytes] = None, **kw: bool) -> ParsedResponse:
    client = proxy.client()
    client.send(data)
    if answer is not None:
        backend = proxy.accept()
        backend.send(answer)
        if b"Content-Length" not in answer.split(b"\r\n\r\n")[0]:
            backend.close()
    return client.response(**kw)


def counts(proxy: InMemoryProxy, route: str = "default") -> Dict[str, int]:
    stats = proxy.core.stats
    index = next(r.stats_index for r in proxy.core.routes if r.name == route)
    base = stats.compression_base + index * COMPRESSION_WORDS
    return {event: stats.words[base + i] for i, event in enumerate(EVENTS)}


def decode(response: ParsedResponse) -> bytes:
    coding = response.header(b"Content-Encoding")
    if coding == b"gzip":
        return gzip.decompress(response.body)
    if coding == b"br":
        return brotli.decompress(response.body)
    assert coding is None, coding
    return response.body


# -- head helpers ---------------------------------------------------------------------


def test_weak_etag() -> None:
    assert weak_etag(b'"a"') == b'W/"a"'
    assert weak_etag(b'W/"a"') == b'W/"a"'


def test_add_vary_merges_and_never_repeats() -> None:
    headers = [(b"Vary", b"Origin")]
    lowered = [b"vary"]
    add_vary(headers, lowered)
    assert headers == [(b"Vary", b"Origin, Accept-Encoding")]
    add_vary(headers, lowered)
    assert headers == [(b"Vary", b"Origin, Accept-Encoding")]
    star = [(b"Vary", b"*")]
    add_vary(star, [b"vary"])
    assert star == [(b"Vary", b"*")]


def test_encoded_headers() -> None:
    headers = [(b"Content-Type", TYPE), (b"Content-Length", b"9"), (b"ETag", b'"x"'), (b"Accept-Ranges", b"bytes")]
    out, lowered = encoded_headers(headers, [n.lower() for n, _ in headers], b"br")
    assert out == [(b"Content-Type", TYPE), (b"ETag", b'W/"x"'), (b"Content-Encoding", b"br"), (b"Vary", b"Accept-Encoding")]
    assert lowered == [n.lower() for n, _ in out]


@pytest.mark.parametrize(
    "vary,expected",
    [
        ([b"accept-encoding, Origin"], [b"accept-encoding, Origin"]),
        ([b"*"], [b"*"]),
        ([b"Origin", b"Accept-Encoding"], [b"Origin", b"Accept-Encoding"]),  # named by the second field
        ([b"Origin", b"Cookie"], [b"Origin, Accept-Encoding", b"Cookie"]),  # added to the first
        ([b"X-Accept-Encoding-Hint"], [b"X-Accept-Encoding-Hint, Accept-Encoding"]),
        ([b""], [b"Accept-Encoding"]),
    ],
)
def test_encoded_headers_name_accept_encoding_in_vary_once(vary: List[bytes], expected: List[bytes]) -> None:
    headers = [(b"Content-Type", TYPE)] + [(b"Vary", value) for value in vary]
    out, lowered = encoded_headers(headers, [n.lower() for n, _ in headers], b"br")
    assert [value for name, value in out if name == b"Vary"] == expected
    assert lowered == [n.lower() for n, _ in out]


def test_encoded_headers_merge_vary_and_weaken_every_etag() -> None:
    headers = [
        (b"ETag", b'"a"'), (b"Vary", b"Origin"), (b"Content-Encoding", b"identity"),
        (b"Content-Type", TYPE), (b"etag", b'W/"b"'),
    ]
    out, lowered = encoded_headers(headers, [n.lower() for n, _ in headers], b"gzip")
    assert out == [
        (b"ETag", b'W/"a"'), (b"Vary", b"Origin, Accept-Encoding"), (b"Content-Type", TYPE),
        (b"etag", b'W/"b"'), (b"Content-Encoding", b"gzip"),
    ]
    assert lowered == [n.lower() for n, _ in out]
    assert headers[0] == (b"ETag", b'"a"')  # the backend's list is left as it was


# -- streaming (no cache) ----------------------------------------------------------------


@pytest.mark.parametrize("accept,coding", [(b"gzip, br", b"br"), (b"gzip", b"gzip"), (b"br;q=0.1, gzip", b"gzip")])
def test_a_relayed_response_is_compressed_as_it_streams(accept: bytes, coding: bytes) -> None:
    """A body of unknown length is compressed as it streams: chunked once output
    left before the end (zlib's gzip header does); brotli keeps a short input
    until it finishes, so that whole answer leaves at the end, with its length."""
    proxy = InMemoryProxy(config(cache=False))
    response = fetch(proxy, request(accept=accept), origin_head(length=False) + PLAYLIST)
    assert response.header(b"Content-Encoding") == coding
    if coding == b"gzip":
        assert response.header(b"Transfer-Encoding") == b"chunked"
        assert response.header(b"Content-Length") is None
    else:
        assert response.header(b"Transfer-Encoding") is None
        assert response.header(b"Content-Length") == b"%d" % len(response.body)
    assert response.header(b"ETag") == b'W/"v1"'
    assert response.header(b"Accept-Ranges") is None
    assert response.header(b"Vary") == b"Accept-Encoding"
    assert decode(response) == PLAYLIST
    assert counts(proxy) == {"stream": 1, "copy_made": 0, "copy_hit": 0}


def test_the_origin_gets_the_clients_accept_encoding() -> None:
    proxy = InMemoryProxy(config(cache=False))
    client = proxy.client()
    client.send(request(accept=b"gzip, br"))
    assert b"\r\nAccept-Encoding: gzip, br\r\n" in proxy.accept().received()


def test_identity_client_gets_vary_and_the_length() -> None:
    proxy = InMemoryProxy(config(cache=False))
    response = fetch(proxy, request(accept=None), origin_head() + PLAYLIST)
    assert response.header(b"Content-Encoding") is None
    assert response.header(b"Content-Length") == b"%d" % len(PLAYLIST)
    assert response.header(b"Vary") == b"Accept-Encoding"
    assert response.header(b"ETag") == b'"v1"'
    assert response.body == PLAYLIST


def test_a_body_without_length_is_compressed() -> None:
    proxy = InMemoryProxy(config(cache=False))
    response = fetch(proxy, request(accept=b"gzip"), origin_head(length=False) + PLAYLIST)
    assert decode(response) == PLAYLIST


def recorded_writes(client: Any) -> List[bytes]:
    """The writes the proxy makes on ``client``'s transport from now on, one item each."""
    writes: List[bytes] = []
    real = client.transport.write

    def write(data: bytes) -> None:
        writes.append(bytes(data))
        real(data)

    client.transport.write = write
    return writes


def test_the_compressed_tail_goes_out_with_the_last_chunk() -> None:
    """The compressor's last output and the last chunk leave in one write (one send on a socket)."""
    proxy = InMemoryProxy(config(cache=False))
    client = proxy.client()
    writes = recorded_writes(client)
    client.send(request(accept=b"gzip"))
    backend = proxy.accept()
    backend.send(origin_head(length=False) + PLAYLIST)
    backend.close()
    response = client.response()
    assert decode(response) == PLAYLIST
    # (zlib's unsized stream gives its 10-byte header at once: the head leaves with it.)
    assert len(writes) == 2 and writes[0].startswith(b"HTTP/1.1 200 ")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in writes[0]
    assert writes[1].endswith(b"\r\n0\r\n\r\n") and not writes[1].startswith(b"0\r\n")


@pytest.mark.parametrize("accept,coding", [(b"br", b"br"), (b"gzip", b"gzip")])
@pytest.mark.parametrize("pieces", [1, 3])
def test_a_short_body_of_known_length_leaves_whole_with_its_length(accept: bytes, coding: bytes, pieces: int) -> None:
    """A body with a Content-Length up to WHOLE_BODY_MAX is compressed in one call when it
    ends and sent with the compressed length (not chunked), head and body in one write,
    however many pieces it came in."""
    proxy = InMemoryProxy(config(cache=False))
    client = proxy.client()
    writes = recorded_writes(client)
    client.send(request(accept=accept))
    backend = proxy.accept()
    answer = origin_head() + PLAYLIST
    step = len(answer) // pieces + 1
    for start in range(0, len(answer), step):
        backend.send(answer[start : start + step])
    response = client.response()
    assert response.header(b"Content-Encoding") == coding
    assert response.header(b"Transfer-Encoding") is None
    assert response.header(b"Content-Length") == b"%d" % len(response.body)
    assert response.header(b"ETag") == b'W/"v1"'
    assert response.header(b"Vary") == b"Accept-Encoding"
    assert decode(response) == PLAYLIST
    assert len(writes) == 1 and writes[0].endswith(response.body)
    assert counts(proxy) == {"stream": 1, "copy_made": 0, "copy_hit": 0}


def test_a_long_body_of_known_length_streams_chunked() -> None:
    from speedproxy.edge.compression_codecs import WHOLE_BODY_MAX

    body = b"#EXTM3U\n" + b"#EXTINF:4.0,\nsegment-%06d.ts\n" * (WHOLE_BODY_MAX // 20)
    proxy = InMemoryProxy(config(cache=False))
    response = fetch(proxy, request(accept=b"gzip"), origin_head(body) + body)
    assert len(body) > WHOLE_BODY_MAX
    assert response.header(b"Transfer-Encoding") == b"chunked"
    assert response.header(b"Content-Length") is None
    assert gzip.decompress(response.body) == body


def test_relayed_answers_use_the_stream_level_and_copies_brotli_level() -> None:
    """brotli_stream_level (2 by default) for answers compressed per request;
    brotli_level (4) for the kept copy of a stored object."""
    assert brotli.compress(PLAYLIST, quality=2) != brotli.compress(PLAYLIST, quality=4)
    proxy = InMemoryProxy(config(cache=False))
    assert fetch(proxy, request(accept=b"br"), origin_head() + PLAYLIST).body == brotli.compress(PLAYLIST, quality=2)
    proxy = InMemoryProxy(config(cache=True, settings="{brotli_level: 6, brotli_stream_level: 1}"))
    miss = fetch(proxy, request(accept=b"br"), origin_head() + PLAYLIST)
    assert miss.body == brotli.compress(PLAYLIST, quality=1)
    hit = fetch(proxy, request(accept=b"br"))  # the copy is made
    assert hit.body == brotli.compress(PLAYLIST, quality=6)
    assert counts(proxy) == {"stream": 1, "copy_made": 1, "copy_hit": 0}


@pytest.mark.parametrize("length,wbits", [(True, 16 + 14), (False, 16 + 15)])
def test_the_gzip_stream_is_sized_by_the_content_length(monkeypatch, length: bool, wbits: int) -> None:
    """As nginx: a 9.4 KiB body gets a 16 KiB window (zlib's 32 KiB when the length is unknown)."""
    made = []
    real = zlib.compressobj

    def spy(*args):
        made.append(args)
        return real(*args)

    monkeypatch.setattr(zlib, "compressobj", spy)
    proxy = InMemoryProxy(config(cache=False, settings="{min_size: 1KiB, gzip_level: 7}"))
    response = fetch(proxy, request(accept=b"gzip"), origin_head(length=length) + PLAYLIST)
    assert decode(response) == PLAYLIST
    assert made == [(7, zlib.DEFLATED, wbits, wbits - 16 - 7)]


@pytest.mark.parametrize(
    "answer,why",
    [
        (origin_head(b"x" * 100) + b"x" * 100, "below min_size"),
        (origin_head(b"\x89PNG" * 500, b"image/png") + b"\x89PNG" * 500, "type not listed"),
        (origin_head(b"data: 1\n\n" * 200, b"text/event-stream") + b"data: 1\n\n" * 200, "event stream"),
        (origin_head(extra=b"Cache-Control: public, no-transform\r\n") + PLAYLIST, "no-transform"),
        (origin_head(extra=b"Content-Encoding: gzip\r\n") + PLAYLIST, "already encoded (never twice)"),
        (origin_head(extra=b"X-Accel-Buffering: no\r\n") + PLAYLIST, "streamed as it comes"),
        (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n" + b" " * 2000, "not a 200"),
    ],
)
def test_left_alone(answer: bytes, why: str) -> None:
    proxy = InMemoryProxy(config(cache=False))
    response = fetch(proxy, request(), answer)
    assert response.header(b"Content-Encoding") == (b"gzip" if b"Content-Encoding: gzip" in answer else None), why
    assert response.body == answer.split(b"\r\n\r\n", 1)[1], why
    assert counts(proxy)["stream"] == 0


def test_an_answer_left_alone_skips_the_body_hooks_and_keeps_its_length() -> None:
    """A body compression does not touch (a segment, a type not listed) is relayed
    without the filter's body hooks (``body_when_asked``: zero-copy stays possible),
    with its own length; a listed answer next is compressed."""
    from speedproxy.edge.compression import CompressionFilter

    proxy = InMemoryProxy(config(cache=False))
    client = proxy.client()
    calls: List[str] = []
    real_body, real_end = CompressionFilter.response_body, CompressionFilter.response_end
    segment = bytes(range(256)) * 400
    try:
        CompressionFilter.response_body = lambda self, view, data: calls.append("body") or real_body(self, view, data)
        CompressionFilter.response_end = lambda self, view: calls.append("end") or real_end(self, view)
        client.send(request("/seg1.ts"))
        backend = proxy.accept()
        backend.send(origin_head(segment, b"video/mp2t") + segment)
        response = client.response()
        assert response.body == segment and response.header(b"Content-Length") == b"%d" % len(segment)
        assert response.header(b"Content-Encoding") is None and response.header(b"Vary") is None
        assert calls == []
        other = proxy.client()
        other.send(request())
        backend.send(origin_head() + PLAYLIST)  # (on the pooled backend connection)
        response = other.response()
        assert response.header(b"Content-Encoding") == b"br" and decode(response) == PLAYLIST
        assert calls == ["body", "end"]
    finally:
        CompressionFilter.response_body, CompressionFilter.response_end = real_body, real_end


def test_range_requests_are_left_alone() -> None:
    proxy = InMemoryProxy(config(cache=False))
    partial = b"HTTP/1.1 206 Partial Content\r\nContent-Type: %s\r\nContent-Range: bytes 0-1999/9999\r\nContent-Length: 2000\r\n\r\n" % TYPE
    response = fetch(proxy, request(extra=b"Range: bytes=0-1999\r\n"), partial + b"y" * 2000)
    assert response.status == 206 and response.header(b"Content-Encoding") is None
    assert response.body == b"y" * 2000


def test_head_request_says_the_coding_without_a_length() -> None:
    proxy = InMemoryProxy(config(cache=False))
    client = proxy.client()
    client.send(request(method=b"HEAD"))
    proxy.accept().send(origin_head())
    response = client.response(head_request=True)
    assert response.header(b"Content-Encoding") == b"br"
    assert response.header(b"Content-Length") is None
    assert counts(proxy)["stream"] == 0


def test_a_route_without_compression_is_bare() -> None:
    proxy = InMemoryProxy(config(cache=False))
    route = next(r for r in proxy.core.routes if r.name == "bare")
    assert route.filters is None
    response = fetch(proxy, request("/bare/x.m3u8"), origin_head() + PLAYLIST)
    assert response.header(b"Content-Encoding") is None and response.header(b"Vary") is None


def test_brotli_off_offers_gzip_only() -> None:
    proxy = InMemoryProxy(config(cache=False, settings="{brotli: false}"))
    response = fetch(proxy, request(accept=b"br, gzip"), origin_head() + PLAYLIST)
    assert response.header(b"Content-Encoding") == b"gzip"


# -- with the cache: compressed copies ------------------------------------------------------


def test_hits_are_answered_from_one_copy_per_coding() -> None:
    proxy = InMemoryProxy(config(cache=True))
    miss = fetch(proxy, request(accept=b"gzip"), origin_head() + PLAYLIST)
    assert decode(miss) == PLAYLIST and miss.header(b"Content-Encoding") == b"gzip"
    stored = [key for key in proxy.core.cache.memory.keys()]
    assert stored == [b"http://h/live.m3u8"]  # the identity response only
    assert proxy.core.cache.memory.peek(b"http://h/live.m3u8").body == PLAYLIST
    for _ in range(3):
        for accept, coding in ((b"gzip", b"gzip"), (b"br", b"br"), (b"identity", None)):
            hit = fetch(proxy, request(accept=accept))
            assert hit.header(b"Cache-Status").startswith(b"speedproxy; hit")
            assert hit.header(b"Content-Encoding") == coding
            assert hit.header(b"Vary") == b"Accept-Encoding"
            assert hit.header(b"ETag") == (b'W/"v1"' if coding else b'"v1"')
            assert hit.header(b"Content-Length") == b"%d" % len(hit.body)
            assert decode(hit) == PLAYLIST
    assert counts(proxy) == {"stream": 1, "copy_made": 2, "copy_hit": 4}
    assert len(proxy.connects) == 1


def test_a_new_response_gets_new_copies() -> None:
    proxy = InMemoryProxy(config(cache=True))
    client = proxy.client()
    client.send(request(accept=b"gzip"))
    backend = proxy.accept()
    backend.send(origin_head() + PLAYLIST)
    fetch(proxy, request(accept=b"gzip"))
    newer = PLAYLIST.replace(b"segment", b"segmenT")
    backend.take()
    client = proxy.client()
    client.send(request(accept=b"gzip", extra=b"Cache-Control: no-cache\r\n"))  # revalidate
    assert b'If-None-Match: "v1"' in backend.received()
    backend.send(origin_head(newer).replace(b'"v1"', b'"v2"') + newer)
    assert decode(client.response()) == newer
    hit = fetch(proxy, request(accept=b"gzip"))
    assert decode(hit) == newer and hit.header(b"ETag") == b'W/"v2"'
    assert counts(proxy)["copy_made"] == 2


def test_a_purge_drops_the_copies() -> None:
    proxy = InMemoryProxy(config(cache=True))
    fetch(proxy, request(accept=b"br"), origin_head() + PLAYLIST)
    fetch(proxy, request(accept=b"br"))
    assert len(proxy.core.cache.memory) == 2
    proxy.core.cache.purge(b"http://h/live.m3u8")
    assert len(proxy.core.cache.memory) == 0


def test_conditional_hit_answers_304_with_the_weak_etag() -> None:
    proxy = InMemoryProxy(config(cache=True))
    fetch(proxy, request(accept=b"gzip"), origin_head() + PLAYLIST)
    hit = fetch(proxy, request(accept=b"gzip", extra=b'If-None-Match: W/"v1"\r\n'))
    assert hit.status == 304
    assert hit.header(b"ETag") == b'W/"v1"'
    assert hit.header(b"Vary") == b"Accept-Encoding"


def test_a_range_of_a_stored_object_is_identity() -> None:
    proxy = InMemoryProxy(config(cache=True))
    fetch(proxy, request(accept=b"gzip"), origin_head() + PLAYLIST)
    hit = fetch(proxy, request(accept=b"gzip", extra=b"Range: bytes=0-9\r\n"))
    assert hit.status == 206 and hit.body == PLAYLIST[:10]
    assert hit.header(b"Content-Encoding") is None


def test_followers_of_a_coalesced_miss_each_get_their_coding() -> None:
    proxy = InMemoryProxy(config(cache=True))
    clients = []
    for accept in (b"gzip", b"br", None):
        client = proxy.client()
        client.send(request(accept=accept))
        clients.append(client)
    assert proxy.pending_connects() == 1
    proxy.accept().send(origin_head() + PLAYLIST)
    got = [client.response() for client in clients]
    assert [r.header(b"Content-Encoding") for r in got] == [b"gzip", b"br", None]
    assert all(decode(r) == PLAYLIST for r in got)
    assert proxy.core.cache.memory.peek(b"http://h/live.m3u8").body == PLAYLIST


def test_a_stored_object_not_compressible_is_served_as_stored() -> None:
    proxy = InMemoryProxy(config(cache=True))
    png = b"\x89PNG" * 1000
    fetch(proxy, request("/p.png"), origin_head(png, b"image/png") + png)
    hit = fetch(proxy, request("/p.png"))
    assert hit.header(b"Cache-Status").startswith(b"speedproxy; hit")
    assert hit.header(b"Content-Encoding") is None and hit.header(b"Vary") is None
    assert hit.body == png
    assert counts(proxy)["copy_made"] == 0


def test_copies_are_shared_through_the_disk_tier(tmp_path) -> None:
    text = config(cache=True) + f"cache: {{memory_size: 64MiB, disk_path: {tmp_path}/disk}}\n"
    one, other = InMemoryProxy(text), InMemoryProxy(text)
    try:
        fetch(one, request(accept=b"gzip"), origin_head() + PLAYLIST)
        fetch(one, request(accept=b"gzip"))
        assert one.core.cache.disk.flush()
        hit = fetch(other, request(accept=b"gzip"))  # the other worker
        assert hit.header(b"Cache-Status").startswith(b"speedproxy; hit")
        assert decode(hit) == PLAYLIST
        assert counts(one)["copy_made"] == 1
        assert counts(other) == {"stream": 0, "copy_made": 0, "copy_hit": 1}
    finally:
        one.core.cache.close()
        other.core.cache.close()


# -- the chain ------------------------------------------------------------------------------


def test_compression_is_first_and_the_cache_keeps_copies() -> None:
    from speedproxy.edge.compression import CompressionFilter
    from speedproxy.edge.compression_copies import CompressingCacheFilter

    proxy = InMemoryProxy(config(cache=True))
    chain = next(r for r in proxy.core.routes if r.name == "default").filters
    assert isinstance(chain.filters[0], CompressionFilter)
    assert isinstance(chain.filters[-1], CompressingCacheFilter)


def test_a_reload_keeps_the_chain_unless_compression_changed() -> None:
    from speedproxy.config import parse_config

    proxy = InMemoryProxy(config(cache=False))
    before = next(r for r in proxy.core.routes if r.name == "default").filters
    proxy.core.apply_config(parse_config(config(cache=False)))
    assert next(r for r in proxy.core.routes if r.name == "default").filters is before
    proxy.core.apply_config(parse_config(config(cache=False, settings="{min_size: 10}")))
    after = next(r for r in proxy.core.routes if r.name == "default").filters
    assert after is not before and after.filters[0].policy.min_size == 10
    proxy.core.apply_config(parse_config(config(cache=False).replace(", compression: {min_size: 1KiB}", "")))
    assert next(r for r in proxy.core.routes if r.name == "default").filters is None


def test_a_body_another_filter_changes_per_answer_is_compressed_on_its_own() -> None:
    """As signed_urls does for the playlists of an HLS route: the filter sees
    the stored identity body, and what it makes is compressed for that answer."""
    from speedproxy.filters.base import Filter
    from speedproxy.filters.chain import FilterChain

    class Rewriter(Filter):
        def local_response(self, view, response) -> None:
            response.body = response.body.replace(b"segment", b"SIGNED")

    proxy = InMemoryProxy(config(cache=True))
    route = next(r for r in proxy.core.routes if r.name == "default")
    compression, cache = route.filters.filters
    route.filters = FilterChain([compression, Rewriter(), cache])
    fetch(proxy, request(accept=b"gzip"), origin_head() + PLAYLIST)
    for accept in (b"gzip", b"br"):
        hit = fetch(proxy, request(accept=accept))
        assert decode(hit) == PLAYLIST.replace(b"segment", b"SIGNED")
        assert hit.header(b"Content-Encoding") == accept
    assert counts(proxy) == {"stream": 3, "copy_made": 0, "copy_hit": 0}
    assert proxy.core.cache.memory.peek(b"http://h/live.m3u8").body == PLAYLIST


def test_an_hls_route_learns_from_playlists_it_sends_compressed() -> None:
    """The HLS filters sit nearer the origin than compression: they parse
    (and the cache stores) the identity playlist, which clients get compressed."""
    from speedproxy.hls.filter import route_state

    text = config(cache=True).replace("cache: {enabled: true}", "cache: {enabled: true}, hls: {enabled: true, prefetch_depth: 0}")
    proxy = InMemoryProxy(text)
    vod = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n" + b"".join(b"#EXTINF:4.0,\nseg%d.ts\n" % n for n in range(200)) + b"#EXT-X-ENDLIST\n"
    response = fetch(proxy, request("/v/index.m3u8", accept=b"gzip"), origin_head(vod) + vod)
    assert response.header(b"Content-Encoding") == b"gzip" and decode(response) == vod
    registry = route_state(proxy.core, "default").registry
    assert registry.version("/v/index.m3u8") is not None
    assert registry.segment("/v/seg7.ts") is not None
    stored = proxy.core.cache.memory.peek(b"http://h/v/index.m3u8")
    assert stored.body == vod
    hit = fetch(proxy, request("/v/index.m3u8", accept=b"br"))
    assert hit.header(b"Content-Encoding") == b"br" and decode(hit) == vod
