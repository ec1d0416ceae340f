"""Cost of response compression per request, without sockets or a reactor loop.

Drives ClientConnection -> Exchange (-> UpstreamConnection) with in-memory
transports (``bench/edge.py``'s :class:`Setup`), for a 100 KiB HLS playlist, and
prints CPU microseconds per request (process time: steadier than wall
clock on a shared machine) for:

- memory cache hits on a route without compression (the reference);
- hits on a route with ``compression`` for a gzip, a brotli and an
  identity client: answered from the kept compressed copy, so the body is
  not compressed again;
- what compressing that body on every hit would cost (gzip level 5, brotli
  quality 4, one-shot): what the copies save;
- proxied (uncached) requests of a 1 KiB image on a route with and without
  ``compression`` (the filter's cost on responses it does not compress).

    python3 bench/compression.py [--requests 5000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from edge import Setup, measure  # noqa: E402  (bench/edge.py: the same in-memory driver)


def playlist(size: int) -> bytes:
    lines = [b"#EXTM3U", b"#EXT-X-VERSION:3", b"#EXT-X-TARGETDURATION:4"]
    index = 0
    while sum(len(line) + 1 for line in lines) < size:
        lines += [b"#EXTINF:4.000,", b"segment-%06d.ts?token=abcdef0123456789" % index]
        index += 1
    return b"\n".join(lines + [b"#EXT-X-ENDLIST"]) + b"\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--size", type=int, default=100 * 1024)
    args = parser.parse_args()

    from speedproxy.edge.compression_codecs import BR, GZIP, compress

    body = playlist(args.size)
    cached = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\nETag: \"v1\"\r\n"
        b"Cache-Control: max-age=86400\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    rows: List[Tuple[str, Tuple[float, float]]] = []

    scratch = tempfile.TemporaryDirectory(prefix="bench-compression-")
    setups: List[Setup] = []

    def hits(keys: str, accept: bytes) -> Callable[[int], float]:
        request = b"GET /live.m3u8 HTTP/1.1\r\nHost: h\r\n%s\r\n" % (b"Accept-Encoding: " + accept + b"\r\n" if accept else b"")
        setup = Setup(keys, scratch.name, request, cached, cached=True)  # the first request stores it
        setups.append(setup)
        setup.transport.clear()
        setup.client.dataReceived(request)  # a hit: makes the compressed copy, if any
        assert b"Cache-Status: speedproxy; hit" in setup.transport.value()
        return setup.hits

    compression = "compression: {}"
    rows.append(("hit, route without compression (identity)", measure(hits("", b""), args.requests, args.repeat)))
    rows.append(("hit, compression on, client gzip (kept copy)", measure(hits(compression, b"gzip"), args.requests, args.repeat)))
    rows.append(("hit, compression on, client br (kept copy)", measure(hits(compression, b"gzip, deflate, br"), args.requests, args.repeat)))
    rows.append(("hit, compression on, client identity", measure(hits(compression, b""), args.requests, args.repeat)))

    def one_shot(coding: bytes) -> Callable[[int], float]:
        def run(count: int) -> float:
            started = time.process_time()
            for _ in range(count):
                compress(coding, body, 5, 4)
            return (time.process_time() - started) / count * 1e6

        return run

    slow = max(1, args.requests // 20)
    rows.append(("compressing the body once, gzip level 5", measure(one_shot(GZIP), slow, args.repeat)))
    rows.append(("compressing the body once, brotli quality 4", measure(one_shot(BR), slow, args.repeat)))

    image = b"\x89PNG" * 256
    proxied = (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(image)
    ) + image

    def relayed(keys: str) -> Callable[[int], float]:
        request = b"GET /poster.png HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip, br\r\n\r\n"
        setup = Setup(keys, scratch.name, request, proxied, cached=False)
        setups.append(setup)
        return setup.proxied

    rows.append(("proxied 1 KiB image, route without compression", measure(relayed(""), args.requests, args.repeat)))
    rows.append(("proxied 1 KiB image, compression on (not compressed)", measure(relayed(compression), args.requests, args.repeat)))
    for setup in setups:
        setup.close()
    scratch.cleanup()

    print("%d-byte playlist; microseconds per request, min / median of %d runs" % (len(body), args.repeat))
    for name, (low, median) in rows:
        print("  %-56s %9.2f  %9.2f" % (name, low, median))


if __name__ == "__main__":
    main()
