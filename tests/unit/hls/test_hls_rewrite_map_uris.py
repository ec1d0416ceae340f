"""Tests for :func:`speedproxy.hls.rewrite.map_uris` (used to sign playlist URIs)."""

from __future__ import annotations

from speedproxy.hls.rewrite import map_uris

PLAYLIST = (
    b'#EXTM3U\r\n#EXT-X-MAP:URI="init.mp4",BYTERANGE="10@0"\r\n#EXT-X-KEY:METHOD=NONE\r\n'
    b"#EXTINF:2,\r\n  seg0.ts\r\n\r\n#EXTINF:2,\r\nseg1.ts"
)


def test_every_uri_line_and_attribute_is_mapped_and_the_rest_kept() -> None:
    out = map_uris(PLAYLIST, lambda uri: uri + "?t=1")
    assert out == (
        b'#EXTM3U\r\n#EXT-X-MAP:URI="init.mp4?t=1",BYTERANGE="10@0"\r\n#EXT-X-KEY:METHOD=NONE\r\n'
        b"#EXTINF:2,\r\nseg0.ts?t=1\r\n\r\n#EXTINF:2,\r\nseg1.ts?t=1"
    )


def test_unchanged_is_the_same_object() -> None:
    assert map_uris(PLAYLIST, lambda uri: uri) is PLAYLIST
