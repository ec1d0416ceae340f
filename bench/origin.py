#!/usr/bin/env python3
"""Tiny, fast HTTP/1.1 origin for the benchmark (used when nginx is not installed).

Serves ``/<name>`` for every size given with ``--sizes`` (1024 -> ``/1k``,
102400 -> ``/100k``) with a precomputed keep-alive response carrying
``Content-Length``; anything else gets a 404. It only understands what wrk
and a proxy send (GET/HEAD heads, no request bodies) and is pipelining-safe.

Prints ``READY <port>`` on stdout once it listens (``--port 0`` picks one).
"""

import argparse
import asyncio
import sys


def size_name(size: int) -> str:
    """URL name of a body size: 1024 -> '1k', 102400 -> '100k', 1000 -> '1000b'."""
    if size % 1024 == 0:
        return f"{size // 1024}k"
    return f"{size}b"


def build_responses(sizes):
    responses = {}
    for size in sizes:
        body = (b"0123456789abcdef" * (size // 16 + 1))[:size]
        head = (
            "HTTP/1.1 200 OK\r\n"
            "Server: bench-origin\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\n"
            "Connection: keep-alive\r\n"
            "\r\n"
        ).encode("ascii")
        responses[b"/" + size_name(size).encode("ascii")] = (head + body, head)
    return responses


NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n"
    b"Connection: keep-alive\r\n\r\nnot found"
)


class Origin(asyncio.Protocol):
    responses = {}

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        out = []
        start = 0
        responses = self.responses
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                break
            line_end = buf.find(b"\r\n", start)
            parts = buf[start:line_end].split(b" ", 2)
            start = end + 4
            if len(parts) < 2:
                out.append(NOT_FOUND)
                continue
            path = parts[1].split(b"?", 1)[0]
            resp = responses.get(path)
            if resp is None:
                out.append(NOT_FOUND)
            elif parts[0] == b"HEAD":
                out.append(resp[1])
            else:
                out.append(resp[0])
        self.buf = buf[start:]
        if len(self.buf) > 65536:
            self.transport.close()
            return
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])


async def main(args):
    Origin.responses = build_responses(args.sizes)
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
