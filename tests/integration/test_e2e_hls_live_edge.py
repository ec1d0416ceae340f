"""The live edge end to end (issue 13, :mod:`speedproxy.hls.live`): ``twistd
speedproxy`` (2 workers, cache with a disk tier) in front of a plain origin
publishing a synthetic live stream.  Prefetch works ahead of live players:
a player learns of a new segment only once the proxy has it stored.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from admin_support import AdminClient
from cache_support import Session, cache_status, run_threads, worker_of
from hls_support import PREFETCH, HlsOrigin
from speedproxy.testing import ProxyProcess


def live_edge_config(origin: HlsOrigin, disk: Path, prefetch_depth: int) -> Dict[str, Any]:
    host, port = origin.address.split(":")
    return {
        "server": {"workers": 2},
        "cache": {"memory_size": "64MiB", "disk_path": str(disk), "disk_size": "256MiB"},
        "backends": {"origin": [{"id": "o1", "host": host, "port": int(port)}]},
        "routing": {
            "video": {
                "path": "/",
                "upstream": "origin",
                "cache": {"enabled": True},
                "hls": {"enabled": True, "prefetch_depth": prefetch_depth},
            },
        },
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[ProxyProcess, HlsOrigin]]:
    origin = HlsOrigin(tmp_path_factory.mktemp("hls-none")).start()  # live streams only: no ffmpeg stream
    directory = tmp_path_factory.mktemp("hls-live-edge")
    proxy = ProxyProcess(live_edge_config(origin, directory / "cache", 3), directory=directory)
    try:
        proxy.start()
        yield proxy, origin
    finally:
        proxy.stop(timeout=5.0)
        origin.stop()


def test_new_live_segments_are_in_the_cache_before_any_player_asks_for_them(setup: Tuple[ProxyProcess, HlsOrigin]) -> None:
    """Players poll a live playlist (target duration 4 s: fresh for 2 s, players
    held at most 1 s) and ask for each new segment as soon as it is listed;
    the origin publishes a segment 3 times."""
    proxy, origin = setup
    window, rounds, players = 4, 3, 8
    live = origin.live("edge1", target=4, window=window)
    base = "/live/edge1"
    sessions = [Session(proxy) for _ in range(players)]
    try:
        workers = {worker_of(session.get(f"{base}/index.m3u8")) for session in sessions}  # the first look
        asked: List[Tuple[str, str]] = []
        for _ in range(rounds):
            live.advance()
            newest = f"seg{live.sequence + window - 1}.ts"

            def watch(index: int) -> Tuple[str, str]:
                session = sessions[index]
                deadline = time.monotonic() + 10.0
                while newest.encode() not in session.get(f"{base}/index.m3u8").body:
                    assert time.monotonic() < deadline, f"player {index} never saw {newest}"
                    time.sleep(0.1)  # (a player's reload; the playlist is fresh for 2 s)
                response = session.get(f"{base}/{newest}")
                assert response.status == 200, response.status
                return newest, str(cache_status(response))

            asked += run_threads(watch, players, timeout=30.0)
    finally:
        for session in sessions:
            session.close()
    # Every player's request for a new segment was a hit: it was stored before they asked...
    assert [status for _, status in asked if "hit" not in status] == [], asked
    # ...by the prefetch that the playlist refresh started: the origin saw each
    # new segment once, marked as a prefetch, and no player request for it.
    fresh = sorted({segment for segment, _ in asked})
    assert len(fresh) == rounds
    requests = [request for request in origin.requests(f"{base}/seg")]
    assert sorted(request.path for request in requests) == [f"{base}/{segment}" for segment in fresh], [
        request.path for request in requests
    ]
    assert all(request.header(PREFETCH) == "1" for request in requests), [(r.path, r.header(PREFETCH)) for r in requests]
    info = AdminClient.of(proxy).get("/cache/info").json
    holds = info["hls"]["video"]["live_hold"]
    assert holds["refreshes"] >= rounds and holds["players_held"] >= 1, holds
    assert holds["bound"] == 0 and holds["holding"] == 0, (holds, workers)
