"""HLS edge end to end (issue 13): ``twistd speedproxy`` (2 workers, cache with a
disk tier) in front of a plain origin serving an ffmpeg-made stream and a
synthetic live one.

Each test watches streams of its own name (the origin serves the same files
under any name), so the module shares one proxy.  Players are
:class:`Session` s: one keep-alive connection each, so one worker.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from admin_support import AdminClient
from cache_support import Session, cache_status, run_threads
from hls_support import PREFETCH, HlsOrigin, ensure_ffmpeg, make_vod, master_variants, media_sequence
from speedproxy.testing import ProxyProcess, wait_until

#: Bits/s of the ffmpeg stream's variants (as its master playlist says).
BANDWIDTHS = (235400, 510400, 1060400)


@pytest.fixture(scope="session")
def vod_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vod(ensure_ffmpeg(), tmp_path_factory.mktemp("hls-vod"))


def hls_config(origin: HlsOrigin, disk: Path, workers: int = 2) -> Dict[str, Any]:
    host, port = origin.address.split(":")
    return {
        "server": {"workers": workers},
        "cache": {"memory_size": "64MiB", "disk_path": str(disk), "disk_size": "256MiB"},
        "backends": {"origin": [{"id": "o1", "host": host, "port": int(port)}]},
        "routing": {
            "video": {"path": "/", "upstream": "origin", "cache": {"enabled": True}, "hls": {"enabled": True}},
            "capped": {
                "path": "/capped/",
                "upstream": "origin",
                "cache": {"enabled": True},
                "hls": {"enabled": True, "max_variant_bandwidth": 600000},
            },
        },
    }


@pytest.fixture(scope="module")
def setup(vod_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[ProxyProcess, HlsOrigin]]:
    origin = HlsOrigin(vod_dir).start()
    directory = tmp_path_factory.mktemp("hls-proxy")
    proxy = ProxyProcess(hls_config(origin, directory / "cache"), directory=directory)
    try:
        proxy.start()
        yield proxy, origin
    finally:
        proxy.stop(timeout=5.0)
        origin.stop()


def assert_stored(response: Any) -> None:
    status = cache_status(response)
    assert response.status == 200 and status.fwd == "miss" and status.stored, str(status)


def assert_hit(response: Any, ttl_at_least: float, ttl_at_most: float) -> None:
    status = cache_status(response)
    assert response.status == 200 and status.hit and status.fwd is None, str(status)
    assert status.ttl is not None and ttl_at_least <= status.ttl <= ttl_at_most, str(status)
    assert response.header("Age") is not None


# -- lifetimes -----------------------------------------------------------------------------


def test_playlists_and_segments_get_hls_lifetimes(setup: Tuple[ProxyProcess, HlsOrigin], vod_dir: Path) -> None:
    proxy, origin = setup
    base = "/hls/life"
    with Session(proxy) as player:
        assert_stored(player.get(f"{base}/master.m3u8"))
        assert_hit(player.get(f"{base}/master.m3u8"), 3590, 3600)
        assert_stored(player.get(f"{base}/v0/index.m3u8"))
        assert_hit(player.get(f"{base}/v0/index.m3u8"), 3590, 3600)
        first = player.get(f"{base}/v0/seg0.ts")
        assert_stored(first)
        assert first.body == (vod_dir / "v0" / "seg0.ts").read_bytes()
        hit = player.get(f"{base}/v0/seg0.ts")
        assert_hit(hit, 7 * 86400 - 10, 7 * 86400)
        assert hit.body == first.body
    with Session(proxy) as other:  # any worker: the disk tier has them
        for path in ("master.m3u8", "v0/index.m3u8"):
            assert cache_status(other.get(f"{base}/{path}")).hit
    assert origin.paths(base) == [f"{base}/master.m3u8", f"{base}/v0/index.m3u8", f"{base}/v0/seg0.ts"]


def test_the_config_overrides_the_origins_lifetime_but_not_its_no_store(setup: Tuple[ProxyProcess, HlsOrigin]) -> None:
    proxy, origin = setup
    with Session(proxy) as player:
        player.get("/hls/maxage1/v0/index.m3u8")
        assert_stored(player.get("/hls/maxage1/v0/seg0.ts"))  # the origin says max-age=5
        assert_hit(player.get("/hls/maxage1/v0/seg0.ts"), 7 * 86400 - 10, 7 * 86400)
        player.get("/hls/nostore1/v0/index.m3u8")
        for _ in range(2):
            status = cache_status(player.get("/hls/nostore1/v0/seg0.ts"))
            assert not status.stored and not status.hit and status.detail == "no-store", str(status)
    assert origin.paths("/hls/nostore1/v0/seg") == ["/hls/nostore1/v0/seg0.ts"] * 2


# -- prefetch ------------------------------------------------------------------------------


def test_sequential_viewing_prefetches_and_the_prefetched_segments_are_hits(setup: Tuple[ProxyProcess, HlsOrigin]) -> None:
    proxy, origin = setup
    base = "/hls/pf"
    with Session(proxy) as player:
        player.get(f"{base}/master.m3u8")
        player.get(f"{base}/v0/index.m3u8")
        player.get(f"{base}/v0/seg0.ts")
        player.get(f"{base}/v0/seg1.ts")
        origin.wait_for(base, ["/v0/seg2.ts", "/v0/seg3.ts", "/v0/seg4.ts"])
        assert sorted(origin.prefetched(base)) == [f"{base}/v0/seg{n}.ts" for n in (2, 3, 4)]

        def all_stored() -> bool:  # a hit needs the prefetch to have finished
            return all(cache_status(player.get(f"{base}/v0/seg{n}.ts")).hit for n in (2, 3, 4))

        wait_until(all_stored, 5.0, "prefetched segments to be hits")
    assert sorted(origin.paths(f"{base}/v0/seg")) == [f"{base}/v0/seg{n}.ts" for n in range(5)]  # each once
    info = AdminClient.of(proxy).get("/cache/info").json
    assert info["hls"]["video"]["prefetch"]["started"] >= 3
    assert info["hls"]["video"]["prefetch"]["ok"] >= 3
    assert info["hls"]["video"]["uris"] >= 5


def test_a_seek_prefetches_nothing_until_the_viewer_settles(setup: Tuple[ProxyProcess, HlsOrigin]) -> None:
    proxy, origin = setup
    base = "/hls/seek"
    with Session(proxy) as player:
        player.get(f"{base}/v1/index.m3u8")
        player.get(f"{base}/v1/seg0.ts")
        player.get(f"{base}/v1/seg2.ts")  # a jump
        time.sleep(0.5)
        assert origin.paths(f"{base}/v1/seg") == [f"{base}/v1/seg0.ts", f"{base}/v1/seg2.ts"]
        player.get(f"{base}/v1/seg3.ts")  # two sequential requests: settled
        origin.wait_for(base, ["/v1/seg4.ts"])
    assert origin.prefetched(base) == [f"{base}/v1/seg4.ts"]
    assert f"{base}/v1/seg1.ts" not in origin.paths(base)


def test_a_rendition_switch_moves_prefetch_to_the_new_rendition(setup: Tuple[ProxyProcess, HlsOrigin]) -> None:
    proxy, origin = setup
    base = "/hls/switch"
    with Session(proxy) as player:
        player.get(f"{base}/master.m3u8")
        player.get(f"{base}/v0/index.m3u8")
        player.get(f"{base}/v0/seg0.ts")
        player.get(f"{base}/v0/seg1.ts")
        origin.wait_for(base, ["/v0/seg2.ts", "/v0/seg3.ts", "/v0/seg4.ts"])
        player.get(f"{base}/v2/index.m3u8")  # bandwidth went up
        player.get(f"{base}/v2/seg2.ts")
        origin.wait_for(base, ["/v2/seg3.ts", "/v2/seg4.ts"])
    assert sorted(origin.prefetched(f"{base}/v2/")) == [f"{base}/v2/seg3.ts", f"{base}/v2/seg4.ts"]
    assert origin.paths(f"{base}/v1/") == []
    assert not [path for path in origin.paths(f"{base}/v2/") if path.endswith(("seg0.ts", "seg1.ts"))]


def test_prefetch_requests_are_marked_and_never_prefetch_in_turn(
    setup: Tuple[ProxyProcess, HlsOrigin], tmp_path: Path
) -> None:
    """A speedproxy in front of the module's (both HLS edges): what the front one
    prefetches reaches the back one marked, and the back one does not prefetch for it."""
    proxy, origin = setup
    base = "/syn/chain"
    front = ProxyProcess(
        {
            "server": {"workers": 1},
            "cache": {"memory_size": "16MiB"},
            "backends": {"edge": [{"id": "e1", "host": proxy.host, "port": proxy.port}]},
            "routing": {"video": {"path": "/", "upstream": "edge", "cache": {"enabled": True}, "hls": {"enabled": True}}},
        },
        directory=tmp_path / "front",
    )
    front.start()
    try:
        with Session(front) as player:
            player.get(f"{base}/index.m3u8")
            player.get(f"{base}/seg0.ts")
            player.get(f"{base}/seg1.ts")
            origin.wait_for(base, ["/seg2.ts", "/seg3.ts", "/seg4.ts"])
            time.sleep(0.5)  # room for a loop to show
    finally:
        front.stop(timeout=5.0)
    segments = sorted(path for path in origin.paths(base) if path.endswith(".ts"))
    assert segments == sorted(f"{base}/seg{n}.ts" for n in range(5)), segments  # each once, nothing past seg4
    # A client may mark its own requests: they never cause prefetches either.
    with Session(proxy) as player:
        player.get("/syn/marked/index.m3u8")
        for number in range(3):
            player.request("GET", f"/syn/marked/seg{number}.ts", [(PREFETCH, "1")])
        time.sleep(0.5)
    assert sorted(origin.paths("/syn/marked/seg")) == [f"/syn/marked/seg{n}.ts" for n in range(3)]


# -- variant capping and absolute URIs --------------------------------------------------------


def test_variant_capping_by_config_and_per_request(setup: Tuple[ProxyProcess, HlsOrigin], vod_dir: Path) -> None:
    proxy, origin = setup
    original = (vod_dir / "master.m3u8").read_bytes()
    assert master_variants(original) == ["v0/index.m3u8", "v1/index.m3u8", "v2/index.m3u8"]
    with Session(proxy) as player:
        capped = player.get("/capped/hls/cap/master.m3u8")  # the route caps at 600000
        assert capped.status == 200 and master_variants(capped.body) == ["v0/index.m3u8", "v1/index.m3u8"]
        kept = [line for line in original.decode().splitlines() if "1060400" not in line and line != "v2/index.m3u8"]
        assert capped.body.decode().splitlines() == kept  # order and every other line kept
        low = player.get("/hls/cap/master.m3u8?max_bw=300000")
        assert master_variants(low.body) == ["v0/index.m3u8"]
        lowest = player.get("/hls/cap/master.m3u8?max_bw=1000")  # nothing fits: the lowest
        assert master_variants(lowest.body) == ["v0/index.m3u8"]
        whole = player.get("/hls/cap/master.m3u8")
        assert whole.body == original
        assert cache_status(player.get("/hls/cap/master.m3u8?max_bw=300000")).hit
    assert all("max_bw" not in path for path in origin.paths("/hls/cap/"))


def test_absolute_uris_to_the_origin_come_back_through_the_proxy(setup: Tuple[ProxyProcess, HlsOrigin]) -> None:
    proxy, origin = setup
    base = "/abs/a1"
    with Session(proxy) as player:
        lines = player.get(f"{base}/index.m3u8").body.decode().splitlines()
        assert f"{base}/seg0.ts" in lines and f"{base}/seg1.ts?tok=1" in lines
        assert "http://cdn.example/abs/a1/seg2.ts" in lines and "seg3.ts" in lines
        assert not [line for line in lines if origin.address in line]
        assert_stored(player.get(f"{base}/seg0.ts"))
        assert_hit(player.get(f"{base}/seg0.ts"), 7 * 86400 - 10, 7 * 86400)  # known as a segment


# -- live -----------------------------------------------------------------------------------


def test_live_playlist_one_origin_refresh_per_interval_serves_every_player(setup: Tuple[ProxyProcess, HlsOrigin]) -> None:
    """20 players poll a live playlist (target duration 1 s: fresh for 0.5 s)
    every 0.1 s for 4 s while the window moves every second."""
    proxy, origin = setup
    live = origin.live("live1", target=1, window=4)
    path = "/live/live1/index.m3u8"
    duration, ttl, players = 4.0, 0.5, 20
    stop = threading.Event()

    def advance() -> None:
        while not stop.wait(1.0):
            live.advance()

    mover = threading.Thread(target=advance, daemon=True)
    sessions = [Session(proxy) for _ in range(players)]
    try:
        sessions[0].get(path)  # the first look
        started = time.monotonic()
        before = len(origin.paths(path))
        mover.start()

        def watch(index: int) -> List[int]:
            seen = []
            while time.monotonic() - started < duration:
                response = sessions[index].get(path)
                assert response.status == 200, response.status
                seen.append(media_sequence(response.body))
                time.sleep(0.1)
            return seen

        seen = run_threads(watch, players, timeout=duration + 10.0)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for session in sessions:
            session.close()
        mover.join(5.0)
    refreshes = len(origin.paths(path)) - before
    polls = sum(len(each) for each in seen)
    intervals = elapsed / ttl
    assert polls >= players * 20
    # About one origin request per reload interval, whatever the players and workers.
    assert intervals * 0.5 <= refreshes <= intervals + 3, (refreshes, intervals, polls)
    # ...and the players follow the live edge: every one saw the window move.
    final = live.sequence
    for each in seen:
        assert each == sorted(each) and each[-1] >= final - 1, (each, final)


# -- LL-HLS ---------------------------------------------------------------------------------


def lists_part(body: bytes, uri: str) -> bool:
    """Does an LL-HLS playlist list the part ``uri`` (not only hint at it)?"""
    return any(line.startswith("#EXT-X-PART:") and f'URI="{uri}"' in line for line in body.decode().splitlines())


def test_ll_hls_blocking_reloads_are_coalesced_into_one_held_origin_request(
    setup: Tuple[ProxyProcess, HlsOrigin]
) -> None:
    """20 players (both workers) ask for the part not published yet
    (``_HLS_msn``/``_HLS_part``); the origin holds what it gets until the part
    exists.  It gets one request; every player gets the playlist listing the part."""
    proxy, origin = setup
    stream = origin.ll("ll1")
    path = "/ll/ll1/index.m3u8"
    with Session(proxy) as first:
        assert not lists_part(first.get(path).body, "seg2.part0.ts")
    blocking = f"{path}?_HLS_msn=2&_HLS_part=0"
    other = f"{path}?_HLS_msn=2&_HLS_part=1"
    players = 20
    sessions = [Session(proxy, timeout=20.0) for _ in range(players)]
    admin = AdminClient.of(proxy)
    try:
        results: List[Any] = []
        threads = [threading.Thread(target=lambda s=session: results.append(s.get(blocking))) for session in sessions]
        for thread in threads:
            thread.start()

        def all_held() -> bool:
            active = admin.get("/api/v1/performance/active-requests?limit=1000").json
            return sum(1 for row in active["requests"] if row["path"] == blocking) == players

        wait_until(all_held, 10.0, "every player's blocking reload to be held by the proxy")
        assert origin.paths(blocking) == [blocking]  # one held origin request for all
        assert stream.advance() == (2, 0)  # the part exists: the origin answers
        for thread in threads:
            thread.join(10.0)
        assert len(results) == players
        for response in results:
            assert response.status == 200 and lists_part(response.body, "seg2.part0.ts"), response.status
        # A late player asking the same gets it from the cache; the next part is a new key.
        assert cache_status(sessions[0].get(blocking)).hit
        held = threading.Thread(target=lambda: results.append(sessions[1].get(other)))
        held.start()
        origin.wait_for("", [other])
        stream.advance()
        held.join(10.0)
        assert lists_part(results[-1].body, "seg2.part1.ts")
    finally:
        for session in sessions:
            session.close()
    assert origin.paths(blocking) == [blocking] and origin.paths(other) == [other]
