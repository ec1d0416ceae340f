"""Helpers of the HLS end-to-end tests (``test_e2e_hls.py``).

* :func:`ensure_ffmpeg` / :func:`make_vod`: a real multi-variant VOD stream
  made by ffmpeg (3 renditions, 2 s segments, 10 s).
* :class:`HlsOrigin`: a plain origin (an :class:`HTTPBackend`) serving

  - ``/hls/<stream>/...``: the ffmpeg stream's files, under any stream name
    (each test watches its own, so caches and viewers start clean);
    ``/capped/...`` and ``/shared/...`` the same as without the prefix;
  - ``/syn/<stream>/index.m3u8``: a synthetic VOD of 20 tiny segments;
  - ``/live/<stream>/index.m3u8``: a synthetic live stream, a rolling window
    the test advances (:meth:`HlsOrigin.live`);
  - ``/abs/<stream>/index.m3u8``: a playlist listing absolute URIs (to the
    origin itself and to another host);
  - ``/ll/<stream>/index.m3u8``: an LL-HLS stream (parts, blocking playlist
    reloads held until the part asked for exists: :meth:`HlsOrigin.ll`);
  - ``/long/<stream>/...``: a longer ffmpeg stream (``HlsOrigin(long=...)``),
    and ``/rlive/<stream>/index.m3u8`` a live window over its first
    rendition's segments (:meth:`HlsOrigin.real_live`);
  - ``/player/<name>``: files of the hls.js test page (:attr:`HlsOrigin.player_files`);
  - ``/big/<stream>/index.m3u8``: a synthetic VOD of 20 segments of 1 MiB
    (:func:`big_segment`).

  Every response has a ``Date``; streams named ``nostore*`` answer their
  segments with ``Cache-Control: no-store``, ``maxage*`` with ``max-age=5``.
"""

from __future__ import annotations

import email.utils
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import parse_qs

import pytest

from speedproxy.testing import BackendExchange, BackendRequest, HTTPBackend, ProxyProcess, deep_merge, wait_until

from debian_support import ensure_program

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp2t"
PREFETCH = "X-Speedproxy-Prefetch"


def ensure_ffmpeg() -> str:
    """The ffmpeg binary, installing Debian's package if it is missing (as root)."""
    return ensure_program("ffmpeg", "ffmpeg", "the HLS end-to-end tests (to make their streams)")


