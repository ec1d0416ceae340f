"""speedproxy.hls.live in memory: players wait for a refreshed live playlist's new segments."""

from __future__ import annotations

from typing import Dict, List

from speedproxy.hls.live import HOLD_SHARE, LiveHolds, hold_bound
from speedproxy.testing import InMemoryClient

from test_hls_filter import PLAYLIST_TYPE, Harness, answer, media, status_of

INTERNAL = b"User-Agent: speedproxy (internal)"


def live(harness: Harness, first: int = 0, target: int = 2) -> None:
    """A live window of 3 segments from ``first`` (ttl: half ``target``)."""
    harness.origin.add(b"/l/index.m3u8", answer(media(3, first=first, end=False, target=target), PLAYLIST_TYPE))
    for number in range(first, first + 3):
        harness.origin.add(b"/l/seg%d.ts" % number, answer(b"L%d" % number))


def waiting(clients: List[InMemoryClient]) -> bool:
    return all(client.received() == b"" for client in clients)


def held(harness: Harness) -> Dict[str, int]:
    return harness.info()["live_hold"]  # type: ignore[return-value]


def test_hold_bound_is_a_share_of_the_target_duration_at_most_the_reload_interval() -> None:
    assert hold_bound(2.0, 1.0) == 2.0 * HOLD_SHARE
    assert hold_bound(8.0, 1.0) == 1.0  # never past the reload interval
    assert hold_bound(4.0, None) == 4.0 * HOLD_SHARE
    assert hold_bound(0.0, 1.0) == 0.0


def test_players_wait_for_a_stale_live_playlist_until_its_new_segments_are_stored() -> None:
    harness = Harness(", prefetch_depth: 2")
    live(harness, first=0)
    harness.get(b"/l/index.m3u8")  # the first look
    live(harness, first=2)  # seg3 and seg4 are new
    harness.advance(1.1)  # stale (ttl 1 s)
    harness.origin.hold = True
    players = [harness.send(b"/l/index.m3u8", b"User-Agent: p%d" % index) for index in range(3)]
    harness.origin.serve()
    # One refresh, made by the proxy on its own; the players wait.
    assert harness.origin.targets(b"/l/") == [b"/l/index.m3u8"] * 2
    assert INTERNAL in harness.origin.log[-1][1]
    assert waiting(players)
    harness.origin.release()  # the new playlist: its new segments are prefetched...
    assert harness.origin.prefetched() == [b"/l/seg3.ts", b"/l/seg4.ts"]
    assert waiting(players)  # ...before the players see it
    harness.origin.hold = False
    harness.origin.release()
    for player in players:
        response = player.response()
        assert status_of(response).startswith(b"speedproxy; hit"), status_of(response)
        assert b"seg4.ts" in response.body
    for number in (3, 4):
        assert status_of(harness.get(b"/l/seg%d.ts" % number)) == b"speedproxy; hit; ttl=604800"
    assert harness.origin.targets(b"/l/seg") == [b"/l/seg3.ts", b"/l/seg4.ts"]  # the prefetches only
    figures = held(harness)
    assert figures["refreshes"] == 1 and figures["players_held"] == 3 and figures["stored"] == 1
    assert figures["holding"] == 0


def test_the_hold_ends_at_its_bound_when_a_segment_is_slow() -> None:
    harness = Harness(", prefetch_depth: 1")
    live(harness, first=0)
    harness.get(b"/l/index.m3u8")
    live(harness, first=1)
    harness.advance(1.1)
    harness.origin.hold = True
    player = harness.send(b"/l/index.m3u8")
    harness.origin.serve()
    harness.origin.release()  # the refresh is answered; seg3 is asked for...
    assert harness.origin.prefetched() == [b"/l/seg3.ts"] and waiting([player])
    harness.advance(2.0 * HOLD_SHARE - 0.01)
    assert waiting([player])
    harness.advance(0.02)  # ...and takes longer than the bound: the player goes on
    assert b"seg3.ts" in player.response().body
    assert held(harness)["bound"] == 1
    harness.origin.hold = False
    harness.origin.release()
    assert harness.info()["prefetch"]["in_flight"] == 0  # type: ignore[index]


