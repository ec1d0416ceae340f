#!/usr/bin/env python3
"""HTTP/2 against HTTP/1.1: proxy CPU per request, speedproxy and nginx, one run.

For each proxy (speedproxy tuned, i.e. ``access_log: off``, with
``--workers`` workers; nginx with ``listen ... http2`` as the reference)
in front of bench/run.py's origin, 1 KiB answers on loopback:

* HTTP/1.1: wrk, ``--connections`` keep-alive connections (default 10);
* HTTP/2 (h2c, prior knowledge): h2load, the same number of connections
  with ``--streams`` concurrent streams each (default 10 x 10).

The measured runs alternate between the four (proxy, protocol) pairs over
``--rounds`` rounds; the table gives medians of requests/s and of proxy CPU
microseconds per request (utime+stime of the proxy's process tree over the
run, divided by the requests completed), and the HTTP/2 / HTTP/1.1 CPU ratio
of each proxy.  Nothing is written but bench/out/h2.json.

    python3 bench/h2.py [--duration 10s] [--rounds 3] [--workers 1] [--compare-tree PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py)

SIZE = 1024


def ensure_h2load() -> str:
    path = shutil.which("h2load")
    if path:
        return path
    bench.apt_install(["nghttp2-client"])
    path = shutil.which("h2load")
    if not path:
        raise bench.BenchError("h2load still not on PATH after apt-get install nghttp2-client")
    return path


def run_h2load(h2load: str, pin: bench.Pinning, url: str, seconds: float, connections: int, streams: int) -> dict:
    cmd = pin.wrap_loader([h2load, "-c", str(connections), "-m", str(streams), "-D", str(max(1, round(seconds))),
                           "-T", "5", url])
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=seconds + 60, start_new_session=True)
    out = done.stdout
    found = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    rate = re.search(r"finished in [0-9.]+\w*, ([0-9.]+) req/s", out)
    if done.returncode != 0 or found is None or rate is None:
        raise bench.BenchError(f"h2load failed (exit {done.returncode}): {' '.join(cmd)}\n{out[-1500:]}")
    if "Application protocol: h2c" not in out:
        raise bench.BenchError(f"h2load did not speak h2c to {url}:\n{out[-1500:]}")
    succeeded, failed, errored = int(found.group(4)), int(found.group(5)), int(found.group(6))
    return {"requests": succeeded, "errors": failed + errored, "rps": float(rate.group(1))}


def run_wrk(args, pin: bench.Pinning, url: str, seconds: float) -> dict:
    res = bench.run_wrk(args, pin, url, seconds)
    errors = sum(res["socket_errors"].values()) + res["non_2xx"]
    return {"requests": res["requests"], "errors": errors, "rps": res["rps"]}


def start_nginx_h2(args, pin: bench.Pinning, tmp: Path, nginx: str, origin_port: int, workers: int):
    """nginx proxying to the origin: HTTP/1.1 on one port, h2c (prior knowledge) on
    another (nginx 1.22's ``listen ... http2`` without TLS speaks only HTTP/2)."""
    port, h2_port = bench.free_port(), bench.free_port()
    name = f"nginx-h2-w{workers}"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = bench.NGINX_COMMON.format(tmp=tmp, name=name) + user + (
        f"master_process on;\nworker_processes {workers};\n"
        + ("worker_cpu_affinity auto;\n" if workers > 1 and pin.enabled else "")
        + "http {\n" + bench.NGINX_HTTP_COMMON.format(tmp=tmp, name=name)
        + "    http2_max_concurrent_streams 128;\n"
        + f"    upstream origin {{\n        server 127.0.0.1:{origin_port};\n"
        "        keepalive 64;\n        keepalive_requests 1000000;\n    }\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n        listen 127.0.0.1:{h2_port} http2;\n"
        "        location / {\n            proxy_pass http://origin;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_max_temp_file_size 0;\n"
        "        }\n    }\n}\n"
    )
    proc = bench.start_nginx(nginx, tmp, name, conf, lambda c: pin.wrap_proxy(workers, c))
    # nginx's http2 port (no TLS) speaks only HTTP/2: wait for it with h2load.
    deadline = time.monotonic() + 10
    while True:
        try:
            run_h2load(args.h2load, pin, f"http://127.0.0.1:{h2_port}/{bench.size_name(SIZE)}", 1, 1, 1)
            return proc, {"h1": port, "h2": h2_port}
        except bench.BenchError:
            if time.monotonic() > deadline or not proc.alive():
                raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=bench.parse_duration, default="10s")
    p.add_argument("--warmup", type=bench.parse_duration, default="3s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--no-nginx", action="store_true")
    p.add_argument("--compare-tree", type=Path, action="append", default=[], metavar="PATH",
                   help="also measure the speedproxy package of this checkout (A/B in the same run)")
    p.add_argument("--no-pin", action="store_true")
    a = p.parse_args(argv)

    args = bench.parse_args(["--sizes", str(SIZE), "--duration", "1s"])
    args.connections = a.connections
    args.threads = 1
    args.wrk = bench.ensure_wrk()
    args.h2load = ensure_h2load()
    python_bin = bench.VENV / "bin" / "python"
    args.shipped, _ = bench.load_shipped_config(python_bin, bench.REPO)
    pin = bench.Pinning(not a.no_pin, os.cpu_count() or 1)
    nginx = None if a.no_nginx else bench.find_nginx()
    tmp = Path(tempfile.mkdtemp(prefix="speedproxy-h2bench-"))
    bench.OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = "/" + bench.size_name(SIZE)
    try:
        origin, origin_port, origin_desc, _ = bench.start_origin(args, pin, tmp, nginx)
        args.origin_pid = origin.pid
        pysrc = bench.write_plugin_tree(tmp)
        proxies = {}
        proc, port, _ = bench.start_speedproxy(args, pin, tmp, python_bin, pysrc, "speedproxy", origin_port,
                                               a.workers, mode="tuned")
        proxies["speedproxy"] = (proc, {"h1": port, "h2": port})
        for index, tree in enumerate(a.compare_tree):
            label = "speedproxy" + bench.tree_label(tree.resolve())
            other = bench.write_plugin_tree(tmp, tree.resolve(), name=f"pysrc-compare-{index}")
            proc, port, _ = bench.start_speedproxy(args, pin, tmp, python_bin, other, label, origin_port,
                                                   a.workers, mode="tuned")
            proxies[label] = (proc, {"h1": port, "h2": port})
        if nginx:
            proxies["nginx"] = start_nginx_h2(args, pin, tmp, nginx, origin_port, a.workers)
        runs = {
            "HTTP/1.1 (wrk)": ("h1", lambda url, seconds: run_wrk(args, pin, url, seconds)),
            "HTTP/2 h2c (h2load)": ("h2", lambda url, seconds: run_h2load(
                args.h2load, pin, url, seconds, a.connections, a.streams)),
        }
        for name, (proc, ports) in proxies.items():  # warm-up, unmeasured
            for kind, run in runs.values():
                run(f"http://127.0.0.1:{ports[kind]}{path}", a.warmup)
        samples = []
        for round_ in range(a.rounds):
            for name, (proc, ports) in proxies.items():
                for protocol, (kind, run) in runs.items():
                    before = bench.cpu_seconds(proc.pid)[0]
                    res = run(f"http://127.0.0.1:{ports[kind]}{path}", a.duration)
                    if not res["requests"]:
                        raise bench.BenchError(f"{name} {protocol}: no request completed")
                    cpu = bench.cpu_seconds(proc.pid)[0] - before
                    row = dict(res, proxy=name, protocol=protocol, round=round_ + 1,
                               cpu_us_per_req=cpu * 1e6 / res["requests"] if res["requests"] else None)
                    samples.append(row)
                    bench.log(f"{name} {protocol}: {res['rps']:.0f} req/s, "
                              f"{row['cpu_us_per_req']:.1f} µs CPU/req, {res['errors']} errors")
        lines = [f"| proxy ({a.workers} worker(s)) | protocol | req/s | proxy CPU µs/req | HTTP/2 ÷ HTTP/1.1 CPU |",
                 "|---|---|---:|---:|---:|"]
        summary = {}
        for name in proxies:
            medians = {}
            for protocol in runs:
                rows = [r for r in samples if r["proxy"] == name and r["protocol"] == protocol]
                medians[protocol] = (statistics.median(r["rps"] for r in rows),
                                     statistics.median(r["cpu_us_per_req"] for r in rows))
            h1, h2 = medians["HTTP/1.1 (wrk)"][1], medians["HTTP/2 h2c (h2load)"][1]
            summary[name] = {"http1_cpu_us": h1, "h2_cpu_us": h2, "ratio": h2 / h1}
            for protocol, (rps, cpu) in medians.items():
                ratio = f"{h2 / h1:.2f}" if protocol.startswith("HTTP/2") else ""
                lines.append(f"| {name} | {protocol} | {rps:.0f} | {cpu:.1f} | {ratio} |")
        table = "\n".join(lines)
        print()
        print(f"1 KiB answers, {a.connections} connections (HTTP/2: x {a.streams} streams), "
              f"median of {a.rounds} rounds of {a.duration:g}s; origin: {origin_desc}; "
              f"{pin.describe([a.workers])}")
        print(table)
        (bench.OUT_DIR / "h2.json").write_text(json.dumps({"samples": samples, "summary": summary,
                                                          "table": table}, indent=1) + "\n")
        return 0
    except bench.BenchError as error:
        print(f"[bench] FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        bench.Proc.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
