"""HLS warm-up, streams and bandwidth limits end to end (issue 13).

``twistd speedproxy`` in front of :class:`hls_support.HlsOrigin`: the
warm-up and streams calls of the admin API (2 workers), and the
``rate_limit`` / ``max_bandwidth`` pacing (1 worker, so a route's whole
``max_bandwidth`` is that worker's share) measured by real clients.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from admin_support import AdminClient
from cache_support import Session, cache_status, run_threads
from hls_support import BIG_SEGMENT, HlsOrigin, big_segment, ensure_ffmpeg, make_vod
from speedproxy.testing import ProxyProcess, wait_until


@pytest.fixture(scope="module")
def vod_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vod(ensure_ffmpeg(), tmp_path_factory.mktemp("hls-api-vod"))


@pytest.fixture(scope="module")
def origin(vod_dir: Path) -> Iterator[HlsOrigin]:
    server = HlsOrigin(vod_dir).start()
    try:
        yield server
    finally:
        server.stop()


def _backends(origin: HlsOrigin) -> Dict[str, Any]:
    host, port = origin.address.split(":")
    return {"origin": [{"id": "o1", "host": host, "port": int(port)}]}


@pytest.fixture(scope="module")
def proxy(origin: HlsOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    directory = tmp_path_factory.mktemp("hls-api-proxy")
    config = {
        "server": {"workers": 2},
        "cache": {"memory_size": "64MiB", "disk_path": str(directory / "cache"), "disk_size": "256MiB"},
        "backends": _backends(origin),
        "routing": {"video": {"path": "/", "upstream": "origin", "cache": {"enabled": True}, "hls": {"enabled": True}}},
    }
    process = ProxyProcess(config, directory=directory)
    try:
        process.start()
        yield process
    finally:
        process.stop(timeout=5.0)


#: Bytes/s of the limited routes.
RATE = 400_000
AFTER = 64 * 1024
ROUTE_RATE = 600_000


@pytest.fixture(scope="module")
def limited(origin: HlsOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    directory = tmp_path_factory.mktemp("hls-limited-proxy")
    config = {
        "server": {"workers": 1},
        "cache": {"memory_size": "64MiB"},
        "backends": _backends(origin),
        "routing": {
            "per_client": {
                "path": "/big/",
                "upstream": "origin",
                "cache": {"enabled": True},
                "hls": {"enabled": True, "prefetch_depth": 0, "rate_limit": RATE, "rate_limit_after": AFTER},
            },
            "whole_route": {
                "path": "/shared/",
                "upstream": "origin",
                "cache": {"enabled": True},
                "hls": {"enabled": True, "prefetch_depth": 0, "max_bandwidth": ROUTE_RATE},
            },
        },
    }
    process = ProxyProcess(config, directory=directory)
    try:
        process.start()
        yield process
    finally:
        process.stop(timeout=5.0)


# -- warm-up -----------------------------------------------------------------------------------


def _warm(proxy: ProxyProcess, body: Dict[str, Any]) -> Dict[str, Any]:
    admin = AdminClient.of(proxy)
    started = admin.post("/api/v1/hls/warmup", body)
    assert started.status == 202, started.json
    job = started.json
    assert job["state"] == "running" and job["status_url"] == f"/api/v1/hls/warmup/{job['id']}"

    def finished() -> Any:
        answer = admin.get(job["status_url"])
        assert answer.status == 200, answer.json
        return answer.json if answer.json["state"] != "running" else None

    return wait_until(finished, 20.0, "the HLS warm-up job to finish")


def test_warmup_of_the_lowest_variant_fetches_its_playlists_and_first_segments_then_players_hit(
    proxy: ProxyProcess, origin: HlsOrigin
) -> None:
    base = "/hls/warm1"
    url = f"http://test.local{base}/master.m3u8"  # the Host players send
    result = _warm(proxy, {"url": url, "variants": "lowest", "segments": 2})
    assert result["state"] == "done", json.dumps(result)
    assert [(item["kind"], item["status"]) for item in result["playlists"]] == [("master", 200), ("media", 200)]
    assert result["playlists"][1]["url"].endswith(f"{base}/v0/index.m3u8")
    assert result["segments"]["total"] == 2 and result["segments"]["done"] == 2 and result["segments"]["failed"] == 0
    assert sorted(origin.paths(base)) == sorted(
        [f"{base}/master.m3u8", f"{base}/v0/index.m3u8", f"{base}/v0/seg0.ts", f"{base}/v0/seg1.ts"]
    )
    with Session(proxy) as player:  # what was warmed is a hit, on any worker
        for path in ("master.m3u8", "v0/index.m3u8", "v0/seg0.ts", "v0/seg1.ts"):
            status = cache_status(player.get(f"{base}/{path}"))
            assert status.hit and status.fwd is None, (path, str(status))
    # Each warmed object was fetched once (the player's sequential requests
    # then prefetch the segments after seg1, as they should).
    warmed = [f"{base}/master.m3u8", f"{base}/v0/index.m3u8", f"{base}/v0/seg0.ts", f"{base}/v0/seg1.ts"]
    assert [origin.paths(base).count(path) for path in warmed] == [1, 1, 1, 1]


def test_warmup_of_all_variants_and_of_n_variants(proxy: ProxyProcess, origin: HlsOrigin) -> None:
    result = _warm(proxy, {"url": f"http://{proxy.host}:{proxy.port}/hls/warm2/master.m3u8", "variants": "all", "segments": 1})
    assert result["state"] == "done", json.dumps(result)
    assert sorted(origin.paths("/hls/warm2/v")) == sorted(
        [f"/hls/warm2/v{n}/{name}" for n in range(3) for name in ("index.m3u8", "seg0.ts")]
    )
    result = _warm(proxy, {"url": f"http://{proxy.host}:{proxy.port}/hls/warm3/master.m3u8", "variants": 2, "segments": 3})
    assert result["state"] == "done" and result["segments"]["total"] == 6, result
    assert not origin.paths("/hls/warm3/v2/")
    assert sorted(path for path in origin.paths("/hls/warm3/v1/") if path.endswith(".ts")) == [
        f"/hls/warm3/v1/seg{n}.ts" for n in range(3)
    ]


def test_warmup_answers_bad_input_and_unknown_jobs_and_reports_a_missing_stream(proxy: ProxyProcess) -> None:
    admin = AdminClient.of(proxy)
    for body, field in (
        ({"url": "/relative.m3u8"}, "url"),
        ({"url": "http://x/master.m3u8", "variants": "most"}, "variants"),
        ({"url": "http://x/master.m3u8", "variants": 0}, "variants"),
        ({"url": "http://x/master.m3u8", "segments": -1}, "segments"),
        ({"url": "http://x/master.m3u8", "other": 1}, "other"),
    ):
        answer = admin.post("/api/v1/hls/warmup", body)
        assert answer.status == 400 and answer.json.get("field") == field, (body, answer.json)
    assert admin.get("/api/v1/hls/warmup/nosuchjob").status == 404
    result = _warm(proxy, {"url": f"http://{proxy.host}:{proxy.port}/nothing/here/master.m3u8"})
    assert result["state"] == "failed" and result["playlists"][0]["status"] == 404, result
    assert "could not be read" in result["error"]


# -- streams ---------------------------------------------------------------------------------


def test_streams_lists_viewers_renditions_bytes_hit_ratio_and_origin_bytes(proxy: ProxyProcess, origin: HlsOrigin, vod_dir: Path) -> None:
    base = "/hls/watched"
    sizes = [(vod_dir / "v1" / f"seg{n}.ts").stat().st_size for n in range(3)]

    def watch(index: int) -> int:
        with Session(proxy) as player:
            received = 0
            for path in ("master.m3u8", "v1/index.m3u8", "v1/seg0.ts", "v1/seg1.ts", "v1/seg2.ts"):
                response = player.request("GET", f"{base}/{path}", [("User-Agent", f"player-{index}")])
                assert response.status == 200
                received += len(response.body)
            return received

    watch(0)  # the first player fills the cache; the next ones hit
    wait_until(lambda: len(origin.paths(f"{base}/v1/seg")) >= 4, 5.0, "prefetches")  # seg3 prefetched
    # Players 1-3 (a viewer is an address and a User-Agent: player-0 again
    # would be the same viewer, or another one on another worker).
    run_threads(lambda index: watch(index + 1), 3, timeout=20.0)
    answer = AdminClient.of(proxy).get("/api/v1/hls/streams")
    assert answer.status == 200, answer.json
    streams = [stream for stream in answer.json["streams"] if stream["stream"] == f"{base}/master.m3u8"]
    assert len(streams) == 1, answer.json
    stream = streams[0]
    assert stream["route"] == "video" and stream["viewers"] == 4, json.dumps(answer.json)
    assert stream["renditions"] == [f"{base}/v1/index.m3u8"]
    assert stream["requests"] == 20
    segment_bytes = sum(sizes)
    assert stream["served_bytes"] >= 4 * segment_bytes
    # Every segment came from the origin once (three by players' misses, one by prefetch).
    assert stream["origin_bytes"] >= segment_bytes and stream["origin_bytes"] < 2 * segment_bytes + 10_000
    assert stream["misses"] <= 5 and stream["hits"] >= 15 and stream["cache_hit_ratio"] >= 0.75
    assert stream["throughput_bytes_per_second"] > 0
    route = answer.json["routes"]["video"]
    assert route["served_bytes"] >= stream["served_bytes"] and route["streams"] >= 1
    # The same figures in /metrics.
    metrics = metric_values(AdminClient.of(proxy).get("/metrics").raw.decode())
    assert metrics['speedproxy_hls_served_bytes_total{route="video"}'] >= stream["served_bytes"]
    assert metrics['speedproxy_hls_origin_bytes_total{route="video"}'] >= stream["origin_bytes"]
    assert metrics['speedproxy_hls_prefetch_total{route="video",result="ok"}'] >= 1
    assert metrics['speedproxy_hls_prefetch_total{route="video",result="started"}'] >= 1
    assert metrics['speedproxy_hls_viewers{route="video"}'] >= 1
    assert metrics[f'speedproxy_hls_stream_throughput_bytes{{route="video",stream="{base}/master.m3u8"}}'] > 0


def metric_values(text: str) -> Dict[str, float]:
    """``name{labels}`` -> value of a Prometheus text exposition."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


