"""Response compression (``routing.<name>.compression``) through ``twistd speedproxy``
with 2 workers, fetched with curl ``--compressed`` (gzip and brotli).

The cached route proves that a stored object is compressed once per coding,
not per hit: ``speedproxy_compression_total{event="copy_made"}`` stays put
while hits are answered from the kept copies (``copy_hit``).
"""

from __future__ import annotations

import gzip
import json
from typing import Any, Callable, Dict, Tuple

import brotli
import pytest

from speedproxy.testing import BackendExchange, HTTPBackend, ProxyProcess, backend_entry

from compression_support import compression_counts, curl, ensure_curl

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SETTINGS = {
    "types": [PLAYLIST_TYPE, "application/json", "text/*"],
    "min_size": "1KiB",
    "gzip_level": 5,
    "brotli": True,
}


def playlist(size: int) -> bytes:
    """A media playlist of about ``size`` bytes."""
    lines = [b"#EXTM3U", b"#EXT-X-VERSION:3", b"#EXT-X-TARGETDURATION:4", b"#EXT-X-MEDIA-SEQUENCE:0"]
    index = 0
    while sum(len(line) + 1 for line in lines) < size:
        lines += [b"#EXTINF:4.000,", b"segment-%06d.ts?token=abcdef0123456789" % index]
        index += 1
    lines.append(b"#EXT-X-ENDLIST")
    return b"\n".join(lines) + b"\n"


PLAYLIST = playlist(100 * 1024)
JSON = json.dumps({"items": [{"id": n, "title": "movie %d" % n} for n in range(200)]}).encode()
SMALL_JSON = b'{"ok": true}'
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20
#: A video segment (a type compression does not list), large enough to be spliced.
SEGMENT = bytes(range(256)) * (8 * 1024)


def answer(body: bytes, content_type: str, *extra: Tuple[str, str]) -> Callable[[BackendExchange], None]:
    def behaviour(exchange: BackendExchange) -> None:
        headers = [("Cache-Control", "max-age=600"), ("ETag", '"v1"')] + list(extra)
        exchange.send(200, body, headers, content_type)

    return behaviour


