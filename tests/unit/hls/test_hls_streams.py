"""Per-stream figures of a route in a worker."""

from __future__ import annotations

from speedproxy.hls.streams import WINDOW, StreamFigures


def test_requests_are_accounted_per_stream_with_viewers_renditions_and_bytes() -> None:
    figures = StreamFigures(idle=60.0, forget=300.0)
    figures.finished(10.0, "/s/master.m3u8", None, ("1.1.1.1", b"a"), 500, 500, False)
    figures.finished(10.5, "/s/master.m3u8", "/s/v0/index.m3u8", ("1.1.1.1", b"a"), 1000, 0, True)
    figures.finished(11.0, "/s/master.m3u8", "/s/v1/index.m3u8", ("2.2.2.2", b"b"), 3000, 0, True)
    figures.finished(11.0, "/s/master.m3u8", "/s/v1/index.m3u8", None, 0, 7000, None)  # a prefetch
    info = figures.info(12.0)["/s/master.m3u8"]
    assert info["viewers"] == 2 and info["renditions"] == ["/s/v0/index.m3u8", "/s/v1/index.m3u8"]
    assert (info["requests"], info["hits"], info["misses"]) == (3, 2, 1)
    assert info["served_bytes"] == 4500 and info["origin_bytes"] == 7500
    assert info["throughput_bytes_per_second"] == 4500 / WINDOW
    assert (figures.served_bytes, figures.origin_bytes) == (4500, 7500)
    assert figures.viewers(12.0) == 2


def test_idle_viewers_and_forgotten_streams_drop_out_and_throughput_is_a_window() -> None:
    figures = StreamFigures(idle=10.0, forget=30.0)
    figures.finished(0.0, "/a.m3u8", "/a.m3u8", ("1", b""), 100, 0, True)
    figures.finished(15.0, "/b.m3u8", "/b.m3u8", ("2", b""), 100, 0, True)
    info = figures.info(15.0)
    assert info["/a.m3u8"]["viewers"] == 0 and info["/a.m3u8"]["renditions"] == []
    assert info["/a.m3u8"]["throughput_bytes_per_second"] == 0.0 and info["/b.m3u8"]["viewers"] == 1
    assert list(figures.info(31.0)) == ["/b.m3u8"]
    assert figures.served_bytes == 200  # totals never go down
