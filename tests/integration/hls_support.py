"""Helpers of the HLS end-to-end tests (``test_e2e_hls.py``).

* :func:`ensure_ffmpeg` / :func:`make_vod`: a real multi-variant VOD stream
  made by ffmpeg (3 renditions, 2 s segments, 10 s).
* :class:`HlsOrigin`: a plain origin (an :class:`HTTPBackend`) serving

  - ``/hls/<stream>/...``: the ffmpeg stream's files, under any stream name
    (each test watches its own, so caches and viewers start clean);
    ``/capped/hls/<stream>/...`` the same;
  - ``/syn/<stream>/index.m3u8``: a synthetic VOD of 20 tiny segments;
  - ``/live/<stream>/index.m3u8``: a synthetic live stream, a rolling window
    the test advances (:meth:`HlsOrigin.live`);
  - ``/abs/<stream>/index.m3u8``: a playlist listing absolute URIs (to the
    origin itself and to another host).

  Every response has a ``Date``; streams named ``nostore*`` answer their
  segments with ``Cache-Control: no-store``, ``maxage*`` with ``max-age=5``.
"""

from __future__ import annotations

import email.utils
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from speedproxy.testing import BackendExchange, BackendRequest, HTTPBackend, wait_until

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp2t"
PREFETCH = "X-Speedproxy-Prefetch"


def ensure_ffmpeg() -> str:
    """The ffmpeg binary, installing Debian's package if it is missing (as root)."""
    path = shutil.which("ffmpeg")
    if path is not None:
        return path
    tried = "not root or no apt-get"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "install", "-y", "-q", "ffmpeg"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "ffmpeg"]):
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired:
                tried = f"{' '.join(command)} timed out"
                break
            tried = f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-300:]}"
            if shutil.which("ffmpeg"):
                break
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.fail(
            "the HLS end-to-end tests need ffmpeg (Debian package 'ffmpeg') to make their stream, "
            f"and it could not be installed ({tried})",
            pytrace=False,
        )
    return path


def make_vod(ffmpeg: str, directory: Path) -> Path:
    """3 renditions (160x90, 320x180, 640x360), 2 s segments, 10 s, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=10",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=10",
        "-filter_complex", "[0:v]split=3[a][b][c];[a]scale=160:90[v0];[b]scale=320:180[v1];[c]scale=640:360[v2]",
        "-map", "[v0]", "-map", "[v1]", "-map", "[v2]", "-map", "1:a", "-map", "1:a", "-map", "1:a",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
        "-b:v:0", "150k", "-b:v:1", "400k", "-b:v:2", "900k", "-c:a", "aac", "-b:a", "64k",
        "-f", "hls", "-hls_time", "2", "-hls_playlist_type", "vod",
        "-hls_segment_filename", "v%v/seg%d.ts", "-master_pl_name", "master.m3u8",
        "-var_stream_map", "v:0,a:0 v:1,a:1 v:2,a:2", "v%v/index.m3u8",
    ]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"ffmpeg failed: {done.stderr[-2000:]}"
    for variant in range(3):
        assert (directory / f"v{variant}" / "seg4.ts").exists(), sorted(p.name for p in directory.rglob("*"))
    return directory


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


def synthetic_vod(count: int = 20) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-MEDIA-SEQUENCE:0"]
    for number in range(count):
        lines += ["#EXTINF:2.0,", f"seg{number}.ts"]
    lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


class HlsOrigin:
    """The origin of the HLS tests (see the module docstring)."""

    def __init__(self, vod: Path) -> None:
        self.vod = vod
        self.lives: Dict[str, LiveStream] = {}
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
        if parts and parts[0] == "capped":
            parts = parts[1:]
        if len(parts) < 3:
            self._send(exchange, 404, b"no such thing\n", "text/plain", [("Cache-Control", "no-store")])
            return
        kind, stream, rest = parts[0], parts[1], "/".join(parts[2:])
        extra: List[tuple] = []
        if stream.startswith("nostore") and rest.endswith(".ts"):
            extra.append(("Cache-Control", "no-store"))
        if stream.startswith("maxage") and rest.endswith(".ts"):
            extra.append(("Cache-Control", "max-age=5"))
        if kind == "hls":
            file = (self.vod / rest).resolve()
            if self.vod.resolve() not in file.parents or not file.is_file():
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
        elif kind in ("syn", "live", "abs") and rest.startswith("seg") and rest.endswith(".ts"):
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
