"""hls.js in headless Chromium over HTTPS: the browser picks HTTP/2 (ALPN h2)
and plays the stream through ``twistd speedproxy`` (2 workers, cache and HLS on).

The same players and helpers as ``test_e2e_hls_player.py``; what is checked
here is the protocol: every playlist and segment response the page got came
over ``h2`` (the DevTools network events say so) and the proxy logged them as
``HTTP/2.0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Tuple

import pytest
import trustme

from browser_support import Chromium, chromium_or_fail
from hls_support import HlsOrigin, ensure_ffmpeg, make_vod, player_origin, player_proxy, watch_players
from speedproxy.testing import ProxyProcess

PLAYERS = 4
WATCH = 8.0

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    return chromium_or_fail('the HTTP/2 player test')


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[ProxyProcess, HlsOrigin]]:
    ffmpeg = ensure_ffmpeg()
    long = make_vod(ffmpeg, tmp_path_factory.mktemp("h2-player-long"), seconds=20)
    origin = player_origin(long, long)
    directory = tmp_path_factory.mktemp("h2-player-proxy")
    authority = trustme.CA()
    issued = authority.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / "server.crt", directory / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ssl = {"enabled": True, "cert_file": str(cert), "key_file": str(key)}
    with player_proxy(origin, directory, {"ssl": ssl}) as proxy:
        yield proxy, origin


@pytest.fixture()
def browser(chromium_binary: str, tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(chromium_binary, tmp_path / "chromium", width=1000, height=800)
    try:
        chromium.start()
        # The test CA is not in the browser's store.
        chromium.call("Security.setIgnoreCertificateErrors", {"ignore": True})
        yield chromium
    finally:
        chromium.close()


def test_hlsjs_plays_over_http2_through_the_tls_listener(setup, browser: Chromium) -> None:
    proxy, origin = setup
    mark = proxy.log_mark()
    reports = watch_players(browser, f"https://localhost:{proxy.port}/player/index.html", "/long/h2vod/master.m3u8",
                            PLAYERS, WATCH)
    for report in reports:
        assert report["advanced"] >= WATCH * 0.7, report
        assert not report["stalls"], report

    responses = [
        event["params"]["response"]
        for event in list(browser.events)
        if event.get("method") == "Network.responseReceived"
        and "/long/h2vod/" in event["params"]["response"]["url"]
    ]
    media = [response for response in responses if response["url"].endswith((".ts", ".m3u8"))]
    assert len(media) >= PLAYERS * 3, [response["url"] for response in responses]
    assert {response["protocol"] for response in media} == {"h2"}, {response["protocol"] for response in media}
    assert all(response["status"] == 200 for response in media)
    line = proxy.wait_for_log("/long/h2vod/master.m3u8 HTTP/2.0", timeout=5, since=mark)
    assert '" 200 ' in line
    # The segments reached the origin once each, whatever the number of players.
    segments = [path for path in origin.paths("/long/h2vod/") if path.endswith(".ts")]
    assert segments and len(segments) == len(set(segments)), sorted(segments)
