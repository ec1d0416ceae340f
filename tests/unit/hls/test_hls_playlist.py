"""Recognising, parsing and timing playlists (:mod:`speedproxy.hls.playlist`)."""

from __future__ import annotations

import pytest

from speedproxy.hls.playlist import (
    EVENT,
    LIVE,
    MASTER,
    VOD,
    is_playlist_path,
    is_playlist_type,
    parse_playlist,
    playlist_lifetime,
    resolve,
)

MASTER_TEXT = b"""#EXTM3U
#EXT-X-VERSION:6
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="en",URI="audio/en.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=800000,AVERAGE-BANDWIDTH=700000,RESOLUTION=640x360,AUDIO="aac"
v0/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720,AUDIO="aac"
v1/index.m3u8
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=90000,URI="v0/iframes.m3u8"
"""


def media(count: int, first: int = 0, end: bool = True, kind: str = "", target: int = 2) -> bytes:
    lines = ["#EXTM3U", f"#EXT-X-TARGETDURATION:{target}", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    if kind:
        lines.append(f"#EXT-X-PLAYLIST-TYPE:{kind}")
    for number in range(first, first + count):
        lines += ["#EXTINF:2.0,", f"seg{number}.ts"]
    if end:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


def test_recognised_by_path_and_content_type() -> None:
    assert is_playlist_path(b"/hls/a/index.m3u8") and is_playlist_path(b"/X.M3U8")
    assert not is_playlist_path(b"/hls/a/seg0.ts") and not is_playlist_path(b"/m3u8")
    for value in (b"application/vnd.apple.mpegurl", b"application/x-mpegURL; charset=utf-8", b"audio/mpegurl"):
        assert is_playlist_type(value)
    assert not is_playlist_type(b"video/mp2t") and not is_playlist_type(None) and not is_playlist_type(b"")


def test_master_playlist_lists_its_renditions_with_groups() -> None:
    playlist = parse_playlist(MASTER_TEXT)
    assert playlist is not None and playlist.kind == MASTER and playlist.is_master
    assert [(v.uri, v.bandwidth, v.group) for v in playlist.variants] == [
        ("v0/index.m3u8", 800000, "variant"),
        ("v1/index.m3u8", 2000000, "variant"),
        ("v0/iframes.m3u8", 90000, "iframe"),
        ("audio/en.m3u8", 0, "media:AUDIO:aac"),
    ]


@pytest.mark.parametrize(
    "body, kind",
    [
        (media(3), VOD),
        (media(3, end=False), LIVE),
        (media(3, end=False, kind="EVENT"), EVENT),
        (media(3, end=True, kind="EVENT"), VOD),  # a finished event no longer changes
        (media(3, end=True, kind="VOD"), VOD),
    ],
)
def test_media_playlist_kinds(body: bytes, kind: str) -> None:
    playlist = parse_playlist(body)
    assert playlist is not None and playlist.kind == kind
    assert playlist.is_live == (kind in (LIVE, EVENT))


def test_segments_carry_sequence_numbers_init_sections_and_keys() -> None:
    body = b"""#EXTM3U
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:41
#EXT-X-MAP:URI="init.mp4"
#EXT-X-KEY:METHOD=AES-128,URI="key1.bin"
#EXTINF:4.0,
a.m4s
#EXT-X-KEY:METHOD=NONE
#EXTINF:4.0,
b.m4s
#EXT-X-BYTERANGE:1000@0
#EXTINF:4.0,
c.m4s
"""
    playlist = parse_playlist(body)
    assert playlist is not None and playlist.kind == LIVE and playlist.target_duration == 4
    assert [(s.sequence, s.uri, s.byterange) for s in playlist.segments] == [
        (41, "a.m4s", None),
        (42, "b.m4s", None),
        (43, "c.m4s", "1000@0"),
    ]
    assert playlist.init_uris == ["init.mp4"] and playlist.key_uris == ["key1.bin"]


@pytest.mark.parametrize("body", [b"", b"not a playlist", b"<html>#EXTM3U</html>", b"\xff\xfe garbage"])
def test_what_is_not_a_playlist_is_none(body: bytes) -> None:
    assert parse_playlist(body) is None


def test_a_byte_order_mark_is_allowed() -> None:
    assert parse_playlist(b"\xef\xbb\xbf" + media(1)) is not None


def test_lifetimes() -> None:
    vod, live = parse_playlist(media(2)), parse_playlist(media(2, end=False, target=6))
    master = parse_playlist(MASTER_TEXT)
    assert vod is not None and live is not None and master is not None
    assert playlist_lifetime(vod, None, 3600.0) == 3600.0
    assert playlist_lifetime(master, None, 3600.0) == 3600.0
    assert playlist_lifetime(live, None, 3600.0) == 3.0  # auto: half the target duration
    assert playlist_lifetime(live, 1.5, 3600.0) == 1.5
    assert playlist_lifetime(live, 0.0, 3600.0) is None  # 0: the origin's
    assert playlist_lifetime(vod, None, 0.0) is None


def test_parsing_an_hour_of_segments_says_what_it_cost() -> None:
    # What it costs is bench's business (bench/hls_audience.py); here: all
    # 1,800 segments are there and the parse time is recorded for /hls/streams.
    playlist = parse_playlist(media(1800))
    assert playlist is not None and len(playlist.segments) == 1800
    assert playlist.parse_seconds > 0.0


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("seg0.ts", "/hls/a/seg0.ts"),
        ("seg0.ts?tok=1#frag", "/hls/a/seg0.ts?tok=1"),
        ("../b/seg0.ts", "/hls/b/seg0.ts"),
        ("/other/seg0.ts", "/other/seg0.ts"),
        ("http://origin:8080/hls/a/seg0.ts?x=1", "/hls/a/seg0.ts?x=1"),
        ("HTTP://ORIGIN:8080/y.ts", "/y.ts"),
        ("//origin:8080/z.ts", "/z.ts"),
        ("http://elsewhere/seg0.ts", None),
        ("ftp://origin:8080/seg0.ts", None),
    ],
)
def test_resolving_listed_uris(uri: str, expected: object) -> None:
    assert resolve("/hls/a/index.m3u8", uri, {"origin:8080"}) == expected


def test_playlist_outline_tells_the_kind_and_target_duration_without_parsing() -> None:
    from speedproxy.hls.playlist import EVENT, LIVE, MASTER, VOD, playlist_outline

    assert playlist_outline(b"<html>") is None
    assert playlist_outline(b"\xef\xbb\xbf#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n").kind == MASTER
    vod = playlist_outline(b"#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6,\na.ts\n#EXT-X-ENDLIST\n")
    assert (vod.kind, vod.target_duration) == (VOD, 6.0)
    assert playlist_outline(b"#EXTM3U\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-TARGETDURATION:4\n").kind == EVENT
    live = playlist_outline(b"#EXTM3U\n#EXT-X-TARGETDURATION:2.5\n#EXTINF:2,\na.ts\n")
    assert (live.kind, live.target_duration) == (LIVE, 2.5)
