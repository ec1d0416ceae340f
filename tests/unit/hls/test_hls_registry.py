"""What a worker learns of streams, and how viewers watch (:mod:`speedproxy.hls.registry`, ``viewers``)."""

from __future__ import annotations

from speedproxy.hls.playlist import INIT, KEY, SEGMENT, parse_playlist
from speedproxy.hls.registry import StreamRegistry
from speedproxy.hls.viewers import ViewerTracker


def media(first: int, count: int, end: bool = False, extra: str = "") -> bytes:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{first}", extra]
    for number in range(first, first + count):
        lines += ["#EXTINF:2.0,", f"seg{number}.ts"]
    if end:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(line for line in lines if line) + "\n").encode()


def learn(registry: StreamRegistry, path: str, body: bytes, version: float = 0.0) -> list:
    playlist = parse_playlist(body)
    assert playlist is not None
    return registry.learn(path, playlist, {"origin:80", "origin"}, version)


def test_segments_are_known_with_their_rendition_and_number() -> None:
    registry = StreamRegistry()
    learn(registry, "/s/v0/index.m3u8", media(10, 5, end=True, extra='#EXT-X-MAP:URI="init.mp4"'))
    ref = registry.segment("/s/v0/seg12.ts")
    assert ref is not None and ref.role == SEGMENT and ref.sequence == 12
    assert ref.rendition.path == "/s/v0/index.m3u8" and ref.rendition.kind == "vod"
    assert registry.segment("/s/v0/init.mp4").role == INIT  # type: ignore[union-attr]
    assert registry.following(ref.rendition, 12, 3) == ["/s/v0/seg13.ts", "/s/v0/seg14.ts"]
    assert registry.following(ref.rendition, 9, 2) == ["/s/v0/seg10.ts", "/s/v0/seg11.ts"]
    assert registry.segment("/s/v0/seg15.ts") is None


def test_a_live_window_moves_and_new_segments_are_reported() -> None:
    registry = StreamRegistry()
    assert learn(registry, "/live/index.m3u8", media(0, 4)) == []  # the first version: nothing is "new"
    assert learn(registry, "/live/index.m3u8", media(1, 4)) == ["/live/seg4.ts"]
    assert learn(registry, "/live/index.m3u8", media(3, 4)) == ["/live/seg5.ts", "/live/seg6.ts"]
    old = registry.segment("/live/seg1.ts")
    assert old is not None and old.rendition.first == 3
    assert registry.following(old.rendition, 4, 5) == ["/live/seg5.ts", "/live/seg6.ts"]


def test_master_playlists_group_renditions() -> None:
    registry = StreamRegistry()
    master = b"""#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="audio.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=1
v0/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2
http://origin/s/v1/index.m3u8
"""
    learn(registry, "/s/master.m3u8", master, version=7.0)
    assert registry.version("/s/master.m3u8") == 7.0
    for path in ("/s/v0/index.m3u8", "/s/v1/index.m3u8"):
        learn(registry, path, media(0, 3, end=True))
    v0 = registry.segment("/s/v0/seg0.ts").rendition  # type: ignore[union-attr]
    v1 = registry.segment("/s/v1/seg0.ts").rendition  # type: ignore[union-attr]
    assert registry.group_of(v0) == registry.group_of(v1) == ("/s/master.m3u8", "variant")
    learn(registry, "/s/audio.m3u8", media(0, 3, end=True))
    audio = registry.segment("/s/seg0.ts").rendition  # type: ignore[union-attr]
    assert registry.group_of(audio) == ("/s/master.m3u8", "media:AUDIO:a")
    learn(registry, "/t/index.m3u8", media(0, 3, end=True))
    alone = registry.segment("/t/seg0.ts").rendition  # type: ignore[union-attr]
    assert registry.group_of(alone) == ("/t/index.m3u8",)


def test_byte_range_renditions_are_not_prefetched() -> None:
    registry = StreamRegistry()
    body = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + b"".join(
        b"#EXT-X-BYTERANGE:100@%d\n#EXTINF:2,\nall.ts\n" % (100 * n) for n in range(4)
    )
    learn(registry, "/b/index.m3u8", body)
    ref = registry.segment("/b/all.ts")
    assert ref is not None and ref.rendition.byterange
    assert registry.following(ref.rendition, ref.sequence, 3) == []


def test_keys_and_other_hosts() -> None:
    registry = StreamRegistry()
    learn(registry, "/k/index.m3u8", media(0, 1, extra='#EXT-X-KEY:METHOD=AES-128,URI="https://keys.example/k"'))
    learn(registry, "/k2/index.m3u8", media(0, 1, extra='#EXT-X-KEY:METHOD=AES-128,URI="/keys/k2"'))
    assert registry.segment("/keys/k2").role == KEY  # type: ignore[union-attr]
    assert all("keys.example" not in target for target in registry.segments)


def test_registry_is_bounded() -> None:
    registry = StreamRegistry(max_segments=10, max_renditions=2)
    for number in range(5):
        learn(registry, f"/r{number}/index.m3u8", media(0, 4, end=True))
    assert len(registry.segments) == 10 and len(registry.renditions) == 2
    assert registry.segment("/r4/seg3.ts") is not None and registry.segment("/r0/seg0.ts") is None


def test_viewers_sequential_seek_and_switch() -> None:
    viewers = ViewerTracker(idle=60.0)
    v0, v1 = object(), object()
    assert not viewers.saw("a", v0, 0, 0.0)  # the first request
    assert viewers.saw("a", v0, 1, 1.0)  # sequential
    assert not viewers.saw("a", v0, 7, 2.0)  # a seek
    assert viewers.saw("a", v0, 8, 3.0)  # settled
    assert viewers.saw("a", v1, 9, 4.0)  # a switch to the next segment of another rendition
    assert viewers.saw("a", v0, 9, 5.0)  # a switch that re-asks the same position
    assert not viewers.saw("a", v0, 9, 6.0)  # the same segment again
    assert not viewers.saw("a", v0, 8, 7.0)  # backwards
    assert not viewers.saw("b", v0, 9, 7.0)  # another viewer
    assert not viewers.saw("a", v0, 9, 100.0)  # idle too long: starts over
    assert viewers.active(100.0) == 1 and len(viewers) == 1
