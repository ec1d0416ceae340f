#!/usr/bin/env python3
"""HLS audience benchmark (issue 13): a simulated live audience through an edge.

One live stream (``--renditions`` renditions, 2 s segments, a rolling
window of 6) is served by an origin process on 127.0.0.1 that publishes a
segment every 2 s and counts every request.  ``--players`` simulated
players (asyncio, one keep-alive connection each, in this process) join
over the first 2 s, each on a rendition, and play as a live player does:
read the master and media playlists, start 3 segments from the live edge,
fetch each next segment as soon as the playlist lists it, reload the
playlist every target duration while waiting (RFC 8216 6.3.4).  The same
audience watches, one after the other:

* ``speedproxy, prefetch``: ``twistd speedproxy`` (``--workers``), route
  with ``cache`` and ``hls`` on (``prefetch_depth: 3``);
* ``speedproxy, no prefetch``: the same with ``prefetch_depth: 0``;
* ``nginx proxy_cache_lock``: nginx (same worker count), ``proxy_cache``
  with ``proxy_cache_lock on``, ``proxy_cache_use_stale updating``, the
  origin's ``max-age`` (1 s playlists, 1 h segments).

Figures, per target: origin requests per segment and rendition (goal:
exactly 1), the share of segment requests answered from the cache before
the origin was asked (``Cache-Status: ...; hit``; nginx
``X-Cache-Status: HIT``), the player-side wait for a segment (request to
last byte: p50, p99, max), the wait for a playlist reload (p50, p99, max:
speedproxy holds a refreshed live playlist until its new segments are
stored, :mod:`speedproxy.hls.live`), and proxy CPU (user+system of the proxy's
processes) per segment served.  Results: a Markdown table on stdout and
``bench/out/hls_audience.json``.

    .venv/bin/python bench/hls_audience.py                 # 200 players, 40 s per target
    .venv/bin/python bench/hls_audience.py --players 50 --duration 20 --no-nginx
"""

from __future__ import annotations

import argparse
from collections import Counter
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SEGMENT_SECONDS = 2.0
WINDOW = 6
#: Segment sizes by rendition (bytes): 400 kb/s, 1.2 Mb/s, 3 Mb/s for 2 s.
SIZES = (100_000, 300_000, 750_000)


# -- the origin (a child process) ------------------------------------------------------------