def already_gzipped(exchange: BackendExchange) -> None:
    exchange.send(200, gzip.compress(JSON), [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")], "application/json")


@pytest.fixture(scope="module")
def curl_binary() -> str:
    return ensure_curl()


@pytest.fixture(scope="module")
def origin(module_stack) -> HTTPBackend:
    backend = module_stack.backend(name="origin")
    for prefix in ("/plain/", "/cached/", "/other/"):
        backend.route(prefix + "live.m3u8", answer(PLAYLIST, PLAYLIST_TYPE))
        backend.route(prefix + "api.json", answer(JSON, "application/json; charset=utf-8"))
        backend.route(prefix + "small.json", answer(SMALL_JSON, "application/json"))
        backend.route(prefix + "poster.png", answer(PNG, "image/png"))
        backend.route(prefix + "raw.json", answer(JSON, "application/json", ("Cache-Control", "no-transform")))
        backend.route(prefix + "gz.json", already_gzipped)
        backend.route(prefix + "seg1.ts", answer(SEGMENT, "video/mp2t"))
    return backend


@pytest.fixture(scope="module")
def proxy(module_stack, origin: HTTPBackend, tmp_path_factory) -> ProxyProcess:
    disk = tmp_path_factory.mktemp("compression-disk") / "disk"
    config: Dict[str, Any] = {
        "server": {"workers": 2},
        "cache": {"memory_size": "64MiB", "disk_path": str(disk), "disk_size": "256MiB"},
        "backends": {"default": [backend_entry(origin, id="origin")]},
        "routing": {
            "plain": {"path": "/plain/", "upstream": "default", "compression": dict(SETTINGS)},
            "cached": {
                "path": "/cached/",
                "upstream": "default",
                "cache": {"enabled": True},
                "compression": dict(SETTINGS),
            },
            "bare": {"path": "/", "upstream": "default"},
        },
    }
    return module_stack.proxy(config=config)


ROUTES = ("plain", "cached")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("path,body", [("live.m3u8", PLAYLIST), ("api.json", JSON)])
def test_curl_compressed_gets_brotli_then_gzip(curl_binary: str, proxy: ProxyProcess, route: str, path: str, body: bytes) -> None:
    url = f"{proxy.url}/{route}/{path}"
    for _ in range(2):  # (a miss, then a hit on the cached route)
        got = curl(curl_binary, url)  # curl offers deflate, gzip, br, zstd
        assert got.status == 200
        assert got.header("content-encoding") == "br"
        assert got.body == body
        assert "Accept-Encoding" in got.header("vary")
        assert got.header("etag") == 'W/"v1"'
        # (a short relayed body is compressed whole and sent with its length, as a hit is)
        assert got.header("content-length") is None or got.header("transfer-encoding") is None
        gzipped = curl(curl_binary, url, accept_encoding="gzip")
        assert gzipped.header("content-encoding") == "gzip"
        assert gzipped.body == body
        assert gzipped.header("etag") == 'W/"v1"'


@pytest.mark.parametrize("route", ROUTES)
def test_what_is_sent_is_the_coding_it_says(curl_binary: str, proxy: ProxyProcess, route: str) -> None:
    url = f"{proxy.url}/{route}/live.m3u8"
    raw_br = curl(curl_binary, url, compressed=False, accept_encoding="br")
    assert raw_br.header("content-encoding") == "br"
    assert brotli.decompress(raw_br.body) == PLAYLIST
    assert len(raw_br.body) < len(PLAYLIST) // 5
    raw_gzip = curl(curl_binary, url, compressed=False, accept_encoding="gzip;q=1, br;q=0.5")
    assert raw_gzip.header("content-encoding") == "gzip"
    assert gzip.decompress(raw_gzip.body) == PLAYLIST
    for raw in (raw_gzip, raw_br):
        # From the kept copy (cached route) with the compressed length; relayed
        # (the 100 KiB playlist streams): chunked, or, when the compressor kept all
        # of it until the end (brotli), with the length of what it sent.
        if route == "cached" or raw.header("transfer-encoding") is None:
            assert raw.header("content-length") == str(len(raw.body))
        else:
            assert raw.header("transfer-encoding") == "chunked" and raw.header("content-length") is None
    got = curl(curl_binary, f"{proxy.url}/{route}/api.json", compressed=False, accept_encoding="gzip")
    assert gzip.decompress(got.body) == JSON
    # A short JSON answer (known length, up to 64 KiB) is compressed whole and sent with its length.
    assert got.header("transfer-encoding") is None and got.header("content-length") == str(len(got.body))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0, br;q=0", "compress"])
def test_identity_when_nothing_acceptable_is_offered(curl_binary: str, proxy: ProxyProcess, route: str, accept: Any) -> None:
    got = curl(curl_binary, f"{proxy.url}/{route}/api.json", compressed=False, accept_encoding=accept)
    assert got.header("content-encoding") is None
    assert got.body == JSON
    assert got.header("vary") == "Accept-Encoding"  # a cache before the client must know
    assert got.header("etag") == '"v1"'  # the identity representation keeps its strong ETag


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "path,body,why",
    [
        ("small.json", SMALL_JSON, "below min_size"),
        ("poster.png", PNG, "type not listed"),
        ("raw.json", JSON, "Cache-Control: no-transform"),
    ],
)
def test_left_alone(curl_binary: str, proxy: ProxyProcess, route: str, path: str, body: bytes, why: str) -> None:
    got = curl(curl_binary, f"{proxy.url}/{route}/{path}", compressed=False, accept_encoding="gzip, br")
    assert got.header("content-encoding") is None, why
    assert got.body == body, why
    assert got.header("vary") is None, why
    assert got.header("content-length") == str(len(body)), why


def test_a_large_segment_on_a_compressing_route_is_relayed_as_it_is(curl_binary: str, proxy: ProxyProcess) -> None:
    """An answer compression leaves alone skips its body hooks (and may be
    spliced again): a 2 MiB segment is relayed byte for byte with its length,
    no coding and no Vary, and the next compressible answer on the route is
    compressed as before."""
    for _ in range(2):
        got = curl(curl_binary, f"{proxy.url}/plain/seg1.ts", compressed=False, accept_encoding="gzip, br")
        assert got.status == 200 and got.body == SEGMENT
        assert got.header("content-length") == str(len(SEGMENT))
        assert got.header("content-encoding") is None and got.header("vary") is None
        got = curl(curl_binary, f"{proxy.url}/plain/api.json", compressed=False, accept_encoding="br")
        assert got.header("content-encoding") == "br" and brotli.decompress(got.body) == JSON


@pytest.mark.parametrize("route", ROUTES)
def test_never_twice(curl_binary: str, proxy: ProxyProcess, route: str) -> None:
    got = curl(curl_binary, f"{proxy.url}/{route}/gz.json", compressed=False, accept_encoding="br, gzip")
    assert got.header("content-encoding") == "gzip"
    assert gzip.decompress(got.body) == JSON


@pytest.mark.parametrize("route", ROUTES)
def test_ranges_are_not_compressed(curl_binary: str, proxy: ProxyProcess, route: str) -> None:
    url = f"{proxy.url}/{route}/live.m3u8"
    curl(curl_binary, url)  # stored first on the cached route: the range is served from it
    got = curl(curl_binary, url, compressed=False, accept_encoding="gzip, br", headers=[("Range", "bytes=10-99")])
    assert got.header("content-encoding") is None
    if route == "cached":
        assert got.status == 206
        assert got.body == PLAYLIST[10:100]
    else:  # the test origin ignores Range: its whole answer, still not compressed
        assert got.status == 200
        assert got.body == PLAYLIST


def test_a_route_without_compression_is_untouched(curl_binary: str, proxy: ProxyProcess) -> None:
    got = curl(curl_binary, f"{proxy.url}/other/live.m3u8", compressed=False, accept_encoding="gzip, br")
    assert got.header("content-encoding") is None
    assert got.header("vary") is None
    assert got.body == PLAYLIST and got.header("content-length") == str(len(PLAYLIST))


def test_a_cached_playlist_is_compressed_once_per_coding_not_per_hit(curl_binary: str, proxy: ProxyProcess, origin: HTTPBackend) -> None:
    """100 KiB playlist, stored once: later hits (both workers, both codings)
    are answered from kept copies; no hit compresses again."""
    url = f"{proxy.url}/cached/vod/once.m3u8"
    origin.route("/cached/vod/once.m3u8", answer(PLAYLIST, PLAYLIST_TYPE))
    before = compression_counts(proxy, "cached")
    first = curl(curl_binary, url, accept_encoding="gzip")  # the miss: compressed as it streams
    assert first.body == PLAYLIST and first.header("content-encoding") == "gzip"
    assert "stored" in first.header("cache-status")
    # Warm: each coding on each worker (new connections spread over both).
    for _ in range(6):
        for coding in ("gzip", "br"):
            got = curl(curl_binary, url, accept_encoding=coding)
            assert got.body == PLAYLIST and got.header("content-encoding") == coding
    warmed = compression_counts(proxy, "cached")
    made = warmed["copy_made"] - before.get("copy_made", 0)
    assert 2 <= made <= 4, warmed  # once per coding (per worker at most, the disk tier shares them)
    assert warmed["stream"] - before.get("stream", 0) == 1
    hits = 40
    for index in range(hits):
        coding = ("gzip", "br")[index % 2]
        got = curl(curl_binary, url, accept_encoding=coding)
        assert got.body == PLAYLIST and got.header("content-encoding") == coding
        assert got.header("cache-status").startswith("speedproxy; hit")
    after = compression_counts(proxy, "cached")
    assert after["copy_made"] == warmed["copy_made"], after  # no hit compressed again
    assert after["stream"] == warmed["stream"]
    assert after["copy_hit"] - warmed["copy_hit"] == hits
    assert len([r for r in origin.requests if r.path == "/cached/vod/once.m3u8"]) == 1


def test_a_purge_drops_the_copies_with_the_stored_object(curl_binary: str, proxy: ProxyProcess, origin: HTTPBackend) -> None:
    from admin_support import AdminClient

    path = "/cached/vod/purged.m3u8"
    first, second = PLAYLIST, PLAYLIST.replace(b"segment", b"chapter")
    served = iter([first, second])
    origin.route(path, lambda exchange: answer(next(served), PLAYLIST_TYPE)(exchange))
    url = proxy.url + path
    for coding in ("gzip", "br", "gzip", "br"):
        got = curl(curl_binary, url, accept_encoding=coding)
        assert got.body == first
    made = compression_counts(proxy, "cached")["copy_made"]
    purged = AdminClient.of(proxy).post("/api/v1/cache/purge", {"url": f"http://127.0.0.1:{proxy.port}{path}"})
    assert purged.status == 200, purged
    for coding in ("gzip", "br", "gzip", "br"):
        got = curl(curl_binary, url, accept_encoding=coding)
        assert got.body == second, "a copy of the purged object was served"
        assert got.header("content-encoding") == coding
    assert compression_counts(proxy, "cached")["copy_made"] > made
