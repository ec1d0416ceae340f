#!/usr/bin/env python3
"""Profile one speedproxy target under wrk with py-spy: where its CPU goes.

    pip install py-spy            # any venv; pass --py-spy PATH if not on PATH
    python3 bench/profile.py --target memory-hit
    python3 bench/profile.py --target disk-hit --size 102400 --tree /tmp/sp-head
    python3 bench/profile.py --target proxy --config default   # the access log

Starts the same origin and speedproxy config as bench/run.py (CPython, one
worker, pinned the same way), warms it (cache targets until they answer a
hit), runs wrk against it and samples the worker (and, with ``--master``,
the master) with ``py-spy record --format raw`` meanwhile. Prints the
functions with the most samples on top of the stack (self) and anywhere
in it (inclusive), as a share of the process's samples, and the proxy CPU
per request of the run (py-spy pauses the process to sample it, so that
figure is a few per cent above bench/run.py's). The raw stacks are kept
in bench/out/profile-<target>-<pid>.txt (flamegraph.pl reads them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py)


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive shares of the reactor thread's samples.  Stacks of
    other threads (the disk tier's background thread waiting on its queue,
    which py-spy counts as active) are counted apart."""
    selfc: Counter = Counter()
    incl: Counter = Counter()
    total = other = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        # "func (file.py:line)" -> "func (file.py)"
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f
                  for f in stack.split(";")]
        if not any(f.startswith("ReactorBase.mainLoop ") for f in frames):
            other += n
            continue
        total += n
        selfc[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return "(no samples of the reactor thread)"
    out = [f"{total} samples of the reactor thread ({other} of other threads, left out)", "",
           "self (on top of the stack; C calls such as send/recv/epoll count for the Python "
           "function that made them):"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in selfc.most_common(top)]
    out += ["", "inclusive (anywhere in the stack):"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=["proxy", "memory-hit", "disk-hit"], default="memory-hit")
    p.add_argument("--config", choices=["default", "tuned"], default="tuned")
    p.add_argument("--size", type=int, default=None,
                   help="response size (default: 1024, disk-hit 102400)")
    p.add_argument("--tree", type=Path, default=bench.REPO)
    p.add_argument("--duration", type=bench.parse_duration, default="8s",
                   help="how long py-spy samples (wrk runs 2 s longer)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--master", action="store_true", help="also sample the master process")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--connections", type=int, default=50)
    a = p.parse_args(argv)
    size = a.size or (102400 if a.target == "disk-hit" else 1024)
    cache = {"proxy": None, "memory-hit": "memory", "disk-hit": "disk"}[a.target]
    if not Path(a.py_spy).exists() and not shutil.which(a.py_spy):
        print("py-spy not found: pip install py-spy, or --py-spy PATH", file=sys.stderr)
        return 2

    # bench/run.py's defaults for everything this script does not set.
    args = bench.parse_args(["--sizes", str(size), "--duration", "1s"])
    args.tree = a.tree.resolve()
    args.connections = a.connections
    args.wrk = bench.ensure_wrk()
    python_bin = bench.VENV / "bin" / "python"
    args.shipped, _ = bench.load_shipped_config(python_bin, args.tree)
    pin = bench.Pinning(True, os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix="speedproxy-profile-"))
    bench.OUT_DIR.mkdir(parents=True, exist_ok=True)
    try:
        origin, origin_port, _, _ = bench.start_origin(args, pin, tmp, bench.find_nginx())
        pysrc = bench.write_plugin_tree(tmp, args.tree)
        t = bench.Target(key=f"profile-{a.target}-{a.config}", name="speedproxy-cpython",
                         config=a.config, kind="speedproxy", sizes=[size],
                         prefix="/c" if cache else "", workers=1, runtime="cpython",
                         mode=a.config, cache=cache, python_bin=python_bin, pysrc=pysrc,
                         expect=("cache-status", "; hit") if cache else None)
        t.proc, t.port, _ = bench.start_speedproxy(
            args, pin, tmp, python_bin, pysrc, t.key, origin_port, 1, mode=a.config,
            cache=cache, checks=[(t.path(size), size)])
        if cache:
            bench.prime_cache(t)
        url = f"http://127.0.0.1:{t.port}{t.path(size)}"
        bench.run_wrk(args, pin, url, 2)  # warm-up
        tree = bench.process_tree(t.proc.pid)
        workers = sorted(pid for pid in tree if pid != t.proc.pid)
        pids = {"worker": workers[0]} if workers else {}
        if a.master or not workers:
            pids["master"] = t.proc.pid
        wrk = subprocess.Popen(
            pin.wrap_loader([args.wrk, "-t1", f"-c{a.connections}",
                             f"-d{int(a.duration) + 2}s", url]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)
        before = bench.cpu_seconds(t.proc.pid)[0]
        each_before = {pid: bench.read_stat(pid) for pid in (t.proc.pid, *workers)}
        spies = {}
        for role, pid in pids.items():
            out = bench.OUT_DIR / f"profile-{a.target}-{a.config}-{role}-{pid}.txt"
            spies[role] = (out, subprocess.Popen(
                [a.py_spy, "record", "-p", str(pid), "-d", str(int(a.duration)),
                 "-r", str(a.rate), "-f", "raw", "-o", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for role, (out, spy) in spies.items():
            try:
                spy.wait(timeout=a.duration + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
        after = bench.cpu_seconds(t.proc.pid)[0]
        each_after = {pid: bench.read_stat(pid) for pid in (t.proc.pid, *workers)}
        try:
            wout, _ = wrk.communicate(timeout=a.duration + 30)
        except subprocess.TimeoutExpired:
            wrk.kill()
            wout = ""
        res = bench.parse_wrk(wout)
        secs = bench.parse_duration(res.get("elapsed", "0s")) if res.get("elapsed") else 0
        rps = res.get("rps") or 0
        print(f"\n{a.target}, {a.config} config, {bench.human_size(size)}, tree {args.tree}: "
              f"{rps:,.0f} req/s under py-spy"
              + (f", about {(after - before) * 1e6 / (rps * a.duration):.1f} proxy CPU µs/req "
                 "while sampled" if rps else "") + (f" (wrk ran {secs:.0f}s)" if secs else ""))
        if rps:
            for pid in each_before:
                if each_before[pid] and each_after[pid]:
                    ticks = each_after[pid][1] - each_before[pid][1]
                    role = "master" if pid == t.proc.pid else "worker"
                    print(f"  {role} (pid {pid}): about "
                          f"{ticks / bench.CLK_TCK * 1e6 / (rps * a.duration):.1f} CPU µs/req")
        for role, (out, spy) in spies.items():
            print(f"\n=== {role} (pid {pids[role]}), raw stacks in {out}")
            if spy.returncode not in (0, None) and not out.exists():
                print(spy.stderr.read() if spy.stderr else "py-spy failed")
                continue
            print(summarize(out, a.top))
        t.proc.stop()
        origin.stop()
    finally:
        bench.Proc.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
