"""Rewriting playlists: variant caps and absolute URIs (:mod:`speedproxy.hls.rewrite`)."""

from __future__ import annotations

from speedproxy.hls.filter import take_max_bw
from speedproxy.hls.rewrite import bandwidth_of, origin_hosts, rewrite_playlist

MASTER = b"""#EXTM3U\r
#EXT-X-VERSION:6\r
#EXT-X-INDEPENDENT-SEGMENTS\r
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="en",URI="audio/en.m3u8"\r
#EXT-X-STREAM-INF:BANDWIDTH=2000000,AVERAGE-BANDWIDTH=100,RESOLUTION=1280x720\r
v1/index.m3u8\r
\r
# a comment\r
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\r
v0/index.m3u8\r
#EXT-X-STREAM-INF:AVERAGE-BANDWIDTH=4000000,BANDWIDTH=5000000\r
v2/index.m3u8\r
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=90000,URI="v0/if.m3u8"\r
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=300000,URI="v1/if.m3u8"\r
"""


def lines(body: bytes) -> list:
    return body.decode().splitlines()


def test_bandwidth_attribute_not_average() -> None:
    assert bandwidth_of("#EXT-X-STREAM-INF:AVERAGE-BANDWIDTH=1,BANDWIDTH=7") == 7
    assert bandwidth_of("#EXT-X-STREAM-INF:BANDWIDTH=7,AVERAGE-BANDWIDTH=1") == 7
    assert bandwidth_of("#EXT-X-STREAM-INF:RESOLUTION=1x1") is None


def test_cap_keeps_fitting_variants_in_order_with_every_other_line() -> None:
    out = rewrite_playlist(MASTER, max_bandwidth=2000000)
    expected = [line for line in lines(MASTER) if "5000000" not in line and line != "v2/index.m3u8"]
    assert lines(out) == expected
    assert b"\r\n" in out and not out.replace(b"\r\n", b"").count(b"\n")  # line endings kept


def test_cap_below_every_variant_keeps_the_lowest() -> None:
    out = lines(rewrite_playlist(MASTER, max_bandwidth=1000))
    assert [line for line in out if line.startswith("v") or "STREAM-INF" in line] == [
        "#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360",
        "v0/index.m3u8",
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=90000,URI="v0/if.m3u8"',
    ]
    assert '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="en",URI="audio/en.m3u8"' in out


def test_cap_drops_iframe_variants_over_it() -> None:
    out = lines(rewrite_playlist(MASTER, max_bandwidth=200000))
    assert [line for line in out if "I-FRAME" in line] == ['#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=90000,URI="v0/if.m3u8"']
    assert "v0/index.m3u8" in out and "v1/index.m3u8" not in out  # no variant fits: the lowest


def test_nothing_to_do_returns_the_same_bytes() -> None:
    assert rewrite_playlist(MASTER) is MASTER
    assert rewrite_playlist(MASTER, max_bandwidth=10**9) is MASTER
    assert rewrite_playlist(MASTER, origin_hosts={"origin:80"}) is MASTER


def test_media_playlists_are_never_capped() -> None:
    body = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg.ts\n#EXT-X-ENDLIST\n"
    assert rewrite_playlist(body, max_bandwidth=1) is body


def test_absolute_uris_to_the_origin_become_relative() -> None:
    body = b"""#EXTM3U
#EXT-X-TARGETDURATION:2
#EXT-X-MAP:URI="http://origin:8080/hls/a/init.mp4"
#EXT-X-KEY:METHOD=AES-128,URI="https://keys.example/k?id=1"
#EXTINF:2,
http://origin:8080/hls/a/seg0.ts?tok=abc
#EXTINF:2,
https://ORIGIN:8080/hls/a/seg1.ts
#EXTINF:2,
http://cdn.example/hls/a/seg2.ts
#EXTINF:2,
seg3.ts
"""
    out = lines(rewrite_playlist(body, origin_hosts={"origin:8080"}))
    assert out == [
        "#EXTM3U",
        "#EXT-X-TARGETDURATION:2",
        '#EXT-X-MAP:URI="/hls/a/init.mp4"',
        '#EXT-X-KEY:METHOD=AES-128,URI="https://keys.example/k?id=1"',
        "#EXTINF:2,",
        "/hls/a/seg0.ts?tok=abc",
        "#EXTINF:2,",
        "/hls/a/seg1.ts",
        "#EXTINF:2,",
        "http://cdn.example/hls/a/seg2.ts",
        "#EXTINF:2,",
        "seg3.ts",
    ]


def test_origin_hosts() -> None:
    hosts = origin_hosts(b"Video.Example:80", [("10.0.0.1", 8080, "http"), ("Origin", 443, "https"), ("::1", 80, "http")])
    assert hosts == {"video.example:80", "video.example", "10.0.0.1:8080", "origin:443", "origin", "[::1]:80", "[::1]"}


def test_take_max_bw() -> None:
    assert take_max_bw(b"/m.m3u8?max_bw=800000") == (800000, b"/m.m3u8")
    assert take_max_bw(b"/m.m3u8?a=1&max_bw=2.5M&b=2") == (2500000, b"/m.m3u8?a=1&b=2")
    assert take_max_bw(b"/m.m3u8?max_bw=800k") == (800000, b"/m.m3u8")
    assert take_max_bw(b"/m.m3u8?max_bw=junk&a=1") == (None, b"/m.m3u8?a=1")
    assert take_max_bw(b"/m.m3u8?max_bw=0") == (None, b"/m.m3u8")
    assert take_max_bw(b"/m.m3u8?x_max_bw=1") == (None, b"/m.m3u8?x_max_bw=1")