class Origin:
    """A live stream published in real time; counts requests per path."""

    def __init__(self, renditions: int) -> None:
        self.renditions = renditions
        self.started = time.monotonic()
        self.counts: Dict[str, int] = {}

    def published(self) -> int:
        """Number of the newest segment published (-1: none yet)."""
        return int((time.monotonic() - self.started) / SEGMENT_SECONDS) + WINDOW - 1

    def master(self) -> bytes:
        lines = ["#EXTM3U", "#EXT-X-VERSION:3"]
        for index in range(self.renditions):
            lines += [f"#EXT-X-STREAM-INF:BANDWIDTH={SIZES[index] * 4}", f"r{index}/index.m3u8"]
        return ("\n".join(lines) + "\n").encode()

    def media(self) -> bytes:
        last = self.published()
        first = max(0, last - WINDOW + 1)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for number in range(first, last + 1):
            lines += [f"#EXTINF:{SEGMENT_SECONDS:.3f},", f"seg{number}.ts"]
        return ("\n".join(lines) + "\n").encode()

    def answer(self, path: str) -> Tuple[int, bytes, str, str]:
        self.counts[path] = self.counts.get(path, 0) + 1
        if path == "/_counts":
            return 200, json.dumps(self.counts).encode(), "application/json", "no-store"
        parts = path.strip("/").split("/")
        if path == "/live/master.m3u8":
            return 200, self.master(), "application/vnd.apple.mpegurl", "max-age=60"
        if len(parts) == 3 and parts[0] == "live" and parts[1][:1] == "r":
            rendition = int(parts[1][1:])
            if parts[2] == "index.m3u8":
                return 200, self.media(), "application/vnd.apple.mpegurl", "max-age=1"
            if parts[2].startswith("seg") and parts[2].endswith(".ts"):
                number = int(parts[2][3:-3])
                if number <= self.published():
                    size = SIZES[rendition]
                    unit = f"{path}|".encode()
                    return 200, (unit * (size // len(unit) + 1))[:size], "video/mp2t", "max-age=3600"
        return 404, b"no\n", "text/plain", "no-store"


async def serve_origin(port: int, renditions: int) -> None:
    origin = Origin(renditions)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                status, body, kind, cache = origin.answer(target.split("?", 1)[0])
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nCache-Control: %s\r\nContent-Length: %d\r\n\r\n"
                    % (status, kind.encode(), cache.encode(), len(body)) + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# -- players -----------------------------------------------------------------------------------


class Connection:
    def __init__(self, port: int, agent: str) -> None:
        self.port = port
        #: Players all come from 127.0.0.1: each has its own User-Agent, as
        #: real viewers have their own addresses (speedproxy tells viewers apart by both).
        self.agent = agent
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def get(self, path: str) -> Tuple[int, Dict[str, str], bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(f"GET {path} HTTP/1.1\r\nHost: edge.bench\r\nUser-Agent: {self.agent}\r\n\r\n".encode())
                head = await self.reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ")[1])
                headers: Dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                if "content-length" in headers:
                    body = await self.reader.readexactly(int(headers["content-length"]))  # type: ignore[union-attr]
                else:
                    body = await self._chunked()
                if headers.get("connection", "").lower() == "close":
                    self.close()
                return status, headers, body
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    async def _chunked(self) -> bytes:
        body = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)  # type: ignore[union-attr]
            chunk = await self.reader.readexactly(size + 2)  # type: ignore[union-attr]
            if size == 0:
                return body
            body += chunk[:-2]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def listed(playlist: bytes) -> Tuple[int, List[str]]:
    lines = playlist.decode().splitlines()
    first = int(next(line.split(":", 1)[1] for line in lines if line.startswith("#EXT-X-MEDIA-SEQUENCE:")))
    return first, [line for line in lines if line and not line.startswith("#")]


async def player(index: int, port: int, renditions: int, until: float, hit_word: Tuple[str, str], waits: List[float],
                 hits: List[bool], misses: List[str], errors: List[str], reloads: List[float]) -> None:
    await asyncio.sleep(index * 2.0 / 200 % 2.0)  # join over the first 2 s
    connection = Connection(port, f"bench-player/{index}")
    header, word = hit_word
    try:
        status, _, _ = await connection.get("/live/master.m3u8")
        rendition = index % renditions
        base = f"/live/r{rendition}/"
        status, _, body = await connection.get(base + "index.m3u8")
        first, uris = listed(body)
        wanted = first + max(0, len(uris) - 3)  # 3 segments from the live edge
        while time.monotonic() < until:
            first, uris = listed(body)
            if wanted < first:
                wanted = first  # fell behind the window
            if wanted <= first + len(uris) - 1:
                asked = time.monotonic()
                status, headers, segment = await connection.get(base + uris[wanted - first])
                waits.append(time.monotonic() - asked)
                if status != 200 or len(segment) != SIZES[rendition]:
                    errors.append(f"{status} {len(segment)} {base}{uris[wanted - first]}")
                status_text = headers.get(header, "").lower()
                hits.append(word in status_text)
                if word not in status_text:
                    misses.append(status_text)
                wanted += 1
                continue
            await asyncio.sleep(SEGMENT_SECONDS)  # not listed yet: reload after a target duration
            asked = time.monotonic()
            status, _, body = await connection.get(base + "index.m3u8")
            reloads.append(time.monotonic() - asked)
    except Exception as error:  # a broken player is reported, not fatal to the run
        errors.append(f"player {index}: {error!r}")
    finally:
        connection.close()


async def audience(port: int, players: int, renditions: int, duration: float, hit_word: Tuple[str, str]) -> Dict[str, Any]:
    waits: List[float] = []
    hits: List[bool] = []
    errors: List[str] = []
    misses: List[str] = []
    reloads: List[float] = []
    until = time.monotonic() + duration
    await asyncio.gather(
        *(player(i, port, renditions, until, hit_word, waits, hits, misses, errors, reloads) for i in range(players))
    )
    return {"waits": waits, "hits": hits, "misses": misses, "errors": errors, "reloads": reloads}


# -- targets -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_cpu(pid: int) -> float:
    """User+system seconds of ``pid`` and its descendants (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(child) for child in children]
        except (OSError, IndexError, ValueError):
            continue
    return total


def origin_counts(port: int) -> Dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_counts", timeout=5) as answer:
        return json.loads(answer.read())


def start_speedproxy(origin_port: int, workers: int, prefetch: int, directory: Path) -> Tuple[Any, int, int]:
    from speedproxy.testing import ProxyProcess

    config: Dict[str, Any] = {
        "server": {"workers": workers, "access_log": "off"},
        "cache": {"memory_size": "256MiB"},
        "backends": {"origin": [{"id": "o1", "host": "127.0.0.1", "port": origin_port}]},
        "routing": {
            "live": {
                "path": "/",
                "upstream": "origin",
                "cache": {"enabled": True},
                "hls": {"enabled": True, "prefetch_depth": prefetch},
            }
        },
    }
    if workers > 1:
        config["cache"].update(disk_path=str(directory / "cache"), disk_size="1GiB")
    proxy = ProxyProcess(config, directory=directory)
    proxy.start()
    return proxy, proxy.port, proxy.pid


def start_nginx(nginx: str, origin_port: int, workers: int, directory: Path) -> Tuple[Any, int, int]:
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = f"""daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
{user}worker_processes {workers};
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    proxy_cache_path {directory}/store levels=1:2 keys_zone=hls:10m max_size=1g inactive=1h use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hls;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 5s;
            proxy_cache_use_stale updating;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""
    path = directory / "nginx.conf"
    path.write_text(conf)
    process = subprocess.Popen([nginx, "-p", str(directory), "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError(f"nginx did not start: {(directory / 'error.log').read_text()[-1000:]}")
    return process, port, process.pid


def summarise(name: str, result: Dict[str, Any], counts: Dict[str, int], cpu: float) -> Dict[str, Any]:
    segments = {path: count for path, count in counts.items() if path.endswith(".ts")}
    waits = sorted(result["waits"])
    reloads = sorted(result["reloads"])
    served = len(waits)

    def percentile(share: float, values: List[float] = waits) -> float:
        return values[min(len(values) - 1, int(share * len(values)))] * 1000.0 if values else 0.0

    return {
        "target": name,
        "segments_served": served,
        "distinct_segments": len(segments),
        "origin_requests_per_segment": round(sum(segments.values()) / len(segments), 3) if segments else 0.0,
        "segments_fetched_more_than_once": sum(1 for count in segments.values() if count > 1),
        "playlist_origin_requests": sum(count for path, count in counts.items() if path.endswith("index.m3u8")),
        "hit_share": round(sum(result["hits"]) / served, 4) if served else 0.0,
        "wait_p50_ms": round(percentile(0.50), 2),
        "wait_p99_ms": round(percentile(0.99), 2),
        "wait_max_ms": round(waits[-1] * 1000.0, 2) if waits else 0.0,
        "playlist_reloads": len(reloads),
        "reload_p50_ms": round(percentile(0.50, reloads), 2),
        "reload_p99_ms": round(percentile(0.99, reloads), 2),
        "reload_max_ms": round(reloads[-1] * 1000.0, 2) if reloads else 0.0,
        "cpu_ms_per_segment": round(cpu * 1000.0 / served, 3) if served else 0.0,
        "not_hits": dict(Counter(result["misses"]).most_common(5)),
        "errors": len(result["errors"]),
        "first_errors": result["errors"][:3],
    }


def run_target(name: str, args: argparse.Namespace, start: Any, hit_word: Tuple[str, str]) -> Dict[str, Any]:
    origin_port = free_port()
    origin = subprocess.Popen([sys.executable, __file__, "--origin", str(origin_port), "--renditions", str(args.renditions)])
    directory = Path(tempfile.mkdtemp(prefix="hls-audience-"))
    handle = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", origin_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        handle, port, pid = start(origin_port, directory)
        before = tree_cpu(pid)
        result = asyncio.run(audience(port, args.players, args.renditions, args.duration, hit_word))
        cpu = tree_cpu(pid) - before
        counts = origin_counts(origin_port)
        return summarise(name, result, counts, cpu)
    finally:
        if handle is not None:
            stop = getattr(handle, "stop", None)
            if stop is not None:
                stop(timeout=5.0)
            else:
                handle.terminate()
                handle.wait(10)
        origin.terminate()
        origin.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=200)
    parser.add_argument("--duration", type=float, default=40.0, help="seconds each target is watched")
    parser.add_argument("--renditions", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--origin", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.origin:
        asyncio.run(serve_origin(args.origin, args.renditions))
        return
    targets = [
        ("speedproxy, prefetch", lambda port, d: start_speedproxy(port, args.workers, 3, d), ("cache-status", "; hit")),
        ("speedproxy, no prefetch", lambda port, d: start_speedproxy(port, args.workers, 0, d), ("cache-status", "; hit")),
    ]
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not args.no_nginx:
        if nginx is None:
            print("nginx not found: skipped (apt-get install nginx-light)", file=sys.stderr)
        else:
            targets.append(("nginx proxy_cache_lock", lambda port, d: start_nginx(nginx, port, args.workers, d), ("x-cache-status", "hit")))
    rows = []
    for name, start, word in targets:
        print(f"{name}: {args.players} players, {args.duration:g} s ...", file=sys.stderr)
        rows.append(run_target(name, args, start, word))
    columns = [
        ("target", "target"), ("segments_served", "segments served"), ("distinct_segments", "distinct"),
        ("origin_requests_per_segment", "origin req/segment"), ("segments_fetched_more_than_once", "fetched >1"),
        ("playlist_origin_requests", "playlist origin req"), ("hit_share", "hit share"),
        ("wait_p50_ms", "wait p50 ms"), ("wait_p99_ms", "wait p99 ms"), ("wait_max_ms", "wait max ms"),
        ("reload_p50_ms", "reload p50 ms"), ("reload_p99_ms", "reload p99 ms"), ("reload_max_ms", "reload max ms"),
        ("cpu_ms_per_segment", "proxy CPU ms/segment"), ("errors", "errors"),
    ]
    print(f"\n{args.players} players, {args.renditions} renditions, 2 s segments, {args.duration:g} s, "
          f"{args.workers} worker(s)\n")
    print("| " + " | ".join(title for _, title in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key, _ in columns) + " |")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "hls_audience.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
