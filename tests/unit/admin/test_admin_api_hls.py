"""The HLS admin figures: streams combined over workers, and the metrics text."""

from __future__ import annotations

from speedproxy.admin.api_hls_metrics import render_hls_metrics
from speedproxy.admin.api_hls_streams import combine_streams


def row(slot: int, viewers: int, served: int, hits: int, misses: int, renditions: list) -> dict:
    stream = {"viewers": viewers, "renditions": renditions, "requests": hits + misses, "hits": hits, "misses": misses,
              "served_bytes": served, "origin_bytes": 100, "throughput_bytes_per_second": 10.0, "last_seen": 5.0 + slot}
    hls = {"video": {"prefetch": {"started": 2, "ok": 1, "in_flight": 1}, "viewers": viewers, "served_bytes": served,
                     "origin_bytes": 100, "streams": {"/s/master.m3u8": stream}}}
    return {"slot": slot, "pid": 1, "result": {"enabled": True, "hls": hls}}


ROWS = [row(0, 2, 1000, 3, 1, ["/s/v0.m3u8"]), row(1, 1, 500, 4, 0, ["/s/v1.m3u8"]), {"slot": 2, "pid": 3, "error": "timeout"}]


def test_streams_are_summed_over_workers() -> None:
    combined = combine_streams(ROWS)
    (stream,) = combined["streams"]
    assert stream["route"] == "video" and stream["stream"] == "/s/master.m3u8" and stream["workers"] == 2
    assert (stream["viewers"], stream["served_bytes"], stream["origin_bytes"]) == (3, 1500, 200)
    assert stream["renditions"] == ["/s/v0.m3u8", "/s/v1.m3u8"] and stream["last_seen"] == 6.0
    assert stream["cache_hit_ratio"] == 0.875 and stream["throughput_bytes_per_second"] == 20.0
    assert combined["routes"]["video"] == {"served_bytes": 1500, "origin_bytes": 200, "viewers": 3, "streams": 1}


def test_metrics_text() -> None:
    text = render_hls_metrics(ROWS, ["video", "idle"]).decode()
    lines = text.splitlines()
    assert 'speedproxy_hls_prefetch_total{route="video",result="started"} 4' in lines
    assert 'speedproxy_hls_prefetch_total{route="video",result="ok"} 2' in lines
    assert 'speedproxy_hls_prefetch_total{route="idle",result="ok"} 0' in lines
    assert 'speedproxy_hls_viewers{route="video"} 3' in lines
    assert 'speedproxy_hls_served_bytes_total{route="video"} 1500' in lines
    assert 'speedproxy_hls_origin_bytes_total{route="video"} 200' in lines
    assert 'speedproxy_hls_stream_throughput_bytes{route="video",stream="/s/master.m3u8"} 20.0' in lines
    assert "# TYPE speedproxy_hls_served_bytes_total counter" in lines and "in_flight" not in text