# -- bandwidth ---------------------------------------------------------------------------------


def _timed_get(proxy: ProxyProcess, path: str) -> Tuple[bytes, float, float]:
    """GET ``path`` on a new connection: the body, seconds to the first byte
    past the head and the ``AFTER`` allowance, and seconds to the last byte."""
    with socket.create_connection(proxy.address, timeout=30.0) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n".encode())
        started = time.monotonic()
        data = b""
        past_allowance = None
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if past_allowance is None and b"\r\n\r\n" in data and len(data) - data.index(b"\r\n\r\n") - 4 >= AFTER:
                past_allowance = time.monotonic()
        ended = time.monotonic()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert past_allowance is not None
    return body, past_allowance - started, ended - started


def test_rate_limit_paces_each_client_connection_after_its_allowance(limited: ProxyProcess) -> None:
    path = "/big/rate/seg0.ts"
    for attempt in ("miss", "hit"):
        body, allowance_at, took = _timed_get(limited, path)
        assert body == big_segment("big/rate/seg0.ts")
        rate = (BIG_SEGMENT - AFTER) / (took - allowance_at)
        assert abs(rate - RATE) <= RATE * 0.10, (attempt, rate, took)
        assert allowance_at < 0.5, allowance_at  # the allowance goes at once


def test_max_bandwidth_is_shared_by_the_connections_of_a_route(limited: ProxyProcess) -> None:
    """Three players at once on the route limited to ROUTE_RATE (one worker: all of it)."""
    barrier = threading.Barrier(3)

    def fetch(index: int) -> Tuple[float, float, int]:
        with socket.create_connection(limited.address, timeout=30.0) as sock:
            barrier.wait(10.0)
            started = time.monotonic()
            sock.sendall(f"GET /shared/big/route/seg{index}.ts HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            ended = time.monotonic()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == big_segment(f"big/route/seg{index}.ts"), head
        return started, ended, len(body)

    results = run_threads(fetch, 3, timeout=60.0)
    elapsed = max(end for _, end, _ in results) - min(start for start, _, _ in results)
    rate = sum(size for _, _, size in results) / elapsed
    assert abs(rate - ROUTE_RATE) <= ROUTE_RATE * 0.10, (rate, elapsed)
    # ...shared, not one after the other (then the first would be done after a third of the time).
    first_end = min(end for _, end, _ in results) - min(start for start, _, _ in results)
    assert first_end > elapsed * 0.5, results