def make_vod(ffmpeg: str, directory: Path, seconds: int = 10) -> Path:
    """3 renditions (160x90, 320x180, 640x360), 2 s segments, ``seconds`` long, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-filter_complex", "[0:v]split=3[a][b][c];[a]scale=160:90[v0];[b]scale=320:180[v1];[c]scale=640:360[v2]",
        "-map", "[v0]", "-map", "[v1]", "-map", "[v2]", "-map", "1:a", "-map", "1:a", "-map", "1:a",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
        "-b:v:0", "150k", "-b:v:1", "400k", "-b:v:2", "900k", "-c:a", "aac", "-b:a", "64k",
        "-f", "hls", "-hls_time", "2", "-hls_playlist_type", "vod",
        "-hls_segment_filename", "v%v/seg%d.ts", "-master_pl_name", "master.m3u8",
        "-var_stream_map", "v:0,a:0 v:1,a:1 v:2,a:2", "v%v/index.m3u8",
    ]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ffmpeg failed: {done.stderr[-2000:]}"
    last = seconds // 2 - 1
    for variant in range(3):
        assert (directory / f"v{variant}" / f"seg{last}.ts").exists(), sorted(p.name for p in directory.rglob("*"))
    return directory


class RealLive:
    """A live stream made of a real VOD rendition's segments: a window of
    ``window`` of them that :meth:`advance` moves by one (until the last)."""

    def __init__(self, rendition: Path, window: int = 4) -> None:
        self.rendition = rendition
        self.window = window
        self.sequence = 0
        self.durations = vod_durations(rendition / "index.m3u8")
        self._lock = threading.Lock()

    def advance(self) -> bool:
        """Move the window; False once it shows the last segment."""
        with self._lock:
            if self.sequence + self.window >= len(self.durations):
                return False
            self.sequence += 1
            return True

    def playlist(self) -> bytes:
        with self._lock:
            first = self.sequence
        shown = self.durations[first : first + self.window]
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{int(max(shown) + 0.999)}", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for number, duration in enumerate(shown, first):
            lines += [f"#EXTINF:{duration:.6f},", f"seg{number}.ts"]
        return ("\n".join(lines) + "\n").encode()


def vod_durations(playlist: Path) -> List[float]:
    """The ``EXTINF`` durations of a media playlist, in order."""
    return [float(line.split(":", 1)[1].split(",", 1)[0]) for line in playlist.read_text().splitlines() if line.startswith("#EXTINF:")]


class LiveStream:
    """A rolling window of ``window`` segments; :meth:`advance` moves it by one."""

    def __init__(self, target: int = 1, window: int = 4) -> None:
        self.target = target
        self.window = window
        self.sequence = 0
        self._lock = threading.Lock()

    def advance(self) -> int:
        with self._lock:
            self.sequence += 1
            return self.sequence

    def playlist(self) -> bytes:
        with self._lock:
            first = self.sequence
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{self.target}", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for number in range(first, first + self.window):
            lines += [f"#EXTINF:{self.target}.0,", f"seg{number}.ts"]
        return ("\n".join(lines) + "\n").encode()


class LowLatencyStream:
    """An LL-HLS live stream (RFC 8216bis): segments of :attr:`parts` parts;
    :meth:`advance` publishes the next part.  A blocking playlist reload
    (``_HLS_msn``/``_HLS_part``) is held until the part it asks for exists."""

    def __init__(self, parts: int = 4, part_target: float = 0.5) -> None:
        self.parts = parts
        self.part_target = part_target
        #: The segment being made and the parts of it published so far.
        self.msn = 2
        self.published = 0
        self._condition = threading.Condition()

    def advance(self) -> Tuple[int, int]:
        """Publish the next part; ``(msn, part)`` of it."""
        with self._condition:
            if self.published == self.parts:
                self.msn += 1
                self.published = 0
            self.published += 1
            self._condition.notify_all()
            return self.msn, self.published - 1

    def has(self, msn: int, part: int) -> bool:
        """Is part ``part`` of segment ``msn`` published (``part`` -1: the whole segment)?"""
        if msn < self.msn:
            return True
        return msn == self.msn and (part < self.published if part >= 0 else self.published == self.parts)

    def wait_for(self, msn: int, part: int, stopping: threading.Event, timeout: float = 10.0) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: self.has(msn, part) or stopping.is_set(), timeout) and not stopping.is_set()

    def playlist(self) -> bytes:
        with self._condition:
            msn, published = self.msn, self.published
        target = self.part_target * self.parts
        lines = [
            "#EXTM3U", "#EXT-X-VERSION:9", f"#EXT-X-TARGETDURATION:{int(target + 0.999)}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={self.part_target * 3}",
            f"#EXT-X-PART-INF:PART-TARGET={self.part_target}", "#EXT-X-MEDIA-SEQUENCE:0",
        ]
        for number in range(msn + 1):
            done = self.parts if number < msn else published
            for part in range(done):
                lines.append(f'#EXT-X-PART:DURATION={self.part_target},URI="seg{number}.part{part}.ts"')
            if number < msn:
                lines += [f"#EXTINF:{target},", f"seg{number}.ts"]
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="seg{msn}.part{published}.ts"')
        return ("\n".join(lines) + "\n").encode()


def synthetic_vod(count: int = 20) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-MEDIA-SEQUENCE:0"]
    for number in range(count):
        lines += ["#EXTINF:2.0,", f"seg{number}.ts"]
    lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


#: Size of a ``/big/`` segment.
BIG_SEGMENT = 1024 * 1024


def big_segment(name: str) -> bytes:
    """A ``/big/`` segment: :data:`BIG_SEGMENT` bytes repeating its name."""
    unit = name.encode() + b"|"
    return (unit * (BIG_SEGMENT // len(unit) + 1))[:BIG_SEGMENT]


class HlsOrigin:
    """The origin of the HLS tests (see the module docstring)."""

    def __init__(self, vod: Path, long: Optional[Path] = None) -> None:
        self.vod = vod
        #: A longer ffmpeg stream (``/long/<stream>/...``, ``/rlive/<stream>/...``).
        self.long = long
        #: Files served under ``/player/<name>`` (the hls.js page).
        self.player_files: Dict[str, Tuple[bytes, str]] = {}
        self.real_lives: Dict[str, RealLive] = {}
        self.lives: Dict[str, LiveStream] = {}
        self.low_latency: Dict[str, LowLatencyStream] = {}
        self._lock = threading.Lock()
        self.backend = HTTPBackend(self, name="hls-origin")

    def start(self) -> "HlsOrigin":
        self.backend.start()
        return self

    def stop(self) -> None:
        self.backend.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.backend.port}"

    def live(self, stream: str, target: int = 1, window: int = 4) -> LiveStream:
        with self._lock:
            made = self.lives[stream] = LiveStream(target, window)
        return made

    def real_live(self, stream: str, window: int = 4) -> RealLive:
        assert self.long is not None, "give the origin a long stream"
        with self._lock:
            made = self.real_lives[stream] = RealLive(self.long / "v0", window)
        return made

    def ll(self, stream: str, parts: int = 4, part_target: float = 0.5) -> LowLatencyStream:
        with self._lock:
            made = self.low_latency[stream] = LowLatencyStream(parts, part_target)
        return made

    # -- the request log ------------------------------------------------------------

    def requests(self, prefix: str) -> List[BackendRequest]:
        with self.backend._condition:
            return [request for request in self.backend.requests if request.path.startswith(prefix)]

    def paths(self, prefix: str) -> List[str]:
        return [request.path for request in self.requests(prefix)]

    def prefetched(self, prefix: str) -> List[str]:
        return [request.path for request in self.requests(prefix) if request.header(PREFETCH) == "1"]

    def wait_for(self, prefix: str, paths: List[str], timeout: float = 5.0) -> None:
        """Wait (bounded) until the origin was asked for every one of ``paths``."""
        wanted = [prefix + path for path in paths]
        wait_until(lambda: all(path in self.paths(prefix) for path in wanted), timeout, f"origin requests for {wanted}")

    # -- serving --------------------------------------------------------------------

    def __call__(self, exchange: BackendExchange) -> None:
        path = exchange.request.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if parts and parts[0] in ("capped", "shared"):
            parts = parts[1:]
        if len(parts) == 2 and parts[0] == "player" and parts[1] in self.player_files:
            body, content_type = self.player_files[parts[1]]
            self._send(exchange, 200, body, content_type, [])
            return
        if len(parts) < 3:
            self._send(exchange, 404, b"no such thing\n", "text/plain", [("Cache-Control", "no-store")])
            return
        kind, stream, rest = parts[0], parts[1], "/".join(parts[2:])
        extra: List[tuple] = []
        if stream.startswith("nostore") and rest.endswith(".ts"):
            extra.append(("Cache-Control", "no-store"))
        if stream.startswith("maxage") and rest.endswith(".ts"):
            extra.append(("Cache-Control", "max-age=5"))
        if kind == "rlive" and self.long is not None:
            with self._lock:
                real = self.real_lives.get(stream)
            if real is None:
                self._send(exchange, 404, b"no such stream\n", "text/plain", [("Cache-Control", "no-store")])
                return
            if rest == "index.m3u8":
                self._send(exchange, 200, real.playlist(), PLAYLIST_TYPE, extra)
                return
            kind, rest = "long", "v0/" + rest
        if kind in ("hls", "long"):
            root = self.vod if kind == "hls" else self.long
            assert root is not None
            file = (root / rest).resolve()
            if root.resolve() not in file.parents or not file.is_file():
                self._send(exchange, 404, b"no such file\n", "text/plain", [("Cache-Control", "no-store")])
                return
            content_type = PLAYLIST_TYPE if rest.endswith(".m3u8") else SEGMENT_TYPE
            self._send(exchange, 200, file.read_bytes(), content_type, extra)
        elif kind == "syn" and rest == "index.m3u8":
            self._send(exchange, 200, synthetic_vod(), PLAYLIST_TYPE, extra)
        elif kind == "live" and rest == "index.m3u8":
            with self._lock:
                live = self.lives.get(stream)
            if live is None:
                self._send(exchange, 404, b"no such stream\n", "text/plain", [("Cache-Control", "no-store")])
                return
            self._send(exchange, 200, live.playlist(), PLAYLIST_TYPE, extra)
        elif kind == "abs" and rest == "index.m3u8":
            me = f"http://{self.address}/abs/{stream}"
            body = synthetic_vod(4).decode()
            body = body.replace("seg0.ts", f"{me}/seg0.ts").replace("seg1.ts", f"{me}/seg1.ts?tok=1")
            body = body.replace("seg2.ts", f"http://cdn.example/abs/{stream}/seg2.ts")
            self._send(exchange, 200, body.encode(), PLAYLIST_TYPE, extra)
        elif kind == "ll" and rest == "index.m3u8":
            with self._lock:
                stream_ll = self.low_latency.get(stream)
            if stream_ll is None:
                self._send(exchange, 404, b"no such stream\n", "text/plain", [("Cache-Control", "no-store")])
                return
            asked = parse_qs(exchange.request.path.partition("?")[2])
            if "_HLS_msn" in asked:
                msn = int(asked["_HLS_msn"][0])
                part = int(asked["_HLS_part"][0]) if "_HLS_part" in asked else -1
                if not stream_ll.wait_for(msn, part, exchange.stopping):
                    self._send(exchange, 503, b"not yet\n", "text/plain", [("Cache-Control", "no-store")])
                    return
            self._send(exchange, 200, stream_ll.playlist(), PLAYLIST_TYPE, extra)
        elif kind == "big" and rest == "index.m3u8":
            self._send(exchange, 200, synthetic_vod(), PLAYLIST_TYPE, extra)
        elif kind == "big" and rest.startswith("seg") and rest.endswith(".ts"):
            self._send(exchange, 200, big_segment(f"{kind}/{stream}/{rest}"), SEGMENT_TYPE, extra)
        elif kind in ("syn", "live", "abs", "ll") and rest.startswith("seg") and rest.endswith(".ts"):
            self._send(exchange, 200, f"{kind}/{stream}/{rest}".encode() * 100, SEGMENT_TYPE, extra)
        else:
            self._send(exchange, 404, b"no such thing\n", "text/plain", [("Cache-Control", "no-store")])

    @staticmethod
    def _send(exchange: BackendExchange, status: int, body: bytes, content_type: str, extra: List[tuple]) -> None:
        headers = [("Date", email.utils.formatdate(usegmt=True))] + list(extra)
        exchange.send(status, body, headers, content_type)


def master_variants(body: bytes) -> List[str]:
    """The variant URIs a master playlist lists, in order."""
    lines = body.decode().splitlines()
    return [lines[index + 1] for index, line in enumerate(lines[:-1]) if line.startswith("#EXT-X-STREAM-INF:")]


def media_sequence(body: bytes) -> Optional[int]:
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            return int(line.split(":", 1)[1])
    return None


# -- hls.js in headless Chromium ------------------------------------------------------------

#: The hls.js release line the player test uses (npm package ``hls.js``).
HLSJS_VERSION = "1"


def ensure_hlsjs() -> bytes:
    """hls.js's ``dist/hls.min.js``, installed with npm (Node and npm from Debian's
    ``nodejs``/``npm`` packages when missing) into a directory kept between runs."""
    directory = Path(tempfile.gettempdir()) / f"speedproxy-tests-hlsjs-{HLSJS_VERSION}"
    script = directory / "node_modules" / "hls.js" / "dist" / "hls.min.js"
    if script.is_file():
        return script.read_bytes()
    npm = ensure_program("npm", "npm", "the hls.js player test")  # (Debian's npm brings nodejs)
    directory.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(directory), f"hls.js@{HLSJS_VERSION}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("npm install hls.js timed out", pytrace=False)
    if done.returncode != 0 or not script.is_file():
        pytest.fail(f"npm install hls.js failed ({done.returncode}): {done.stderr[-1500:]}", pytrace=False)
    return script.read_bytes()


#: The test page: ``start(src, count)`` makes ``count`` muted 160x90 players
#: of ``src``; ``report()`` says what each one did.  A stall is hls.js's
#: ``bufferStalledError`` or a ``waiting`` event after playback began.
PLAYER_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>speedproxy hls.js players</title>
<style>video { width: 160px; height: 90px; }</style>
<script src="hls.min.js"></script></head>
<body><script>
window.players = [];
function start(src, count) {
  for (let index = 0; index < count; index++) {
    const video = document.createElement("video");
    video.muted = true;
    video.playsInline = true;
    document.body.appendChild(video);
    const state = {stalls: [], fatal: [], playing: false, firstTime: null, requests: 0};
    const hls = new Hls({capLevelToPlayerSize: true, startLevel: 0, maxBufferLength: 8, maxMaxBufferLength: 12,
                         enableWorker: false});
    hls.on(Hls.Events.ERROR, (event, data) => {
      if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) state.stalls.push(["hls", video.currentTime]);
      if (data.fatal) state.fatal.push(data.details);
    });
    hls.on(Hls.Events.FRAG_LOADED, () => { state.requests += 1; });
    video.addEventListener("playing", () => { state.playing = true; });
    video.addEventListener("waiting", () => { if (state.playing) state.stalls.push(["waiting", video.currentTime]); });
    hls.on(Hls.Events.MANIFEST_PARSED, () => { video.play(); });
    hls.loadSource(src);
    hls.attachMedia(video);
    window.players.push({video: video, hls: hls, state: state});
  }
  return Hls.isSupported();
}
function report() {
  return window.players.map((player) => ({
    time: player.video.currentTime, playing: player.state.playing, stalls: player.state.stalls,
    fatal: player.state.fatal, fragments: player.state.requests, level: player.hls.currentLevel,
  }));
}
</script></body></html>
"""