def test_a_refresh_with_nothing_new_lets_the_players_go_at_once() -> None:
    harness = Harness()
    live(harness, first=0)
    harness.get(b"/l/index.m3u8")
    harness.advance(1.1)
    response = harness.get(b"/l/index.m3u8")
    assert status_of(response).startswith(b"speedproxy; hit")
    assert harness.origin.prefetched() == []
    figures = held(harness)
    assert figures["refreshes"] == 1 and figures["nothing_new"] == 1


def test_a_fresh_live_playlist_is_answered_without_a_hold() -> None:
    harness = Harness()
    live(harness, first=0)
    harness.get(b"/l/index.m3u8")
    harness.advance(0.5)
    assert status_of(harness.get(b"/l/index.m3u8")).startswith(b"speedproxy; hit")
    assert held(harness)["refreshes"] == 0


def test_without_prefetch_players_refresh_a_live_playlist_as_before() -> None:
    harness = Harness(", prefetch_depth: 0")
    live(harness, first=0)
    harness.get(b"/l/index.m3u8")
    live(harness, first=1)
    harness.advance(1.1)
    assert status_of(harness.get(b"/l/index.m3u8")) == b"speedproxy; fwd=stale; fwd-status=200; stored"
    assert INTERNAL not in harness.origin.log[-1][1]  # the player's own request
    assert held(harness)["refreshes"] == 0


def test_vod_playlists_are_never_held() -> None:
    harness = Harness(", vod_playlist_ttl: 1s")
    harness.origin.add(b"/v/index.m3u8", answer(media(4), PLAYLIST_TYPE))
    harness.get(b"/v/index.m3u8")
    harness.advance(1.5)
    assert status_of(harness.get(b"/v/index.m3u8")) == b"speedproxy; fwd=stale; fwd-status=200; stored"
    assert INTERNAL not in harness.origin.log[-1][1]
    assert held(harness)["refreshes"] == 0


def test_requests_marked_as_prefetches_are_not_held() -> None:
    harness = Harness()
    live(harness, first=0)
    harness.get(b"/l/index.m3u8")
    live(harness, first=1)
    harness.advance(1.1)
    response = harness.get(b"/l/index.m3u8", b"X-Speedproxy-Prefetch: 1")  # a speedproxy in front of us
    assert status_of(response) == b"speedproxy; fwd=stale; fwd-status=200; stored"
    assert held(harness)["refreshes"] == 0


def test_a_failed_refresh_lets_the_players_go_on_to_the_cache() -> None:
    harness = Harness()
    live(harness, first=0)
    harness.get(b"/l/index.m3u8")
    harness.origin.add(b"/l/index.m3u8", answer(b"down", b"text/plain", (b"Cache-Control", b"no-store"), status=503))
    harness.advance(1.1)
    player = harness.send(b"/l/index.m3u8")
    harness.origin.serve()
    harness.advance(0)
    assert player.responses(), "the player was left waiting"
    assert held(harness)["failed"] == 1 and held(harness)["holding"] == 0


def test_a_player_gone_while_held_is_not_resumed() -> None:
    harness = Harness()
    live(harness, first=0)
    harness.get(b"/l/index.m3u8")
    live(harness, first=1)
    harness.advance(1.1)
    harness.origin.hold = True
    gone = harness.send(b"/l/index.m3u8")
    harness.origin.serve()
    gone.lose()
    harness.origin.hold = False
    harness.origin.release()
    harness.advance(1.0)
    assert held(harness)["holding"] == 0
    assert harness.proxy.core.cache_fills == {}


def test_live_holds_match_a_learnt_path_once() -> None:
    from twisted.internet.task import Clock

    from twisted.internet.defer import Deferred

    clock = Clock()
    holds = LiveHolds(clock)
    refreshed: "Deferred[int]" = Deferred()
    hold = holds.start(b"k", "/l/index.m3u8", 0.5, 10.0, lambda: refreshed)
    assert hold is not None and holds.get(b"k") is hold
    assert holds.learned("/other.m3u8", []) is None
    assert holds.learned("/l/index.m3u8", ["/l/seg3.ts"]) is hold
    assert hold.learned(["/l/seg2.ts", "/l/seg3.ts"], 1) == ["/l/seg3.ts"]
    assert holds.learned("/l/index.m3u8", []) is None  # learnt already
    hold.watch({"/l/seg3.ts"})
    refreshed.callback(200)
    assert not hold.released
    hold.segment_done("/l/seg3.ts")
    assert hold.released and holds.get(b"k") is None and holds.counters["stored"] == 1
    assert clock.getDelayedCalls() == []
