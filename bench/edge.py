"""Per-request cost of the edge filters (issue 14): rate limit, signed URLs, CORS, compression.

Like ``bench/inmemory.py`` and ``bench/edge_limits.py``: one request driven
through ClientConnection -> Exchange -> UpstreamConnection with in-memory
transports, the core attached to a real stats segment file (so the rate
limit's buckets are the shared-memory file a worker uses, its locks
and all).  Prints CPU microseconds per request (process time: steadier
than wall time on a shared machine), min and median of ``--repeat`` runs,
side by side in one run:

- a proxied 1 KiB ``application/json`` response (``Content-Length: 1024``,
  so ``compression``'s default ``min_size: 1KiB`` applies) on a plain
  route, on a route with one filter that lets everyone in (``allow:
  [0.0.0.0/0]``: what the filter seam costs), with each filter alone, and
  with all four
  (``rate_limit`` + ``signed_urls`` + ``cors`` + ``compression``, written
  as an operator would write them; the limit set high enough never to
  refuse), and with all four on the same answer as
  ``application/octet-stream``, a type ``compression`` does not list (as a
  video segment: the ``--wrk`` rows' "as written" case).  Every request carries a valid signature (``exp``/``sig``),
  an allowed ``Origin`` and ``Accept-Encoding`` (``--accept``), whatever
  the route;
- ``signed_urls`` on requests with a query of three parameters: with
  ``query: ignore`` (the path alone signed), covered (``query: signed``,
  the default: plain parameters, already in canonical form) and covered
  with percent-encoded ones (their ``%XX`` normalised per request);
- memory-cache hits of a 100 KiB HLS playlist, on a cached route and on a
  cached route with the four filters: the playlist is compressed once into
  a kept copy, so a hit does not pay for compression again.

    python3 bench/edge.py [--requests 10000] [--repeat 7] [--accept 'gzip, deflate, br']

``--wrk`` measures over real sockets instead: ``twistd -n speedproxy`` (1
worker) in front of ``bench/origin.py`` (``/1k``: the plain 1 KiB request of
``bench/run.py`` and of every DESIGN goal, ``application/octet-stream``),
loaded by wrk with the same headers, proxy CPU (utime+stime of its process
tree) per request, pinned as ``bench/run.py`` pins (helpers imported from
it), with ``etc/speedproxy.yaml`` as ``bench/run.py`` runs it: ``default``
(as shipped, access log on) and ``tuned`` (``access_log: off``).  Three
routes per config, side by side, their processes running together and their
wrk runs alternated: the plain route; the four filters **as written** (the
issue's contract, whose ``compression.types`` do not list the answer's type:
the coding is negotiated, the answer checked and relayed as it is, as a
video segment is); and the four **compressing each answer** (the answer's
type added to ``compression.types``: brotli for every request, the codec
paid each time).

    python3 bench/edge.py --wrk [--duration 5] [--rounds 3] [--configs default,tuned] [--runtime pypy]

``--runtime pypy`` runs the proxies on PyPy (``bench/run.py``'s cached
``bench/.pypy-venv``, the work tree on ``PYTHONPATH``), each warmed up by 8 s
of wrk first; that venv has no ``brotli``, so the compressing row answers
gzip there.

The ratio column is to the plain row of the same kind (proxied or hit).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import tempfile
import time
from typing import Any, Callable, List, Tuple

SECRET = "bench-url-secret"
EXPIRES = 4102444800  # 2100-01-01
ORIGIN = b"https://player.example.com"

RATE_LIMIT = "rate_limit: {requests: 1000000000, per: 1s, burst: 1000000000, key: client_ip}"
SIGNED_URLS = "signed_urls: {secrets: ['%s', 'old-secret-still-valid'], param_signature: sig, param_expires: exp}" % SECRET
CORS = (
    "cors: {origins: ['%s'], methods: [GET, HEAD, OPTIONS], headers: [Range], "
    "expose: [Content-Length, Content-Range], credentials: false, max_age: 10m}" % ORIGIN.decode()
)
COMPRESSION = (
    "compression: {types: [application/vnd.apple.mpegurl, application/json, 'text/*'], "
    "min_size: 1KiB, gzip_level: 5, brotli: true}"
)
ALL_FOUR = ", ".join((RATE_LIMIT, SIGNED_URLS, CORS, COMPRESSION))
SIGNED_URLS_IGNORE = SIGNED_URLS[:-1] + ", query: ignore}"
#: The queries of the signed-query rows: plain parameters, and percent-encoded ones.
QUERY = "page=2&lang=en&sort=title"
ENCODED_QUERY = "q=caf%c3%a9+au+lait&lang=en%2DGB&page=2"


def json_body(size: int) -> bytes:
    item = b'{"id": %d, "title": "Episode %d", "poster": "/p/%d.jpg", "rating": 7.5},'
    out = b'{"results": ['
    index = 0
    while len(out) < size:
        out += item % (index, index, index)
        index += 1
    return out[: size - 2] + b"]}"


def playlist(size: int) -> bytes:
    lines = [b"#EXTM3U", b"#EXT-X-VERSION:3", b"#EXT-X-TARGETDURATION:4"]
    index = 0
    while sum(len(line) + 1 for line in lines) < size:
        lines += [b"#EXTINF:4.000,", b"segment-%06d.ts" % index]
        index += 1
    return b"\n".join(lines + [b"#EXT-X-ENDLIST"]) + b"\n"


def signed_target(path: str, query: str = "", covered: bool = True) -> bytes:
    """``path?<query>&exp=...&sig=...``, the signature covering ``query`` when ``covered``."""
    from speedproxy.edge.signed_urls import signature

    sig = signature(SECRET, path, EXPIRES, query=query) if query and covered else signature(SECRET, path, EXPIRES)
    return b"%s?%sexp=%d&sig=%s" % (path.encode(), (query + "&").encode() if query else b"", EXPIRES, sig.encode())


class Setup:
    """One core, one client connection and one pooled upstream connection."""

    def __init__(self, route_keys: str, directory: str, request: bytes, response: bytes, cached: bool) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from speedproxy.config import parse_config
        from speedproxy.proxy.core import ProxyCore
        from speedproxy.proxy.server import ProxyServerFactory
        from speedproxy.stats.segment import StatsSegment, layout_for
        from speedproxy.stats.shared import SharedView

        keys = ", ".join(k for k in (route_keys, "cache: {enabled: true}" if cached else "") if k)
        config = parse_config(
            "server: {access_log: 'off', workers: 2}\n"
            "backends: {default: [{id: b1, host: 127.0.0.1, port: 8081}]}\n"
            "routing: {default: {path: /, upstream: default, load_balancer: round_robin%s}}\n"
            % (", " + keys if keys else "")
        )
        fd, self.path = tempfile.mkstemp(prefix="bench-stats-", dir=directory)
        os.close(fd)
        segment = StatsSegment.create(self.path, layout_for(4, 1, 1))
        self.reactor = MemoryReactorClock()
        core = ProxyCore(self.reactor, config, None, shared=SharedView(segment, 0))
        self.client = ProxyServerFactory(core).buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.client.makeConnection(self.transport)
        self.request = request
        self.response = response
        self.client.dataReceived(request)
        self.upstream: Any = self.reactor.tcpClients[-1][2].buildProtocol(None)
        self.upstream_transport = StringTransport()
        self.upstream.makeConnection(self.upstream_transport)
        self.upstream.dataReceived(response)
        first = self.transport.value()
        assert first.startswith(b"HTTP/1.1 200 "), first[:400]
        self.first_head = first.partition(b"\r\n\r\n")[0]

    def proxied(self, count: int) -> float:
        client, upstream, request, response = self.client, self.upstream, self.request, self.response
        transport, upstream_transport = self.transport, self.upstream_transport
        transport.clear()
        upstream_transport.clear()
        started = time.process_time()
        for _ in range(count):
            client.dataReceived(request)
            upstream.dataReceived(response)
            transport.clear()
            upstream_transport.clear()
        return (time.process_time() - started) / count * 1e6

    def hits(self, count: int) -> float:
        client, request, transport = self.client, self.request, self.transport
        transport.clear()
        started = time.process_time()
        for _ in range(count):
            client.dataReceived(request)
            transport.clear()
        return (time.process_time() - started) / count * 1e6

    def close(self) -> None:
        assert len(self.reactor.tcpClients) == 1, "the upstream connection was not reused"
        from speedproxy.edge.host_table import edge_state_path, remove_edge_state

        os.unlink(self.path)
        remove_edge_state(edge_state_path(self.path))  # (and its semaphores)


def measure(run: Callable[[int], float], requests: int, repeat: int) -> Tuple[float, float]:
    run(min(requests, 2000))
    gc.collect()
    results = sorted(run(requests) for _ in range(repeat))
    return results[0], results[len(results) // 2]


def wrk_main(args: argparse.Namespace) -> None:
    """The real-socket variant (``--wrk``)."""
    import http.client
    import json
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run as bench  # bench/run.py's process, pinning, config and wrk helpers

    wrk = bench.ensure_wrk()
    pin = bench.Pinning(True, os.cpu_count() or 1)
    target = signed_target("/1k").decode()
    headers = {"Origin": ORIGIN.decode(), "Accept-Encoding": args.accept}
    compression = COMPRESSION.replace("application/json,", "application/json, application/octet-stream,")
    routes = (
        ("plain route", ""),
        # The four as the contract writes them: the 1 KiB answer
        # (application/octet-stream, like a segment) is not a listed type:
        # negotiated, checked, relayed as it is.
        ("all four, as written", ALL_FOUR),
        # The same, with the answer's type listed: every answer compressed.
        ("all four, compressing each answer", ", ".join((RATE_LIMIT, SIGNED_URLS, CORS, compression))),
    )
    modes = [mode for mode in args.configs.split(",") if mode]
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as scratch:
        tmp = Path(scratch)
        if args.runtime == "pypy":
            import shutil

            pypy = shutil.which("pypy3")
            if not pypy:
                raise bench.BenchError("--runtime pypy: pypy3 is not on PATH (apt-get install pypy3)")
            python_bin = bench.ensure_pypy_venv(pypy, tmp) / "bin" / "python"  # (bench/run.py's, cached)
        else:
            python_bin = bench.VENV / "bin" / "python"
        warmup = args.warmup if args.warmup is not None else (8 if args.runtime == "pypy" else 0)
        shipped, _ = bench.load_shipped_config(python_bin, bench.REPO)
        try:
            origin, origin_port = bench.start_python_origin(SimpleNamespace(sizes=[1024]), pin, tmp, "origin")
            procs = []
            for mode in modes:
                for name, keys in routes:
                    # The shipped config (etc/speedproxy.yaml) as bench/run.py runs it
                    # (default: access log on; tuned: access_log off), 1 worker,
                    # the route's filters added to each route as an operator writes them.
                    config = json.loads(json.dumps(shipped))
                    if keys:
                        extra = bench_route_keys(python_bin, keys)
                        for route in (config.get("routing") or {"default": {"path": "/"}}).values():
                            route.update(extra)
                    fake = SimpleNamespace(sizes=[1024], ready_timeout=30.0, shipped=config)
                    proc, port, _ = bench.start_speedproxy(
                        fake, pin, tmp, python_bin, bench.REPO, "edge-%s-%d" % (mode, len(procs)),
                        origin_port, 1, mode=mode, checks=[(target, 1024)],
                    )
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", target, headers=headers)
                    answer = conn.getresponse()
                    answer.read()
                    conn.close()
                    if answer.status != 200:
                        raise bench.BenchError("%s (%s) answered %d" % (name, mode, answer.status))
                    encoding = answer.getheader("Content-Encoding") or "identity"
                    procs.append(("%s: %s" % (mode, name), proc, port, encoding))
            samples: dict = {name: [] for name, _, _, _ in procs}
            for name, proc, port, _ in procs if warmup > 0 else ():  # (PyPy: the JIT warms up first)
                cmd = [wrk, "-t1", "-c50", "-d%ds" % warmup, "--timeout", "5s"]
                for key, value in headers.items():
                    cmd += ["-H", "%s: %s" % (key, value)]
                subprocess.run(pin.wrap_loader(cmd + ["http://127.0.0.1:%d%s" % (port, target)]),
                               capture_output=True, timeout=warmup + 30)
            for round_ in range(args.rounds):
                for name, proc, port, _ in procs if round_ % 2 == 0 else procs[::-1]:
                    cmd = [wrk, "-t1", "-c50", "-d%ds" % args.duration, "--timeout", "5s"]
                    for key, value in headers.items():
                        cmd += ["-H", "%s: %s" % (key, value)]
                    cmd.append("http://127.0.0.1:%d%s" % (port, target))
                    before = bench.cpu_seconds(proc.pid)[0]
                    out = subprocess.run(pin.wrap_loader(cmd), capture_output=True, text=True, timeout=args.duration + 30).stdout
                    spent = bench.cpu_seconds(proc.pid)[0] - before
                    result = bench.parse_wrk(out)
                    if result.get("non_2xx") or not result.get("requests"):
                        raise bench.BenchError("%s: wrk saw errors\n%s" % (name, out))
                    samples[name].append((spent / result["requests"] * 1e6, result["rps"]))
            print("speedproxy edge filters over sockets (%s, wrk -t1 -c50 -d%ds, 1 worker, %d rounds alternated%s; "
                  "Accept-Encoding: %s; default = etc/speedproxy.yaml as shipped, access log on; "
                  "tuned = access_log off)" % (args.runtime, args.duration, args.rounds,
                                               ", after %ds of warm-up each" % warmup if warmup else "", args.accept))
            print("  %-44s %10s %10s %9s %7s %7s  %s" % ("config: route", "CPU us/req", "(min)", "req/s", "ratio", "(min)", "answer"))
            base: dict = {}
            for name, _, _, encoding in procs:
                mode = name.split(":")[0]
                cpu = sorted(value for value, _ in samples[name])
                rps = sorted(value for _, value in samples[name])
                median = cpu[len(cpu) // 2]
                base.setdefault(mode, (median, cpu[0]))
                print("  %-44s %10.1f %10.1f %9.0f %6.2fx %6.2fx  %s" % (
                    name, median, cpu[0], rps[len(rps) // 2], median / base[mode][0], cpu[0] / base[mode][1], encoding))
            print("  (ratio: median to the plain route's median of the same config; (min): min to min)")
            print("  raw (CPU us/req, req/s) per run:", json.dumps(samples))
        finally:
            bench.Proc.stop_all()


def bench_route_keys(python_bin: Any, keys: str) -> dict:
    """The route keys written in flow style (``a: {...}, b: ...``) as data."""
    import json

    code = "import json, sys, yaml; print(json.dumps(yaml.safe_load('{' + sys.argv[1] + '}')))"
    out = subprocess.run([str(python_bin), "-c", code, keys], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--accept", default="gzip, deflate, br", help="the clients' Accept-Encoding")
    parser.add_argument("--size", type=int, default=1024, help="proxied JSON body size")
    parser.add_argument("--playlist-size", type=int, default=100 * 1024)
    parser.add_argument("--only", default="", help="comma-separated row names to run (substring match)")
    parser.add_argument("--wrk", action="store_true", help="over real sockets with wrk instead (see above)")
    parser.add_argument("--duration", type=int, default=5, help="--wrk: seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="--wrk: runs per route, alternated")
    parser.add_argument("--runtime", choices=("cpython", "pypy"), default="cpython",
                        help="--wrk: run speedproxy on CPython (the bench venv) or PyPy (bench/run.py's bench/.pypy-venv)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="--wrk: seconds of wrk on each process before the rounds (default: 0, PyPy 8)")
    parser.add_argument("--configs", default="default,tuned",
                        help="--wrk: default (etc/speedproxy.yaml as shipped: access log on) and/or tuned (access_log off)")
    args = parser.parse_args()
    if args.wrk:
        wrk_main(args)
        return

    directory = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    accept = args.accept.encode()

    def request_for(path: str, query: str = "", covered: bool = True) -> bytes:
        return (
            b"GET %s HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n"
            b"Origin: %s\r\nAccept-Encoding: %s\r\n\r\n" % (signed_target(path, query, covered), ORIGIN, accept)
        )

    body = json_body(args.size)
    api_response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n"
        b'ETag: "abc-400"\r\nAccept-Ranges: bytes\r\n\r\n' % len(body)
    ) + body
    # The same answer as application/octet-stream (a type compression does not
    # list: what the --wrk rows' "as written" route relays, as a video segment).
    unlisted_response = api_response.replace(b"Content-Type: application/json", b"Content-Type: application/octet-stream")
    listing = playlist(args.playlist_size)
    playlist_response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
        b"Content-Type: application/vnd.apple.mpegurl\r\nContent-Length: %d\r\n"
        b'ETag: "pl-1"\r\nCache-Control: max-age=86400\r\n\r\n' % len(listing)
    ) + listing

    proxied_rows = (
        ("plain route", ""),
        ("the seam alone (allow: [0.0.0.0/0])", "allow: ['0.0.0.0/0']"),
        ("rate_limit alone", RATE_LIMIT),
        ("signed_urls alone", SIGNED_URLS),
        ("cors alone", CORS),
        ("compression alone", COMPRESSION),
        ("rate_limit + signed_urls + cors", ", ".join((RATE_LIMIT, SIGNED_URLS, CORS))),
        ("all four (+ compression)", ALL_FOUR),
        ("all four, answer of a type not listed", ALL_FOUR, "", True, unlisted_response),
        ("signed_urls, 3-param query, ignored", SIGNED_URLS_IGNORE, QUERY, False),
        ("signed_urls, 3-param query, signed", SIGNED_URLS, QUERY, True),
        ("signed_urls, 3 %-encoded params, signed", SIGNED_URLS, ENCODED_QUERY, True),
    )
    hit_rows = (
        ("cached route", ""),
        ("cached route + compression", COMPRESSION),
        ("cached route + all four", ALL_FOUR),
    )
    wanted = [part for part in args.only.split(",") if part]

    def chosen(name: str) -> bool:
        return not wanted or any(part in name for part in wanted)

    rows: List[Tuple[str, str, Tuple[float, float], bytes]] = []
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        for name, keys, *query in proxied_rows:
            if not chosen(name):
                continue
            response = query.pop() if len(query) == 3 else api_response
            setup = Setup(keys, scratch, request_for("/api/items.json", *query), response, cached=False)
            rows.append(("proxied", name, measure(setup.proxied, args.requests, args.repeat), setup.first_head))
            setup.close()
        for name, keys in hit_rows:
            if not chosen(name):
                continue
            setup = Setup(keys, scratch, request_for("/live/index.m3u8"), playlist_response, cached=True)
            setup.transport.clear()
            setup.client.dataReceived(setup.request)  # the first hit makes the compressed copy
            head = setup.transport.value().partition(b"\r\n\r\n")[0]
            assert b"Cache-Status: speedproxy; hit" in head, head
            rows.append(("hit", name, measure(setup.hits, max(1, args.requests // 2), args.repeat), head))
            setup.close()

    print(
        "speedproxy edge filters, in memory, CPU us per request, min / median of %d x %d "
        "(Accept-Encoding: %s)" % (args.repeat, args.requests, args.accept)
    )
    print("  %-8s %-38s %8s %8s %7s  %s" % ("kind", "route", "min", "median", "ratio", "answer"))
    base = {}
    for kind, name, (low, median), head in rows:
        base.setdefault(kind, low)
        encoding = b"identity"
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-encoding:"):
                encoding = line.split(b":", 1)[1].strip()
        cors = b"cors" if b"Access-Control-Allow-Origin" in head else b"-"
        print("  %-8s %-38s %8.2f %8.2f %6.2fx  %s %s" % (
            kind, name, low, median, low / base[kind], encoding.decode(), cors.decode()))
    size = len(body)
    print("(proxied: %d-byte JSON body; hit: %d-byte playlist)" % (size, len(listing)))


if __name__ == "__main__":
    main()