def player_origin(vod: Path, long: Optional[Path] = None) -> HlsOrigin:
    """An :class:`HlsOrigin` of ``vod`` (and ``long``) that also serves the
    hls.js player page (``/player/index.html`` and ``/player/hls.min.js``), started."""
    origin = HlsOrigin(vod, long=long)
    origin.player_files["index.html"] = (PLAYER_PAGE, "text/html; charset=utf-8")
    origin.player_files["hls.min.js"] = (ensure_hlsjs(), "application/javascript")
    return origin.start()


def watch_players(browser: Any, page: str, src: str, players: int, seconds: float) -> List[Dict[str, Any]]:
    """Open the player ``page`` in ``browser``, start ``players`` hls.js players
    on ``src``, wait (bounded) until all play, then watch them for ``seconds``.

    Returns the players' final reports, each with ``advanced``: the seconds
    of media it played while watched.  A fatal hls.js error fails at once.
    """
    browser.navigate(page)
    assert browser.evaluate(f"start({src!r}, {players})") is True, "hls.js says this browser cannot play HLS"

    def all_playing() -> Any:
        reports = browser.evaluate("report()")
        fatal = [report["fatal"] for report in reports if report["fatal"]]
        assert not fatal, f"fatal hls.js errors: {fatal}; page problems: {browser.problems()[:5]}"
        return reports if all(report["playing"] for report in reports) else None

    started = wait_until(all_playing, 30.0, "every player to start playing")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # a bounded watch that notices a fatal error early
        reports = browser.evaluate("report()")
        assert not any(report["fatal"] for report in reports), reports
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    reports = browser.evaluate("report()")
    for before, after in zip(started, reports):
        after["advanced"] = after["time"] - before["time"]
    return reports


@contextmanager
def player_proxy(origin: HlsOrigin, directory: Path, extra: Optional[Mapping[str, Any]] = None) -> Iterator[ProxyProcess]:
    """A started 2-worker ``twistd speedproxy`` in front of ``origin``, its
    route cached with HLS on (plus ``extra`` config); stopped, with the
    origin, on leaving."""
    host, port = origin.address.split(":")
    config = {
        "server": {"workers": 2},
        "backends": {"origin": [{"id": "o1", "host": host, "port": int(port)}]},
        "routing": {"video": {"path": "/", "upstream": "origin", "cache": {"enabled": True}, "hls": {"enabled": True}}},
    }
    proxy = ProxyProcess(deep_merge(config, extra or {}), directory=directory)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop(timeout=5.0)
        origin.stop()
