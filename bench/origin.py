#!/usr/bin/env python3
"""Tiny, fast HTTP/1.1 origin for the benchmark.

Used as the main origin when nginx is not installed, and always as the slow
origin of the coalescing test.  Serves, for every size given with
``--sizes`` (1024 -> ``1k``, 102400 -> ``100k``):

* ``/<name>``: a precomputed keep-alive response with ``Content-Length``
  and no caching headers (a proxied, uncached request);
* ``/c/<name>``: the same with ``Cache-Control: max-age=3600`` (what the
  cache targets ask for);
* ``/slow/<anything>``: 1 KiB with ``Cache-Control: max-age=3600``, sent
  ``--slow`` seconds after the request (the coalescing test);
* ``/_bench/count``: JSON ``{path: requests}`` of every request so far
  (itself excluded): how many requests reached the origin.

Anything else gets a 404.  It only understands what wrk and a proxy send
(GET/HEAD heads, no request bodies) and is pipelining-safe: responses leave
in request order, a slow one holds back those behind it on its connection.

Prints ``READY <port>`` on stdout once it listens (``--port 0`` picks one).
"""

import argparse
import asyncio
import collections
import json
import sys


def size_name(size: int) -> str:
    """URL name of a body size: 1024 -> '1k', 102400 -> '100k', 1000 -> '1000b'."""
    if size % 1024 == 0:
        return f"{size // 1024}k"
    return f"{size}b"


def _response(size: int, extra: str = "") -> tuple:
    body = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Server: bench-origin\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n"
        f"{extra}"
        "Connection: keep-alive\r\n"
        "\r\n"
    ).encode("ascii")
    return head + body, head


def build_responses(sizes):
    responses = {}
    for size in sizes:
        name = size_name(size).encode("ascii")
        responses[b"/" + name] = _response(size)
        responses[b"/c/" + name] = _response(size, "Cache-Control: max-age=3600\r\n")
    return responses


NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n"
    b"Connection: keep-alive\r\n\r\nnot found"
)
SLOW = _response(1024, "Cache-Control: max-age=3600\r\n")


class Origin(asyncio.Protocol):
    responses = {}
    slow = 0.5
    counts = collections.Counter()

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        self.pending = collections.deque()  # (due time, bytes), in request order
        self.timer = None
        self.loop = asyncio.get_running_loop()

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()

    def answer(self, method, path):
        """(response bytes, delay in seconds) for one request."""
        if path == b"/_bench/count":
            body = json.dumps({k.decode("latin-1"): v for k, v in self.counts.items()}).encode()
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(body))
            return head + body, 0.0
        self.counts[path] += 1
        if path.startswith(b"/slow/"):
            resp, delay = SLOW, self.slow
        else:
            resp, delay = self.responses.get(path), 0.0
            if resp is None:
                return NOT_FOUND, 0.0
        return (resp[1] if method == b"HEAD" else resp[0]), delay

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        out = []
        start = 0
        now = None
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                break
            line_end = buf.find(b"\r\n", start)
            parts = buf[start:line_end].split(b" ", 2)
            start = end + 4
            if len(parts) < 2:
                resp, delay = NOT_FOUND, 0.0
            else:
                resp, delay = self.answer(parts[0], parts[1].split(b"?", 1)[0])
            if delay or self.pending:
                if now is None:
                    now = self.loop.time()
                self.pending.append((now + delay, resp))
            else:
                out.append(resp)
        self.buf = buf[start:]
        if len(self.buf) > 65536:
            self.transport.close()
            return
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if self.pending and self.timer is None:
            self.flush()

    def flush(self):
        self.timer = None
        now = self.loop.time()
        out = []
        while self.pending and self.pending[0][0] <= now:
            out.append(self.pending.popleft()[1])
        if out and not self.transport.is_closing():
            self.transport.write(b"".join(out))
        if self.pending:
            self.timer = self.loop.call_later(max(0.0, self.pending[0][0] - now), self.flush)


async def main(args):
    Origin.responses = build_responses(args.sizes)
    Origin.slow = args.slow
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Origin, args.host, args.port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument(
        "--sizes",
        default="1024,102400",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="comma-separated body sizes in bytes (default: 1024,102400)",
    )
    p.add_argument("--slow", type=float, default=0.5,
                   help="seconds before a /slow/... response is sent (default: 0.5)")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    try:
        import uvloop  # type: ignore

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        pass
