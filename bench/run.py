#!/usr/bin/env python3
"""speedproxy benchmark: one command, one run, every target side by side.

Measures, with wrk on loopback and keep-alive, for each response size:

* ``speedproxy-cpython`` -- ``twistd -n speedproxy`` from the project's venv,
  first with the shipped default config (etc/speedproxy.yaml: access log on),
  then tuned (``access_log: off``);
* ``speedproxy-pypy``  -- the same under PyPy (venv cached in bench/.pypy-venv);
* cache hits: a memory-cache hit (1 KiB) and a disk-cache hit (100 KiB,
  ``memory_size: 0``), checked to be hits while they are measured;
* ``speedproxy-cpython@<commit>`` -- the proxied targets from other checkouts
  (``--compare-tree``), for A/B checks;
* ``nginx``            -- nginx as the reference proxy, and its proxy_cache hits;
* ``direct``           -- wrk straight at the origin (no proxy): req/s only.

Every target is started once and kept running; the measured runs alternate
between targets over ``--rounds`` rounds and the tables give the medians.
For each proxy: requests/s, proxy CPU microseconds per request
(utime+stime of the proxy process and all its descendants, over the measured
wrk run, divided by the requests wrk completed) and the proxy's RSS. Then a
coalescing test: 100 concurrent requests for one slow object through 2
workers, with and without a disk tier, and how many reached the origin.

Results are printed, written between ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` in bench/RESULTS.md (the rest of that file is left
alone) and kept as raw JSON in bench/out/last.json.

Run from anywhere:  python3 bench/run.py  (see --help for the flags).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import resource
from dataclasses import dataclass
from pathlib import Path

# The /proc reader and the duration syntax are speedproxy's own (this checkout's).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from speedproxy.admin import procinfo  # noqa: E402
from speedproxy.config.units import parse_duration as _config_duration  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV = REPO / ".venv"
PYPY_VENV = BENCH_DIR / ".pypy-venv"
OUT_DIR = BENCH_DIR / "out"
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


class BenchError(Exception):
    """A target could not be measured; the message says why."""


def parse_duration(text: str) -> float:
    """A command-line duration (``10s``, ``500ms``, ``1m``), as the config reads them."""
    try:
        return _config_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: {error}")


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def size_name(size: int) -> str:
    """URL name of a body size: 1024 -> '1k', 102400 -> '100k' (same as origin.py)."""
    return f"{size // 1024}k" if size % 1024 == 0 else f"{size}b"


def human_size(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk_secs(seconds: float) -> str:
    return f"{max(1, int(round(seconds)))}s"


def run_quiet(cmd, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, **kw,
    )


def tail(path: Path, lines: int = 25) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(data[-lines:]) if data else "(empty)"


# --------------------------------------------------------------------------
# processes


class Proc:
    """A started process in its own session; stop() kills its whole group."""

    all: list["Proc"] = []

    def __init__(self, name: str, cmd: list[str], logdir: Path, env=None, cwd=None):
        self.name = name
        self.cmd = cmd
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.out_path = logdir / f"{safe}.out"
        self.err_path = logdir / f"{safe}.err"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.popen = subprocess.Popen(
            cmd, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
        self.pid = self.popen.pid
        Proc.all.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output_tail(self, lines: int = 25) -> str:
        return (
            f"--- {self.name} stdout (tail) ---\n{tail(self.out_path, lines)}\n"
            f"--- {self.name} stderr (tail) ---\n{tail(self.err_path, lines)}"
        )

    def stop(self, grace: float = 5.0) -> None:
        if self.alive():
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Leftovers of the group (e.g. workers whose master already exited).
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for f in (self._out, self._err):
            try:
                f.close()
            except OSError:
                pass
        if self in Proc.all:
            Proc.all.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(reversed(cls.all)):
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - best effort cleanup
                log(f"could not stop {p.name}: {e}")


def read_stat(pid: int):
    """(ppid, utime+stime+cutime+cstime ticks, rss bytes) of one pid, or None."""
    stat = procinfo.read_stat(pid)
    if stat is None:
        return None
    return stat.ppid, stat.ticks + stat.children_ticks, stat.rss_bytes


def process_tree(root: int) -> dict[int, tuple[int, int]]:
    """{pid: (ticks, rss)} for root and all of its descendants."""
    return {
        pid: (stat.ticks + stat.children_ticks, stat.rss_bytes)
        for pid, stat in procinfo.process_tree(root).items()
    }


def cpu_seconds(root: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS bytes, process count) summed over root's tree."""
    tree = process_tree(root)
    ticks = sum(t for t, _ in tree.values())
    rss = sum(r for _, r in tree.values())
    return ticks / CLK_TCK, rss, len(tree)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def wait_ready(proc: Proc, port: int, checks: list[tuple[str, int]], timeout: float) -> dict:
    """Poll TCP connect + a successful GET of every (path, size) until timeout."""
    deadline = time.monotonic() + timeout
    last = "never tried"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(
                f"{proc.name} exited with code {proc.popen.returncode} before it was ready\n"
                + proc.output_tail()
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                pass
            headers = {}
            for path, size in checks:
                status, body, headers = http_get(port, path)
                if status != 200 or len(body) != size:
                    raise BenchError(
                        f"GET {path}: status {status}, {len(body)} bytes (want 200, {size})"
                    )
            return headers
        except BenchError as e:
            last = str(e)
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        except http.client.HTTPException as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    raise BenchError(
        f"{proc.name} not ready on 127.0.0.1:{port} after {timeout:.1f}s (last: {last})\n"
        + proc.output_tail()
    )


# --------------------------------------------------------------------------
# installing tools


def _sudo_prefix() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    return None


def apt_install(packages: list[str]) -> None:
    prefix = _sudo_prefix()
    if prefix is None:
        raise BenchError(
            f"need to install {' '.join(packages)} but not root and no sudo: "
            f"run `apt-get install -y {' '.join(packages)}` as root"
        )
    if not shutil.which("apt-get"):
        raise BenchError(f"need {' '.join(packages)} but apt-get is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = prefix + ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    log(f"installing {' '.join(packages)}: {' '.join(cmd)}")
    r = run_quiet(cmd, timeout=900, env=env)
    if r.returncode != 0:
        log("apt-get install failed; running apt-get update and retrying")
        u = run_quiet(prefix + ["apt-get", "update"], timeout=900, env=env)
        if u.returncode != 0:
            raise BenchError(f"apt-get update failed:\n{u.stdout[-2000:]}")
        r = run_quiet(cmd, timeout=900, env=env)
        if r.returncode != 0:
            raise BenchError(f"apt-get install {' '.join(packages)} failed:\n{r.stdout[-2000:]}")


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    apt_install(["wrk"])
    path = shutil.which("wrk")
    if not path:
        raise BenchError("wrk still not on PATH after apt-get install wrk")
    return path


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _setup_hash() -> str:
    h = hashlib.sha256()
    for name in ("setup.py", "setup.cfg", "pyproject.toml"):
        p = REPO / name
        if p.exists():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _copy_project(dest: Path) -> None:
    """A copy of the project's packaging files and sources (so pip's in-tree
    build writes build/ and *.egg-info there, not into the work tree)."""
    skip = {".git", ".venv", "bench", "build", "dist", "tests", "_trial_temp"}
    for entry in REPO.iterdir():
        if entry.name in skip or entry.name.endswith(".egg-info"):
            continue
        target = dest / entry.name
        if entry.is_dir():
            shutil.copytree(
                entry, target,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache"),
            )
        elif entry.is_file():
            shutil.copy2(entry, target)


def ensure_pypy_venv(pypy: str, tmp: Path) -> Path:
    """Create (once) bench/.pypy-venv with the project's dependencies.

    The project itself is installed from a copy (to resolve its dependencies)
    and uninstalled again: the benchmark always runs the live work tree via
    PYTHONPATH, like the CPython target. Re-done when setup.* change."""
    py = PYPY_VENV / "bin" / "python"
    stamp = PYPY_VENV / ".bench-stamp"
    want = _setup_hash()
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return PYPY_VENV
    log(f"creating PyPy venv at {PYPY_VENV} (cached for later runs)")
    if PYPY_VENV.exists() and not (py.exists() and (PYPY_VENV / "bin" / "pip").exists()):
        shutil.rmtree(PYPY_VENV)
    errors = []
    if not py.exists():
        for cmd in (
            [pypy, "-m", "venv", str(PYPY_VENV)],
            ["virtualenv", "-p", pypy, str(PYPY_VENV)],
        ):
            if not shutil.which(cmd[0]):
                continue
            r = run_quiet(cmd, timeout=300)
            if r.returncode == 0 and py.exists():
                break
            errors.append(f"{' '.join(cmd)}: {r.stdout[-800:]}")
            shutil.rmtree(PYPY_VENV, ignore_errors=True)
        else:
            # Last resort: a venv without pip, then ensurepip inside it.
            r = run_quiet([pypy, "-m", "venv", "--without-pip", str(PYPY_VENV)], timeout=300)
            if r.returncode == 0 and py.exists():
                e = run_quiet([str(py), "-m", "ensurepip", "--upgrade"], timeout=300)
                if e.returncode != 0:
                    errors.append(f"ensurepip: {e.stdout[-800:]}")
            else:
                errors.append(f"venv --without-pip: {r.stdout[-800:]}")
    if not py.exists() or run_quiet([str(py), "-m", "pip", "--version"]).returncode != 0:
        shutil.rmtree(PYPY_VENV, ignore_errors=True)
        raise BenchError("cannot create a PyPy venv with pip:\n" + "\n".join(errors))
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    run_quiet(pip + ["install", "--upgrade", "pip", "setuptools", "wheel"], timeout=600)
    src = tmp / "pypy-src"
    _copy_project(src)
    # --prefer-binary / --only-binary: recent cryptography has no PyPy 3.9
    # wheel and its sdist needs Rust crates from the network.
    log("installing the project's dependencies into the PyPy venv (may take a minute)")
    r = run_quiet(
        pip + ["install", "--prefer-binary", "--only-binary=cryptography,cffi", str(src)],
        timeout=1800,
    )
    if r.returncode != 0:
        raise BenchError(f"pip install of the project into the PyPy venv failed:\n{r.stdout[-3000:]}")
    run_quiet(pip + ["uninstall", "-y", "speedproxy"], timeout=300)
    stamp.write_text(want + "\n")
    return PYPY_VENV


# --------------------------------------------------------------------------
# pinning


class Pinning:
    def __init__(self, enabled: bool, nproc: int):
        self.nproc = nproc
        self.enabled = enabled and nproc >= 2 and shutil.which("taskset") is not None
        self.loader = str(nproc - 1)  # wrk and the origin share the last core
        self.batch = self.enabled and shutil.which("chrt") is not None

    def proxy_cpus(self, workers: int) -> str:
        n = min(workers, self.nproc)
        return "0" if n == 1 else f"0-{n - 1}"

    def wrap(self, cpus: str, cmd: list[str]) -> list[str]:
        return ["taskset", "-c", cpus, *cmd] if self.enabled else cmd

    def wrap_loader(self, cmd: list[str]) -> list[str]:
        """Pin wrk or the origin to the loader's core, under ``SCHED_BATCH``.

        wrk is one thread driving every connection and the origin answers
        every request.  Woken for each event, they would preempt a proxy
        worker on their core thousands of times a second and handle one or
        two events per wake-up (20+ CPU µs per request between them).
        ``SCHED_BATCH`` (``chrt -b 0``) tells the scheduler they are
        throughput tasks: a wake-up does not preempt the running task, so
        they run when the worker next blocks or its slice ends and then
        handle many events at once (about 11 µs per request).  Their share
        of the core is unchanged (nice 0).
        """
        cmd = self.wrap(self.loader, cmd)
        return ["chrt", "-b", "0", *cmd] if self.batch else cmd

    def shares_loader(self, workers: int) -> bool:
        return self.enabled and self.loader in _expand(self.proxy_cpus(workers))

    def wrap_proxy(self, workers: int, cmd: list[str]) -> list[str]:
        """Pin a proxy to CPU 0, or with N workers to CPUs 0..N-1 (see spread)."""
        return self.wrap(self.proxy_cpus(workers), cmd)

    def spread(self, root: int, workers: int) -> None:
        """One core per worker process: the i-th child of ``root`` on CPU i.

        Left to the scheduler, two workers next to a busy loader are often
        packed onto the loader-free core together.
        """
        if not self.enabled or workers < 2:
            return
        tree = process_tree(root)
        children = sorted(pid for pid in tree if pid != root and (read_stat(pid) or (0,))[0] == root)
        for index, pid in enumerate(children[:workers]):
            run_quiet(["taskset", "-pc", str(index % self.nproc), str(pid)])

    def describe(self, workers_list: list[int]) -> str:
        if not self.enabled:
            return "no CPU pinning (taskset missing, nproc < 2 or --no-pin)"
        batch = " under `SCHED_BATCH` (`chrt -b 0`: their wake-ups do not preempt a " \
                "proxy worker on that core)" if self.batch else ""
        parts = [f"wrk and the origin pinned to CPU {self.loader} "
                 f"(`taskset -c {self.loader}`){batch}"]
        for w in workers_list:
            cpus = self.proxy_cpus(w)
            shared = " (the last one shares the loader's core)" if self.shares_loader(w) else ""
            each = " (one worker per CPU: `taskset -p` on each speedproxy worker, " \
                   "`worker_cpu_affinity auto` for nginx)" if w > 1 else ""
            parts.append(f"proxy with {w} worker(s) pinned to CPU {cpus}{each}{shared}")
        return "; ".join(parts)


def _expand(cpus: str) -> set[str]:
    out = set()
    for part in cpus.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(str(i) for i in range(int(a), int(b) + 1))
        else:
            out.add(part)
    return out


# --------------------------------------------------------------------------
# wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float | None:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"^\s*Requests/sec:\s*([0-9.]+)", out, re.M)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+\w+), ([0-9.]+\w+) read", out, re.M)
    if m:
        res["requests"] = int(m.group(1))
        res["elapsed"] = m.group(2)
        res["read"] = m.group(3)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    lat = {}
    for pct, val in re.findall(r"^\s*(50|75|90|99)%\s+(\S+)", out, re.M):
        v = _ms(val)
        if v is not None:
            lat[f"p{pct}_ms"] = v
    res["latency"] = lat
    return res


def run_wrk(args, pin: Pinning, url: str, seconds: float) -> dict:
    cmd = pin.wrap_loader([
        args.wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{wrk_secs(seconds)}",
        "--timeout", "5s", "--latency", url,
    ])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        r = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=seconds + 30, start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish in {seconds + 30:.0f}s: {' '.join(cmd)}")
    res = parse_wrk(r.stdout)
    if r.returncode != 0 or "requests" not in res:
        raise BenchError(f"wrk failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stdout[-1500:]}")
    res["cmd"] = " ".join(cmd)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    res["wrk_cpu_seconds"] = (done.ru_utime - children.ru_utime) + (done.ru_stime - children.ru_stime)
    return res


class HitSampler(threading.Thread):
    """While wrk runs, GET the measured URL every ``interval`` seconds on a
    connection of its own and keep the ``header`` of each response: the
    proof that the measured requests were cache hits (wrk does not look at
    headers). A few dozen requests against wrk's tens of thousands."""

    def __init__(self, port: int, path: str, header: str, interval: float = 0.25):
        super().__init__(daemon=True)
        self.port, self.path, self.header, self.interval = port, path, header, interval
        self.values: list[str] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                status, _, headers = http_get(self.port, self.path, timeout=5.0)
                self.values.append(f"{status} {headers.get(self.header, '(no ' + self.header + ')')}")
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"{type(e).__name__}: {e}")

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def measure(args, pin: Pinning, t: "Target", size: int, warmup: float,
            counter: "OriginCounter | None") -> dict:
    """One measured wrk run of one target and size (after ``warmup`` seconds
    of wrk). Cache targets are checked: sampled responses must be hits and
    no request may reach the origin's cacheable paths; if not, the sample
    is marked failed (and left out of the medians) with a loud message."""
    url = f"http://127.0.0.1:{t.port}{t.path(size)}"
    row = {"target": t.key, "size": size, "url": url, "status": "ok"}
    if warmup > 0:
        run_wrk(args, pin, url, warmup)
    root = t.proc
    if root is not None and not root.alive():
        raise BenchError(f"{root.name} died during warm-up\n" + root.output_tail())
    before = cpu_seconds(root.pid) if root else None
    split_before = process_tree(root.pid) if root else None
    origin_pid = getattr(args, "origin_pid", None)
    origin_before = cpu_seconds(origin_pid)[0] if origin_pid else None
    fills_before = counter.count() if (t.cache and counter) else None
    sampler = None
    if t.expect:
        sampler = HitSampler(t.port, t.path(size), t.expect[0])
        sampler.start()
    try:
        res = run_wrk(args, pin, url, args.duration)
    finally:
        if sampler is not None:
            sampler.stop()
    after = cpu_seconds(root.pid) if root else None
    row.update(res)
    if origin_before is not None and res["requests"]:
        # What the load generator and the origin spent per request: with
        # every core busy, 2 workers can reach at most
        # cores / (proxy + loader) requests per second.
        origin_cpu = max(0.0, cpu_seconds(origin_pid)[0] - origin_before)
        row["loader_us_per_req"] = (origin_cpu + res["wrk_cpu_seconds"]) * 1e6 / res["requests"]
    if root is not None:
        if not root.alive():
            raise BenchError(f"{root.name} died during the measured run\n" + root.output_tail())
        cpu = max(0.0, after[0] - before[0])
        row["cpu_seconds"] = cpu
        row["cpu_us_per_req"] = cpu * 1e6 / res["requests"] if res["requests"] else None
        row["rss_bytes"] = after[1]
        row["processes"] = after[2]
        if res["requests"]:
            # Where the CPU went: the root process (speedproxy's master)
            # apart from its descendants (the workers), µs per request.
            split_after = process_tree(root.pid)
            own = procinfo.read_stat(root.pid)
            children = sum(t for pid, (t, _) in split_after.items() if pid != root.pid) - sum(
                t for pid, (t, _) in split_before.items() if pid != root.pid and pid in split_after)
            if own is not None:
                row["root_us_per_req"] = max(0.0, cpu - children / CLK_TCK) * 1e6 / res["requests"]
    errs = sum(res["socket_errors"].values()) + res["non_2xx"]
    if errs:
        row["status"] = f"ok, {errs} errors"
    problems = []
    if sampler is not None:
        header, token = t.expect
        good = sum(1 for v in sampler.values if v.startswith("200 ") and token in v)
        row["hit_samples"] = [good, len(sampler.values)]
        bad = sorted({v for v in sampler.values if not (v.startswith("200 ") and token in v)})
        if not sampler.values or bad or sampler.errors:
            problems.append(
                f"{good}/{len(sampler.values)} sampled responses had `{header}: …{token}…`"
                + (f"; others: {'; '.join(bad[:3])}" if bad else "")
                + (f"; errors: {'; '.join(sampler.errors[:2])}" if sampler.errors else ""))
    if fills_before is not None:
        n = counter.count() - fills_before
        row["origin_requests"] = n
        if n:
            problems.append(f"{n} request(s) reached the origin's cacheable paths during the "
                            "measured run (want 0)")
    if problems:
        row["status"] = "failed"
        row["error"] = f"{t.label} {human_size(size)}: NOT CACHE HITS: " + "; ".join(problems)
        print(f"\n[bench] !!!!! {row['error']}\n", flush=True)
    line = f"{t.label} {t.config} {human_size(size)}: {res['rps']:.0f} req/s"
    if row.get("cpu_us_per_req") is not None:
        line += (f", {row['cpu_us_per_req']:.1f} µs CPU/req, "
                 f"RSS {row['rss_bytes'] / 2**20:.1f} MiB in {row['processes']} process(es)")
    if "hit_samples" in row:
        line += f", hits {row['hit_samples'][0]}/{row['hit_samples'][1]} sampled"
    if "origin_requests" in row:
        line += f", origin +{row['origin_requests']}"
    if errs:
        line += f", {errs} errors ({res['socket_errors']}, non-2xx {res['non_2xx']})"
    log(line)
    return row


# --------------------------------------------------------------------------
# targets


NGINX_COMMON = """\
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
"""

NGINX_HTTP_COMMON = """\
    access_log off;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
"""


def _read_response(sock: socket.socket) -> None:
    """Read one Content-Length response (head and body) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("connection closed before a response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    want = int(m.group(1)) if m else 0
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("connection closed mid-body")
        body += chunk


def measure_idle(target: str, root: Proc, port: int, path: str, count: int) -> dict:
    """RSS the proxy holds per idle keep-alive client connection.

    Opens ``count`` connections, makes one request on each and leaves them
    open; the RSS of the proxy's processes before and after, over ``count``.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = max(100, min(count, soft - 400))

    def open_idle(n: int) -> list[socket.socket]:
        socks = []
        try:
            for _ in range(n):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                socks.append(sock)
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())
            for sock in socks:
                _read_response(sock)
        except (OSError, BenchError):
            for sock in socks:
                sock.close()
            raise
        return socks

    log(f"{target}: RSS of {count} idle keep-alive connections")
    warm = open_idle(200)  # first-use allocations are not per connection
    time.sleep(0.5)
    before = cpu_seconds(root.pid)[1]
    socks = open_idle(count)
    time.sleep(1.0)
    after = cpu_seconds(root.pid)[1]
    for sock in socks + warm:
        sock.close()
    each = (after - before) / count
    log(f"{target}: {each:.0f} bytes RSS per idle keep-alive connection")
    return {"target": target, "connections": count, "bytes_each": each}


def start_nginx(nginx: str, tmp: Path, name: str, conf: str, cmd_wrap) -> Proc:
    path = tmp / f"{name}.conf"
    path.write_text(conf)
    test = run_quiet([nginx, "-t", "-p", str(tmp), "-e", str(tmp / f"{name}-error.log"),
                      "-c", str(path)])
    if test.returncode != 0:
        raise BenchError(f"nginx -t rejected {path}:\n{test.stdout}\n--- config ---\n{conf}")
    return Proc(name, cmd_wrap([nginx, "-p", str(tmp), "-e", str(tmp / f"{name}-error.log"),
                                "-c", str(path)]), tmp, cwd=str(tmp))


@dataclass
class Target:
    """One thing wrk measures: a proxy process (or the origin itself) in one
    configuration, kept running for the whole run so that the rounds can
    alternate between targets."""

    key: str                      # unique, stable id (JSON, goal lookups)
    name: str                     # table's "target" column
    config: str                   # table's "config" column
    kind: str                     # "speedproxy" | "nginx" | "direct"
    sizes: list
    prefix: str = ""              # "/c" for cacheable paths
    workers: int | None = None
    warmup: float = 0.0           # first warm-up (JIT), before round 1
    runtime: str | None = None    # "cpython" | "pypy"
    mode: str | None = None       # "default" | "tuned"
    cache: str | None = None      # None | "memory" | "disk" | "nginx"
    tree: str | None = None       # None: the live work tree; else a --compare-tree label
    python_bin: Path | None = None
    pysrc: Path | None = None
    shipped: dict | None = None   # the tree's etc/speedproxy.yaml (None: args.shipped)
    expect: tuple | None = None   # (response header, token) every sample must carry
    idle: bool = False            # measure RSS per idle connection on it
    proc: Proc | None = None
    port: int | None = None
    failed: str | None = None

    def path(self, size: int) -> str:
        return f"{self.prefix}/{size_name(size)}"

    @property
    def label(self) -> str:
        return self.name + (f" ×{self.workers}w" if self.workers else "")


class OriginCounter:
    """How many requests reached the origin on paths under ``prefix``: lines
    of the nginx origin's access log of ``/c/`` (no other location logs), or
    bench/origin.py's ``/_bench/count``."""

    def __init__(self, log_path: Path | None = None, port: int | None = None):
        self.log_path, self.port = log_path, port

    def count(self, prefix: str = "/c/") -> int:
        if self.log_path is not None:
            try:
                with open(self.log_path, "rb") as f:
                    return sum(1 for _ in f)
            except FileNotFoundError:
                return 0
        status, body, _ = http_get(self.port, "/_bench/count", timeout=5.0)
        if status != 200:
            raise BenchError(f"origin /_bench/count answered {status}")
        return sum(v for k, v in json.loads(body).items() if k.startswith(prefix))


def start_python_origin(args, pin: Pinning, tmp: Path, name: str, slow: float = 0.5
                        ) -> tuple[Proc, int]:
    cmd = pin.wrap_loader([sys.executable, str(BENCH_DIR / "origin.py"), "--port", "0",
                           "--sizes", ",".join(map(str, args.sizes)), "--slow", str(slow)])
    proc = Proc(name, cmd, tmp)
    deadline = time.monotonic() + 10
    port = None
    while time.monotonic() < deadline and port is None:
        m = re.search(r"READY (\d+)", tail(proc.out_path, 5))
        if m:
            port = int(m.group(1))
        elif not proc.alive():
            break
        else:
            time.sleep(0.05)
    if port is None:
        raise BenchError(f"python origin {name} did not start\n" + proc.output_tail())
    wait_ready(proc, port, [(f"/{size_name(s)}", s) for s in args.sizes], 10)
    return proc, port


def start_origin(args, pin: Pinning, tmp: Path, nginx: str | None
                 ) -> tuple[Proc, int, str, OriginCounter]:
    """The origin of every measured target: ``/<size>`` plain, ``/c/<size>``
    with ``Cache-Control: max-age=3600`` (requests to those are counted)."""
    checks = [(f"/{size_name(s)}", s) for s in args.sizes]
    checks += [(f"/c/{size_name(s)}", s) for s in args.sizes]
    if nginx and not args.python_origin:
        www = tmp / "www"
        www.mkdir()
        for s in args.sizes:
            (www / size_name(s)).write_bytes((b"0123456789abcdef" * (s // 16 + 1))[:s])
        cache_log = tmp / "origin-c-access.log"
        last = None
        for _ in range(3):
            port = free_port()
            conf = NGINX_COMMON.format(tmp=tmp, name="origin") + (
                "master_process off;\nworker_processes 1;\n"
                "http {\n" + NGINX_HTTP_COMMON.format(tmp=tmp, name="origin") +
                "    sendfile on;\n    tcp_nopush on;\n    etag off;\n    open_file_cache max=64 inactive=1h;\n    open_file_cache_valid 1h;\n"
                "    default_type application/octet-stream;\n"
                f"    server {{\n        listen 127.0.0.1:{port};\n"
                f"        root {www};\n        location / {{ }}\n"
                # Cacheable copies; only these are logged: a request here
                # during a cache target's measured run is a miss.
                f"        location /c/ {{\n            alias {www}/;\n"
                '            add_header Cache-Control "max-age=3600";\n'
                f"            access_log {cache_log};\n        }}\n"
                "    }\n}\n"
            )
            proc = start_nginx(nginx, tmp, "origin", conf, pin.wrap_loader)
            try:
                wait_ready(proc, port, checks, 10)
                return (proc, port, f"nginx {nginx_version(nginx)} (static files, 1 process)",
                        OriginCounter(log_path=cache_log))
            except BenchError as e:
                last = e
                proc.stop()
        raise BenchError(f"could not start the nginx origin: {last}")
    proc, port = start_python_origin(args, pin, tmp, "origin")
    return (proc, port, f"bench/origin.py (asyncio, {platform.python_implementation()} "
                        f"{platform.python_version()}, 1 process)", OriginCounter(port=port))


def write_plugin_tree(tmp: Path, tree: Path = REPO, name: str = "pysrc") -> Path:
    """A PYTHONPATH entry exposing ``tree``'s speedproxy package and its twistd
    plugin, so Twisted writes its dropin.cache here and not into that tree."""
    root = tmp / name
    plugins = root / "twisted" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    for f in (tree / "twisted" / "plugins").glob("*.py"):
        shutil.copy2(f, plugins / f.name)
    (root / "speedproxy").symlink_to(tree / "speedproxy", target_is_directory=True)
    return root


def tree_label(tree: Path) -> str:
    """``@<short commit>`` of a checkout (``+changes`` when it has uncommitted ones)."""
    r = run_quiet(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"])
    if r.returncode != 0:
        return "@" + tree.name
    dirty = run_quiet(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"])
    return "@" + r.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def describe_tree(tree: Path) -> str:
    r = run_quiet(["git", "-C", str(tree), "log", "-1", "--format=%h %s"])
    desc = r.stdout.strip() if r.returncode == 0 else str(tree)
    if len(desc) > 90:
        desc = desc[:90].rsplit(" ", 1)[0] + " …"
    d = run_quiet(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"])
    n = len([l for l in d.stdout.splitlines() if l.strip()])
    return desc + (f" + uncommitted changes in {n} tracked file(s)" if n else "")



FALLBACK_CONFIG = {
    "server": {"access_log": "-"},
    "backends": {"default": [{"id": "origin"}]},
    "routing": {"default": {"path": "/", "upstream": "default", "load_balancer": "round_robin"}},
}


def load_shipped_config(python_bin: Path, tree: Path) -> tuple[dict, str]:
    """The tree's etc/speedproxy.yaml as data (read with the venv's PyYAML)."""
    shipped = tree / "etc" / "speedproxy.yaml"
    code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    try:
        r = run_quiet([str(python_bin), "-c", code, str(shipped)])
        if r.returncode == 0:
            return json.loads(r.stdout.strip().splitlines()[-1]), "etc/speedproxy.yaml"
        log(f"WARNING: cannot read {shipped}: {r.stdout[-300:]}")
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        log(f"WARNING: cannot read {shipped}: {e}")
    return json.loads(json.dumps(FALLBACK_CONFIG)), "built-in minimal config (etc/speedproxy.yaml unreadable)"


def speedproxy_config(shipped: dict, *, port: int, admin_port: int, origin_port: int,
                      workers: int, mode: str, cache: str | None, disk_path: Path | None,
                      health_path: str) -> dict:
    """The shipped config (etc/speedproxy.yaml) with only what a benchmark
    must change: listen and admin addresses on 127.0.0.1, the worker count,
    the backend (the bench origin; the health check asks for a path it
    serves), and for ``tuned`` ``access_log: off``. ``cache``: the route(s)
    get ``cache: {enabled: true}``; ``disk``: ``memory_size: 0`` and a disk
    tier, ``memory+disk``: the default memory tier and a disk tier."""
    cfg = json.loads(json.dumps(shipped))
    server = cfg.setdefault("server", {})
    server.update(host="127.0.0.1", port=port, workers=workers)
    if mode == "tuned":
        server["access_log"] = "off"
    cfg.setdefault("admin", {})["listen"] = f"127.0.0.1:{admin_port}"
    groups = cfg.get("backends") or {"default": [{"id": "origin"}]}
    group = next(iter(groups))
    backend = dict((groups[group] or [{}])[0])
    backend.update(id="origin", host="127.0.0.1", port=origin_port)
    if isinstance(backend.get("health_check"), dict):
        backend["health_check"] = dict(backend["health_check"], path=health_path)
    cfg["backends"] = {group: [backend]}
    routes = cfg.get("routing") or {"default": {"path": "/"}}
    for route in routes.values():
        route["upstream"] = group
        if cache:
            route["cache"] = {"enabled": True}
    cfg["routing"] = routes
    if cache == "disk":
        cfg["cache"] = {"memory_size": 0, "disk_path": str(disk_path), "disk_size": 1 << 30}
    elif cache == "memory+disk":
        cfg["cache"] = {"disk_path": str(disk_path), "disk_size": 1 << 30}
    return cfg


def start_speedproxy(args, pin: Pinning, tmp: Path, python_bin: Path, pysrc: Path, name: str,
                     origin_port: int, workers: int, mode: str = "default",
                     cache: str | None = None, checks: list | None = None,
                     shipped: dict | None = None) -> tuple[Proc, int, dict]:
    twistd = python_bin.parent / "twistd"
    port, admin_port = free_port(), free_port()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    disk = tmp / f"{safe}-disk" if cache in ("disk", "memory+disk") else None
    cfg = tmp / f"{safe}.yaml"
    cfg.write_text(json.dumps(speedproxy_config(
        shipped if shipped is not None else args.shipped, port=port, admin_port=admin_port, origin_port=origin_port,
        workers=workers, mode=mode, cache=cache, disk_path=disk,
        health_path=f"/{size_name(min(args.sizes))}"), indent=1) + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pysrc) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDEVMODE", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    cmd = [str(twistd), "-n", "--pidfile=", "speedproxy", "--config", str(cfg)]
    if not twistd.exists():
        cmd = [str(python_bin), "-m", "twisted", *cmd[1:]]
    proc = Proc(safe, pin.wrap_proxy(workers, cmd), tmp, env=env, cwd=str(tmp))
    if checks is None:
        checks = [(f"/{size_name(s)}", s) for s in args.sizes]
    headers = wait_ready(proc, port, checks, args.ready_timeout)
    pin.spread(proc.pid, workers)
    return proc, port, headers


def start_nginx_proxy(args, pin: Pinning, tmp: Path, nginx: str, origin_port: int,
                      workers: int, cache: bool = False, checks: list | None = None
                      ) -> tuple[Proc, int]:
    """nginx as reference proxy; with ``cache``, proxy_cache on disk (served
    from the page cache once read, with sendfile, as Debian's nginx.conf has it)."""
    port = free_port()
    name = f"nginx-{'cache' if cache else 'proxy'}-w{workers}"
    cache_http = cache_loc = ""
    if cache:
        cache_http = (f"    proxy_cache_path {tmp}/{name}-store levels=1:2 keys_zone=bench:10m "
                      "max_size=1g inactive=1h use_temp_path=off;\n"
                      "    sendfile on;\n    tcp_nopush on;\n")
        cache_loc = ("            proxy_cache bench;\n"
                     "            proxy_cache_valid 200 1h;\n"
                     "            add_header X-Cache-Status $upstream_cache_status;\n")
    else:
        cache_loc = "            proxy_max_temp_file_size 0;\n"
    # As root, nginx's workers would run as `nobody`, which cannot write the
    # cache and temp dirs inside the (0700) temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = NGINX_COMMON.format(tmp=tmp, name=name) + user + (
        f"master_process on;\nworker_processes {workers};\n"
        + ("worker_cpu_affinity auto;\n" if workers > 1 and pin.enabled else "")
        + "http {\n" + NGINX_HTTP_COMMON.format(tmp=tmp, name=name) + cache_http +
        f"    upstream origin {{\n        server 127.0.0.1:{origin_port};\n"
        "        keepalive 64;\n        keepalive_requests 1000000;\n    }\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n"
        "        location / {\n            proxy_pass http://origin;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        + cache_loc +
        "        }\n    }\n}\n"
    )
    proc = start_nginx(nginx, tmp, name, conf, lambda c: pin.wrap_proxy(workers, c))
    if checks is None:
        checks = [(f"/{size_name(s)}", s) for s in args.sizes]
    wait_ready(proc, port, checks, 10)
    return proc, port


def prime_cache(t: Target, timeout: float = 10.0) -> None:
    """GET each of the target's cacheable paths until the answer is a hit."""
    header, token = t.expect
    for size in t.sizes:
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            status, body, headers = http_get(t.port, t.path(size), timeout=5.0)
            value = headers.get(header, f"(no {header})")
            seen.append(f"{status} {value}")
            if status == 200 and len(body) == size and token in value:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{t.label} {t.path(size)}: no cache hit after warming it for "
                                 f"{timeout:.0f}s; answers: {'; '.join(seen[-4:])}")
            time.sleep(0.1)
        log(f"{t.label} {t.config}: {t.path(size)} is a hit ({header}: {value})")


def concurrent_gets(port: int, path: str, n: int, timeout: float,
                    stagger: float = 0.002) -> list[dict]:
    """``n`` clients, each on its own connection, send one GET of ``path`` at
    the same moment. The connections are opened ``stagger`` seconds apart
    first (100 at once may all land on the worker that wakes first; spread
    over 0.2 s they spread over the workers), then a barrier releases every
    request together. Bounded: socket timeouts and one overall deadline."""
    barrier = threading.Barrier(n, timeout=timeout + n * stagger)
    results: list[dict] = [{} for _ in range(n)]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            time.sleep(i * stagger)
            conn.connect()
            barrier.wait()
            t0 = time.monotonic()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            results[i] = {"status": resp.status, "bytes": len(body),
                          "cache_status": resp.getheader("Cache-Status", "(none)"),
                          "request_id": resp.getheader("X-Request-Id", ""),
                          "seconds": time.monotonic() - t0}
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as e:
            results[i] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 2 * timeout + n * stagger + 5
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    return [r or {"error": "no answer before the deadline"} for r in results]


def coalesce_test(args, pin: Pinning, tmp: Path, runtime: str, python_bin: Path, pysrc: Path,
                  slow_port: int, slow_counter: OriginCounter, disk: bool) -> dict:
    """``args.coalesce`` concurrent GETs of one slow, cacheable object through
    speedproxy with ``args.coalesce_workers`` workers: how many reached the
    origin. With a disk tier the workers of a host share one fetch (expect
    1); without, each worker coalesces its own (expect at most one per worker)."""
    workers = args.coalesce_workers
    tier = "memory + disk" if disk else "memory only"
    name = f"coalesce-{runtime}-{'disk' if disk else 'memory'}-w{workers}"
    res = {"runtime": runtime, "tier": tier, "workers": workers, "concurrent": args.coalesce,
           "expected": 1 if disk else workers}
    proc = None
    try:
        proc, port, _ = start_speedproxy(
            args, pin, tmp, python_bin, pysrc, name, slow_port, workers, mode="default",
            cache="memory+disk" if disk else "memory",
            checks=[(f"/{size_name(min(args.sizes))}", min(args.sizes))])
        # Every worker must serve before the test (PyPy workers start slowly):
        # the master logs "worker N (pid P) ready" for each.
        deadline = time.monotonic() + args.ready_timeout
        while len(set(re.findall(r"worker (\d+) \(pid \d+\) ready",
                                 proc.out_path.read_text(errors="replace")))) < workers:
            if time.monotonic() > deadline or not proc.alive():
                raise BenchError(f"{name}: not all {workers} workers ready\n" + proc.output_tail())
            time.sleep(0.1)
        time.sleep(0.5)
        path = f"/slow/{name}-{os.getpid()}-{int(time.time() * 1000)}"
        before = slow_counter.count(path)
        log(f"coalescing ({runtime}, {workers} workers, {tier}): {args.coalesce} concurrent "
            f"GETs of {path} (origin answers after {args.slow_delay:.1f}s)")
        t0 = time.monotonic()
        answers = concurrent_gets(port, path, args.coalesce, timeout=10.0)
        res["seconds"] = round(time.monotonic() - t0, 2)
        time.sleep(0.3)
        res["origin_requests"] = slow_counter.count(path) - before
        statuses: dict = {}
        kinds: dict = {}
        errors = []
        # X-Request-Id is "<worker's prefix>-<counter>": the workers that answered.
        answered_by = {a["request_id"].rsplit("-", 1)[0] for a in answers if a.get("request_id")}
        res["workers_answering"] = len(answered_by) if answered_by else None
        for a in answers:
            if "error" in a:
                errors.append(a["error"])
                continue
            statuses[a["status"]] = statuses.get(a["status"], 0) + 1
            kind = re.sub(r";\s*ttl=-?\d+", "", a["cache_status"])
            kinds[kind] = kinds.get(kind, 0) + 1
        res["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
        res["cache_status"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
        res["errors"] = errors[:5]
        res["error_count"] = len(errors)
        ok200 = statuses.get(200, 0)
        res["ok"] = (ok200 == args.coalesce and
                     (res["origin_requests"] == 1 if disk else 1 <= res["origin_requests"] <= workers))
        log(f"coalescing ({runtime}, {tier}): origin requests {res['origin_requests']} "
            f"(expected {'1' if disk else f'≤ {workers}'}), {ok200}/{args.coalesce} answered 200, "
            f"{len(errors)} errors, answered by {res['workers_answering']} worker(s), "
            f"Cache-Status {res['cache_status']}"
            + ("" if res["ok"] else "  <-- NOT MET"))
    except BenchError as e:
        res["ok"] = False
        res["error"] = str(e)[-2000:]
        print(f"\n[bench] coalescing test {name} FAILED:\n{e}\n", flush=True)
    finally:
        if proc is not None:
            proc.stop()
    return res


# --------------------------------------------------------------------------
# environment description


def nginx_version(nginx: str | None) -> str | None:
    if not nginx:
        return None
    r = run_quiet([nginx, "-v"])
    m = re.search(r"nginx/(\S+)", r.stdout)
    return m.group(1) if m else r.stdout.strip()


def py_versions(python_bin: Path | str) -> dict:
    code = (
        "import json, platform, sys\n"
        "d = {'python': platform.python_version(), 'impl': platform.python_implementation()}\n"
        "if hasattr(sys, 'pypy_version_info'):\n"
        "    d['pypy'] = '.'.join(map(str, sys.pypy_version_info[:3]))\n"
        "try:\n    import twisted; d['twisted'] = twisted.__version__\n"
        "except Exception as e:\n    d['twisted'] = 'not importable: %s' % e\n"
        "print(json.dumps(d))\n"
    )
    try:
        r = run_quiet([str(python_bin), "-c", code])
        return json.loads(r.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "affinity": len(os.sched_getaffinity(0))}


def system_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` (from /proc/stat), before we start."""
    def sample():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def wrk_version(wrk: str) -> str:
    r = run_quiet([wrk, "-v"])
    first = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    m = re.match(r"wrk (\S+)", first)
    return m.group(1) if m else first


# --------------------------------------------------------------------------
# output


def fmt(v, spec: str, dash: str = "—") -> str:
    return dash if v is None else format(v, spec)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(targets: list[Target], samples: list[dict]) -> list[dict]:
    """One row per target and size: medians over the rounds' good samples."""
    rows = []
    for t in targets:
        for size in t.sizes:
            mine = [s for s in samples if s["target"] == t.key and s["size"] == size]
            good = [s for s in mine if s.get("status") != "failed" and s.get("rps") is not None]
            row = {"key": t.key, "target": t.label, "config": t.config, "size": size,
                   "kind": t.kind, "runtime": t.runtime, "mode": t.mode, "cache": t.cache,
                   "tree": t.tree, "workers": t.workers, "runs": len(good), "samples": len(mine)}
            cpu = [s.get("cpu_us_per_req") for s in good if s.get("cpu_us_per_req") is not None]
            row.update(
                rps=_median(s.get("rps") for s in good),
                cpu_us_per_req=_median(cpu),
                cpu_min=min(cpu) if cpu else None, cpu_max=max(cpu) if cpu else None,
                cpu_all=[round(c, 1) for c in cpu],
                loader_us_per_req=_median(s.get("loader_us_per_req") for s in good),
                p99_ms=_median((s.get("latency") or {}).get("p99_ms") for s in good),
                rss_bytes=max((s.get("rss_bytes") or 0 for s in good), default=0) or None,
                processes=max((s.get("processes") or 0 for s in good), default=0) or None,
            )
            errs = sum(sum(s.get("socket_errors", {}).values()) + s.get("non_2xx", 0) for s in good)
            failed = [s for s in mine if s.get("status") == "failed"]
            if not good:
                row["status"] = "failed"
                row["error"] = t.failed or (failed[0].get("error") if failed else "not measured")
            else:
                row["status"] = "ok" if not errs else f"ok, {errs} errors"
                if failed:
                    row["status"] = f"{len(failed)} of {len(mine)} runs failed"
                    row["error"] = failed[0].get("error")
            hits = [s["hit_samples"] for s in mine if "hit_samples" in s]
            if hits:
                row["hits"] = [sum(h[0] for h in hits), sum(h[1] for h in hits)]
            origin = [s["origin_requests"] for s in mine if "origin_requests" in s]
            if origin:
                row["origin_requests"] = sum(origin)
            rows.append(row)
    return rows


def _status_cell(r: dict) -> str:
    out = r.get("status", "")
    if "hits" in r:
        out += f"; hit {r['hits'][0]}/{r['hits'][1]} sampled"
    if "origin_requests" in r:
        out += f", origin +{r['origin_requests']}"
    return out


HEADERS = ["target", "config", "req/s", "proxy CPU µs/req", "min–max", "wrk+origin CPU µs/req",
           "RSS MiB", "procs", "p99 ms", "runs", "status"]


def table_rows(rows: list[dict], size: int) -> list[list[str]]:
    out = []
    for r in rows:
        if r["size"] != size:
            continue
        rss = r.get("rss_bytes")
        spread = (f"{r['cpu_min']:.1f}–{r['cpu_max']:.1f}"
                  if r.get("cpu_min") is not None and r["runs"] > 1 else "—")
        out.append([
            r["target"], r["config"], fmt(r.get("rps"), ",.0f"), fmt(r.get("cpu_us_per_req"), ".1f"),
            spread, fmt(r.get("loader_us_per_req"), ".1f"),
            fmt(rss / 2**20 if rss else None, ".1f"), fmt(r.get("processes"), "d"),
            fmt(r.get("p99_ms"), ".2f"), f"{r['runs']}/{r['samples']}", _status_cell(r),
        ])
    return out


def markdown_tables(rows: list[dict], sizes: list[int]) -> str:
    parts = []
    for size in sorted({r["size"] for r in rows}, key=lambda s: (s not in sizes, s)):
        body = table_rows(rows, size)
        parts += [f"#### {human_size(size)}", "",
                  "| " + " | ".join(HEADERS) + " |",
                  "|" + "|".join(["---"] * 2 + ["---:"] * 8 + ["---"]) + "|"]
        parts += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        parts.append("")
    return "\n".join(parts).rstrip()


def _find(rows: list[dict], workers: int | None = None, **kw) -> dict | None:
    for r in rows:
        if r.get("cpu_us_per_req") is None:
            continue
        if workers is not None and r.get("workers") not in (workers, None):
            continue
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def goal_lines(rows: list[dict], workers: int, coalescing: list[dict]) -> list[list[str]]:
    """The performance goals of shared/DESIGN.md, from this run's medians."""
    out = []

    def add(goal: str, a: dict | None, b: dict | None, limit: float, what: str = "ratio") -> None:
        if a is None or b is None:
            return
        x, y = a["cpu_us_per_req"], b["cpu_us_per_req"]
        if what == "log":
            value = (x - y) / y
            shown = f"{x:.1f} vs {y:.1f} µs"
            cell, lim = f"{value:+.0%}", f"≤ {limit:.0%}"
        else:
            value = x / y
            shown = f"{x:.1f} / {y:.1f} µs"
            cell, lim = f"{value:.2f}×", f"≤ {limit:.2g}×"
        out.append([goal, shown, cell, lim, "met" if value <= limit else "**not met**"])

    k1, k100 = 1024, 102400
    nginx1 = _find(rows, workers, kind="nginx", cache=None, size=k1)
    nginx100 = _find(rows, workers, kind="nginx", cache=None, size=k100)
    ncache100 = _find(rows, workers, kind="nginx", cache="nginx", size=k100)
    for rt in ("cpython", "pypy"):
        for mode in ("default", "tuned"):
            sp = dict(kind="speedproxy", runtime=rt, mode=mode, tree=None)
            p1 = _find(rows, workers, cache=None, size=k1, **sp)
            p100 = _find(rows, workers, cache=None, size=k100, **sp)
            tag = f"{rt}, {mode}"
            add(f"1 KiB proxied vs nginx ({tag})", p1, nginx1, 2.0 if rt == "cpython" else 1.5)
            add(f"100 KiB proxied vs nginx ({tag})", p100, nginx100, 0.9)
            add(f"memory hit 1 KiB vs proxied 1 KiB ({tag})",
                _find(rows, workers, cache="memory", size=k1, **sp), p1, 0.5)
            add(f"disk hit 100 KiB vs nginx proxy_cache hit 100 KiB ({tag})",
                _find(rows, workers, cache="disk", size=k100, **sp), ncache100, 1.5)
        for size in (k1, k100):
            sp = dict(kind="speedproxy", runtime=rt, tree=None, cache=None, size=size)
            add(f"access log cost, {human_size(size)} ({rt}): default vs tuned",
                _find(rows, workers, mode="default", **sp), _find(rows, workers, mode="tuned", **sp),
                0.10, what="log")
    for c in coalescing:
        if "origin_requests" not in c:
            continue
        want = "= 1" if c["expected"] == 1 else f"≤ {c['expected']} (one per worker)"
        out.append([f"{c['concurrent']} concurrent misses, {c['workers']} workers, {c['tier']} "
                     f"({c['runtime']})", f"{c['origin_requests']} origin request(s)",
                     str(c["origin_requests"]), want, "met" if c.get("ok") else "**not met**"])
    return out


def ab_lines(rows: list[dict], trees: list[str], main: str) -> tuple[list[str], list[list[str]]]:
    """Uncached route, each --compare-tree and the main tree side by side."""
    names = trees + [main]
    header = ["config", "size"] + names + [f"{n} / {trees[0]}" for n in names[1:]]
    out = []
    for r in rows:
        if r["kind"] != "speedproxy" or r["cache"] or r["tree"] is not None or r["runtime"] != "cpython":
            continue
        vals = []
        for tr in trees:
            m = _find(rows, r["workers"], kind="speedproxy", runtime="cpython", cache=None,
                      mode=r["mode"], size=r["size"], tree=tr)
            vals.append(m["cpu_us_per_req"] if m else None)
        vals.append(r.get("cpu_us_per_req"))
        if vals[0] is None:
            continue
        out.append([f"{r['mode']} ×{r['workers']}w", human_size(r["size"])]
                   + [fmt(v, ".1f") for v in vals]
                   + [f"{v / vals[0]:.2f}×" if v is not None else "—" for v in vals[1:]])
    return header, out


def md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def coalescing_table(coalescing: list[dict]) -> str:
    body = []
    for c in coalescing:
        want = "1" if c["expected"] == 1 else f"≤ {c['expected']}"
        if "origin_requests" not in c:
            body.append([c["runtime"], str(c["workers"]), c["tier"], str(c["concurrent"]),
                         "—", want, "—", f"failed: {(c.get('error') or '').splitlines()[0][:150]}",
                         "**not met**"])
            continue
        cs = ", ".join(f"`{k}` ×{v}" for k, v in c["cache_status"].items())
        answered = f"{c['statuses'].get('200', 0)}/{c['concurrent']}"
        if c.get("error_count"):
            answered += f" ({c['error_count']} errors)"
        body.append([c["runtime"], str(c["workers"]), c["tier"], str(c["concurrent"]),
                     str(c["origin_requests"]), want, answered + f" in {c['seconds']:.2f}s",
                     fmt(c.get("workers_answering"), "d"), cs,
                     "met" if c.get("ok") else "**not met**"])
    return md_table(["runtime", "workers", "cache tiers", "concurrent GETs", "origin requests",
                     "expected", "answered 200", "workers that answered", "Cache-Status of the answers",
                     ""], body)


def render_section(meta: dict, rows: list[dict], failures: list[str]) -> str:
    m, v = meta["machine"], meta["versions"]
    ver = [f"CPython {v['cpython'].get('python', '?')} (Twisted {v['cpython'].get('twisted', '?')})"]
    if v.get("pypy"):
        ver.append(f"PyPy {v['pypy'].get('pypy', '?')} / Python {v['pypy'].get('python', '?')} "
                   f"(Twisted {v['pypy'].get('twisted', '?')})")
    else:
        ver.append(f"PyPy: {meta.get('pypy_note') or 'not used'}")
    ver.append(f"nginx {v['nginx']}" if v.get("nginx") else "nginx: not installed / not used")
    ver.append(f"wrk {v['wrk']}")
    trees = [f"`{t['label']}` = {t['describe']}" for t in meta.get("trees", [])]
    lines = [
        BEGIN,
        "<!-- Generated by `python3 bench/run.py`; edits between these markers are overwritten. -->",
        "",
        f"## Last run: {meta['date']}",
        "",
        f"- **Command**: `{meta['command']}` ({meta.get('elapsed', '?')})",
        f"- **Machine**: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}",
        "- **Versions**: " + "; ".join(ver),
        f"- **Trees**: rows without an `@<commit>` suffix run `{meta['tree_path']}` "
        f"({meta['tree']})"
        + ("; " + "; ".join(trees) if trees else "") + " (all run through `PYTHONPATH`).",
        f"- **Method**: every target is started once and kept running; after a first warm-up "
        f"({meta['warmup']:.0f}s, PyPy {meta['pypy_warmup']:.0f}s) the targets are measured in "
        f"{meta['rounds']} round(s), the order reversed every other round, each measured run "
        f"wrk `-t{meta['threads']} -c{meta['connections']} -d{wrk_secs(meta['duration'])} "
        f"--latency` after {meta['round_warmup']:.0f}s of wrk; the tables give the **median** "
        f"of the rounds (min–max of proxy CPU beside it). Keep-alive, loopback; {meta['pinning']}.",
        f"- **Origin**: {meta['origin']}: `/1k`, `/100k` without caching headers, `/c/1k`, "
        "`/c/100k` (the cache rows) with `Cache-Control: max-age=3600`.",
        f"- **speedproxy config**: `default` = {meta['shipped']} as shipped (access log on, "
        "`access_log: \"-\"`, i.e. twistd's log, here `twistd -n`'s stdout to a file), changed "
        "only where a benchmark must (each tree its own etc/speedproxy.yaml): listen/admin "
        "on 127.0.0.1, the worker count, the backend (the origin; its health check asks for "
        "`/1k`); `tuned` = the same with "
        "`access_log: off`. Cache rows add `cache: {enabled: true}` to the route: memory hit = "
        "the default memory tier (64 MiB per worker), disk hit = `cache: {memory_size: 0, "
        "disk_path: <tmp>}`. Each cache target is warmed until it answers a hit; during every "
        "measured run a sampler GETs the URL every 0.25 s and each answer must carry `Cache-Status: "
        "…; hit` (nginx: `X-Cache-Status: HIT`), and no request may reach the origin's `/c/` "
        "paths (its access log of them), or the run is failed and left out.",
        "- **nginx**: reference proxy, `proxy_pass` to an `upstream` with `keepalive 64`, "
        "HTTP/1.1, access_log off. `proxy_cache` rows: `proxy_cache_path` on disk (the temp dir, "
        f"{meta.get('tmp_fs', '?')}) with `proxy_cache_valid 200 1h`, `sendfile on`: its hits are "
        "cache files read through the page cache (no memory tier in nginx). speedproxy's disk "
        "tier is in the same temp dir.",
        "- **proxy CPU µs/req** = (utime+stime of the proxy process and all descendants, "
        "from /proc/PID/stat, over the measured run) × 10⁶ / requests completed. "
        "**wrk+origin CPU µs/req** = the same for wrk and the origin. **RSS** = sum over "
        "those processes after the run (**procs** of them). `direct` is wrk straight at the "
        "origin (no proxy). **runs** = good runs / runs.",
        "",
        "### Proxy CPU per request",
        "",
        markdown_tables(rows, meta["sizes"]),
        "",
    ]
    goals = goal_lines(rows, meta["workers"][0], meta.get("coalescing", []))
    if goals:
        lines += ["### Goals (shared/DESIGN.md), from the medians above",
                  "",
                  "Access log cost = (default − tuned) / tuned proxy CPU per request.",
                  "",
                  md_table(["goal", "median proxy CPU", "measured", "goal", ""], goals), ""]
    if meta.get("trees"):
        header, body = ab_lines(rows, [t["label"] for t in meta["trees"]], meta["tree_label"])
        if body:
            lines += ["### A/B: uncached route, CPython, proxy CPU µs/req (medians)", "",
                      md_table(header, body), ""]
    if meta.get("coalescing"):
        lines += ["### Coalescing", "",
                  f"{meta['coalesce']} clients connect, then send one GET each at the same moment "
                  f"for one object the origin answers after {meta['slow_delay']:.1f}s "
                  "(`Cache-Control: max-age=3600`); speedproxy with the default config, the "
                  "route cached, 2 workers (each on its own CPU). Origin requests are counted by "
                  "the origin (bench/origin.py); the workers that answered, by the worker prefix "
                  "of each answer's `X-Request-Id`. The clients connect 2 ms apart, then send "
                  "together: 100 connections opened at once may all go to the worker that wakes "
                  "first, which would not test coalescing across workers.", "",
                  coalescing_table(meta["coalescing"]), ""]
    if meta.get("idle"):
        lines += ["Memory per idle keep-alive client connection (the brief: ≤ 5 KiB): RSS of the "
                  "proxy's processes with N more connections open, each after one request, over N.",
                  "",
                  "| target | idle connections | RSS per connection |",
                  "|---|---:|---:|"]
        lines += [f"| {i['target']} | {i['connections']:,} | {i['bytes_each'] / 1024:.1f} KiB |"
                  for i in meta["idle"]]
        lines.append("")
    if meta.get("busy_warning"):
        lines += [f"**Warning:** {meta['busy_warning']}", ""]
    if failures:
        lines.append("**Not measured / failed:**")
        lines.append("")
        for f in failures:
            lines.append(f"- {f}")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_results_md(path: Path, section: str) -> None:
    if path.exists():
        text = path.read_text()
        b, e = text.find(BEGIN), text.find(END)
        if b != -1 and e != -1 and e > b:
            text = text[:b] + section + text[e + len(END):]
        else:
            lines = text.splitlines(keepends=True)
            if lines and lines[0].startswith("# "):
                text = lines[0] + "\n" + section + "\n\n" + "".join(lines[1:]).lstrip("\n")
            else:
                text = section + "\n\n" + text
    else:
        text = (
            "# speedproxy benchmark results\n\n" + section + "\n\n"
            "## Analysis\n\n"
            "_Hand-written notes (profiles, explanations) go here. `bench/run.py` only\n"
            "rewrites the part between the `bench:begin` / `bench:end` markers above._\n"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python3 bench/run.py",
        description="Benchmark speedproxy (CPython, PyPy; proxied and cache hits) against a "
                    "direct hit on the origin and nginx (proxy and proxy_cache) with wrk on "
                    "loopback, in alternating rounds. Reports req/s, proxy CPU µs per request "
                    "(median of the rounds) and RSS, the goals of shared/DESIGN.md and a "
                    "coalescing test; writes bench/RESULTS.md (between its bench:begin/end "
                    "markers) and bench/out/last.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=parse_duration, default="5s",
                   help="length of each measured wrk run (5s, 10s, 1m)")
    p.add_argument("--rounds", type=int, default=3,
                   help="measured runs per target and size, alternating between targets; "
                        "the tables give their median")
    p.add_argument("--warmup", type=parse_duration, default="2s",
                   help="first wrk warm-up of each target and size (direct, CPython, nginx)")
    p.add_argument("--pypy-warmup", type=parse_duration, default="5s",
                   help="first warm-up for the PyPy targets (its JIT needs longer)")
    p.add_argument("--round-warmup", type=parse_duration, default="1s",
                   help="wrk warm-up before every measured run (0 for none)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c: keep-alive connections")
    p.add_argument("--threads", type=int, default=1, help="wrk -t: load-generator threads")
    p.add_argument("--sizes", type=int_list, default="1024,102400",
                   help="comma-separated response sizes in bytes of the proxied (uncached) "
                        "targets (path /1k, /100k, ...)")
    p.add_argument("--only", choices=["all", "cpython", "pypy", "none"], default="all",
                   help="which speedproxy runtimes to measure (`none`: only direct and nginx)")
    p.add_argument("--configs", default="default,tuned",
                   help="speedproxy configs of the proxied targets: `default` (etc/speedproxy."
                        "yaml as shipped: access log on) and/or `tuned` (access_log off); "
                        "the default one comes first in every table")
    p.add_argument("--cache-configs", default="default,tuned",
                   help="configs of the cache-hit targets (empty: none)")
    p.add_argument("--memory-hit-sizes", type=str, default="1024",
                   help="sizes of the memory-cache hit targets (empty: none)")
    p.add_argument("--disk-hit-sizes", type=str, default="102400",
                   help="sizes of the disk-cache hit targets (memory_size: 0; empty: none)")
    p.add_argument("--tree", type=Path, default=REPO, metavar="PATH",
                   help="the checkout whose speedproxy the main targets run (default: this "
                        "work tree, with whatever uncommitted changes it has)")
    p.add_argument("--compare-tree", action="append", default=[], type=Path, metavar="PATH",
                   help="also run the proxied CPython targets from this checkout (e.g. a "
                        "`git worktree` of an older commit), side by side; repeatable; the "
                        "first is the reference of the A/B table")
    p.add_argument("--compare-configs", default="default,tuned",
                   help="configs of the --compare-tree targets")
    p.add_argument("--workers", type=int_list, default="1",
                   help="comma-separated speedproxy worker counts, e.g. 1,2 (nginx uses the "
                        "same worker_processes)")
    p.add_argument("--no-nginx", action="store_true",
                   help="do not measure nginx as reference proxy (nginx may still be the origin)")
    p.add_argument("--python-origin", action="store_true",
                   help="use bench/origin.py as the origin even when nginx is installed")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    p.add_argument("--idle-connections", type=int, default=2000,
                   help="idle keep-alive connections opened to measure RSS per connection "
                        "(default-config targets and nginx, first worker count only; 0 skips)")
    p.add_argument("--coalesce", type=int, default=100,
                   help="concurrent GETs of one slow object in the coalescing test (0 skips)")
    p.add_argument("--coalesce-workers", type=int, default=2,
                   help="speedproxy workers in the coalescing test")
    p.add_argument("--slow-delay", type=parse_duration, default="0.5s",
                   help="how long the origin takes to answer the coalescing test's object")
    p.add_argument("--install-missing", action="store_true",
                   help="apt-get install nginx-light and pypy3 when missing (wrk is always "
                        "installed when missing)")
    p.add_argument("--ready-timeout", type=parse_duration, default="20s",
                   help="how long to wait for a proxy to answer before giving up on it")
    p.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md",
                   help="markdown file whose bench:begin/end section is rewritten")
    p.add_argument("--json", type=Path, default=OUT_DIR / "last.json",
                   help="where the raw results of this run are written")
    p.add_argument("--keep-tmp", action="store_true",
                   help="keep the temp dir (configs, process logs) for debugging")
    args = p.parse_args(argv)
    if isinstance(args.sizes, str):
        args.sizes = int_list(args.sizes)
    if isinstance(args.workers, str):
        args.workers = int_list(args.workers)
    for name in ("duration", "warmup", "pypy_warmup", "round_warmup", "ready_timeout",
                 "slow_delay"):
        if isinstance(getattr(args, name), str):
            setattr(args, name, parse_duration(getattr(args, name)))
    for name in ("memory_hit_sizes", "disk_hit_sizes"):
        text = getattr(args, name).strip()
        setattr(args, name, int_list(text) if text else [])
    for name in ("configs", "cache_configs", "compare_configs"):
        values = [c.strip() for c in getattr(args, name).split(",") if c.strip()]
        bad = [c for c in values if c not in ("default", "tuned")]
        if bad:
            p.error(f"--{name.replace('_', '-')}: unknown config(s) {bad} (default, tuned)")
        setattr(args, name, sorted(values, key=("default", "tuned").index))
    if args.duration < 1:
        p.error("--duration must be at least 1s")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.tree = args.tree.resolve()
    for tree in [args.tree, *args.compare_tree]:
        if not (tree / "speedproxy").is_dir() or not (tree / "twisted" / "plugins").is_dir():
            p.error(f"--compare-tree {tree}: no speedproxy/ and twisted/plugins/ there")
    return args


CONFIG_TEXT = {"default": "default (access log on)", "tuned": "tuned (access_log off)"}


def build_targets(args, runtimes, nginx) -> list[Target]:
    """Every target in table order: the shipped default config first, the
    tuned one second, then the other runtime, the cache hits, the compare
    trees, nginx and the direct hit."""
    targets: list[Target] = []
    hit = ("cache-status", "; hit")
    for workers in args.workers:
        for rt, python_bin, warmup in runtimes:
            for mode in args.configs:
                targets.append(Target(
                    key=f"sp-{rt}-{mode}-proxy-w{workers}", name=f"speedproxy-{rt}",
                    config=CONFIG_TEXT[mode], kind="speedproxy", sizes=list(args.sizes),
                    workers=workers, warmup=warmup, runtime=rt, mode=mode,
                    python_bin=python_bin, pysrc=args.pysrc,
                    idle=(mode == args.configs[0] and workers == args.workers[0])))
        for rt, python_bin, warmup in runtimes:
            for cache, sizes, what in (("memory", args.memory_hit_sizes, "memory-cache hit"),
                                       ("disk", args.disk_hit_sizes,
                                        "disk-cache hit (memory_size 0)")):
                if not sizes:
                    continue
                for mode in args.cache_configs:
                    targets.append(Target(
                        key=f"sp-{rt}-{mode}-{cache}-w{workers}", name=f"speedproxy-{rt}",
                        config=f"{mode}, {what}", kind="speedproxy", sizes=list(sizes),
                        prefix="/c", workers=workers, warmup=warmup, runtime=rt, mode=mode,
                        cache=cache, python_bin=python_bin, pysrc=args.pysrc, expect=hit))
        cpython = next((r for r in runtimes if r[0] == "cpython"), None)
        if cpython:
            for tree, label, pysrc, shipped in args.trees:
                for mode in args.compare_configs:
                    targets.append(Target(
                        key=f"sp-cpython-{mode}-proxy-w{workers}-{label}",
                        name=f"speedproxy-cpython{label}", config=CONFIG_TEXT[mode],
                        kind="speedproxy", sizes=list(args.sizes), workers=workers,
                        warmup=cpython[2], runtime="cpython", mode=mode, tree=label,
                        python_bin=cpython[1], pysrc=pysrc, shipped=shipped))
        if nginx and not args.no_nginx:
            targets.append(Target(key=f"nginx-proxy-w{workers}", name="nginx",
                                  config="proxy_pass, keepalive 64", kind="nginx",
                                  sizes=list(args.sizes), workers=workers, warmup=args.warmup,
                                  idle=workers == args.workers[0]))
            csizes = sorted(set(args.memory_hit_sizes) | set(args.disk_hit_sizes))
            if csizes:
                targets.append(Target(key=f"nginx-cache-w{workers}", name="nginx",
                                      config="proxy_cache hit (disk, page cache)", kind="nginx",
                                      sizes=csizes, prefix="/c", workers=workers,
                                      warmup=args.warmup, cache="nginx",
                                      expect=("x-cache-status", "HIT")))
    targets.append(Target(key="direct", name="direct", config="origin, no proxy", kind="direct",
                          sizes=list(args.sizes), warmup=min(args.warmup, 1.0)))
    return targets


def start_target(args, pin: Pinning, tmp: Path, t: Target, nginx: str | None,
                 origin_port: int) -> None:
    checks = [(t.path(s), s) for s in t.sizes]
    if t.kind == "direct":
        t.port = origin_port
        return
    if t.kind == "nginx":
        t.proc, t.port = start_nginx_proxy(args, pin, tmp, nginx, origin_port, t.workers,
                                           cache=t.cache == "nginx", checks=checks)
    else:
        log(f"starting {t.label} {t.config}")
        t.proc, t.port, headers = start_speedproxy(
            args, pin, tmp, t.python_bin, t.pysrc, t.key, origin_port, t.workers,
            mode=t.mode, cache=t.cache, checks=checks, shipped=t.shipped)
        log(f"{t.label} {t.config} ready on 127.0.0.1:{t.port} "
            f"(X-Speedproxy: {headers.get('x-speedproxy', 'absent')})")
    if t.expect:
        prime_cache(t)


def run(args: argparse.Namespace, tmp: Path) -> tuple[dict, list[dict], list[str]]:
    samples: list[dict] = []
    failures: list[str] = []
    started_at = time.monotonic()

    args.wrk = ensure_wrk()
    if args.install_missing:
        missing = [pkg for pkg, binary in (("nginx-light", "nginx"), ("pypy3", "pypy3"))
                   if not (find_nginx() if binary == "nginx" else shutil.which(binary))]
        if missing:
            apt_install(missing)
    nginx = find_nginx()
    if not nginx:
        log("WARNING: nginx is not installed: the origin is bench/origin.py (Python), which "
            "costs the loader's core more per request than the nginx origin of "
            "bench/RESULTS.md, and there is no nginx reference. --install-missing installs it.")
    pypy = shutil.which("pypy3")
    nproc = os.cpu_count() or 1
    pin = Pinning(not args.no_pin, nproc)
    cpython_bin = VENV / "bin" / "python"
    if not cpython_bin.exists():
        cpython_bin = Path(sys.executable)
    args.shipped, shipped_desc = load_shipped_config(cpython_bin, args.tree)
    args.tree_label = "work tree" if args.tree == REPO else tree_label(args.tree)
    fs = run_quiet(["stat", "-f", "-c", "%T", str(tmp)])

    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python3", "bench/run.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "duration": args.duration, "warmup": args.warmup, "pypy_warmup": args.pypy_warmup,
        "round_warmup": args.round_warmup, "rounds": args.rounds,
        "connections": args.connections, "threads": args.threads, "sizes": args.sizes,
        "workers": args.workers, "pinning": pin.describe(args.workers),
        "shipped": shipped_desc, "tmp_fs": fs.stdout.strip() if fs.returncode == 0 else "?",
        "tree": describe_tree(args.tree), "tree_path": str(args.tree),
        "tree_label": args.tree_label,
        "coalesce": args.coalesce, "slow_delay": args.slow_delay,
        "versions": {"cpython": py_versions(cpython_bin), "nginx": nginx_version(nginx),
                     "wrk": wrk_version(args.wrk)},
    }
    args.pysrc = write_plugin_tree(tmp, args.tree)
    args.trees = []
    meta["trees"] = []
    for i, tree in enumerate(args.compare_tree):
        tree = tree.resolve()
        label = tree_label(tree)
        # Each tree runs its own shipped config (newer ones may have keys an
        # older tree refuses).
        shipped, _ = load_shipped_config(cpython_bin, tree)
        args.trees.append((tree, label, write_plugin_tree(tmp, tree, f"pysrc-compare{i}"), shipped))
        meta["trees"].append({"path": str(tree), "label": label, "describe": describe_tree(tree)})

    runtimes: list[tuple[str, Path, float]] = []
    if args.only in ("all", "cpython"):
        runtimes.append(("cpython", cpython_bin, args.warmup))
    if args.only in ("all", "pypy"):
        if not pypy:
            meta["pypy_note"] = "pypy3 not installed"
            failures.append("speedproxy-pypy: pypy3 is not on PATH (try --install-missing)")
        else:
            try:
                venv = ensure_pypy_venv(pypy, tmp)
                runtimes.append(("pypy", venv / "bin" / "python", args.pypy_warmup))
                meta["versions"]["pypy"] = py_versions(venv / "bin" / "python")
            except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                log(f"skipping PyPy: {e}")
                meta["pypy_note"] = "PyPy venv could not be created"
                failures.append(f"speedproxy-pypy: {str(e).splitlines()[0]}")
    if not nginx and not args.no_nginx:
        failures.append("nginx reference: nginx is not installed (try --install-missing)")

    busy = system_busy()
    meta["cpu_busy_before"] = round(busy, 3)
    if busy > 0.10:
        meta["busy_warning"] = (
            f"the machine was {busy:.0%} busy (all CPUs) before the run started: other "
            "processes compete for the cores, so req/s and µs/req are less reliable."
        )
        log("WARNING: " + meta["busy_warning"])
    log(f"pinning: {meta['pinning']}")
    origin, origin_port, origin_desc, counter = start_origin(args, pin, tmp, nginx)
    args.origin_pid = origin.pid
    meta["origin"] = origin_desc
    meta["idle"] = []
    log(f"origin: {origin_desc} on 127.0.0.1:{origin_port}")

    def fail(t: Target, err: Exception) -> None:
        msg = str(err) or type(err).__name__
        print(f"\n[bench] {t.label} {t.config} FAILED:\n{msg}\n", flush=True)
        lines = [l.strip() for l in msg.splitlines() if l.strip()]
        summary = lines[0] if lines else msg
        detail = next((l for l in reversed(lines[1:]) if not l.startswith(("---", "("))), None)
        if detail and detail != summary:
            summary += f" (last output: `{detail[:200]}`)"
        failures.append(f"{t.label} {t.config}: {summary}")
        t.failed = msg[-4000:]
        if t.proc is not None:
            t.proc.stop()
            t.proc = None

    # 1. start every target and keep it running
    targets = build_targets(args, runtimes, nginx)
    for t in targets:
        try:
            start_target(args, pin, tmp, t, nginx, origin_port)
        except (BenchError, OSError, http.client.HTTPException) as e:
            fail(t, e)
    live = [t for t in targets if not t.failed]

    # 2. a first warm-up of each (PyPy's JIT), then alternating rounds
    for t in live:
        for size in t.sizes:
            if t.failed or t.warmup <= 0:
                continue
            log(f"{t.label} {t.config} {human_size(size)}: warm-up {t.warmup:.0f}s")
            try:
                run_wrk(args, pin, f"http://127.0.0.1:{t.port}{t.path(size)}", t.warmup)
            except BenchError as e:
                fail(t, e)
    order = [(t, size) for t in live for size in t.sizes]
    for rnd in range(args.rounds):
        log(f"round {rnd + 1}/{args.rounds}")
        for t, size in (order if rnd % 2 == 0 else list(reversed(order))):
            if t.failed:
                continue
            try:
                row = measure(args, pin, t, size, args.round_warmup, counter)
                row["round"] = rnd + 1
                samples.append(row)
                if row.get("error"):
                    failures.append(f"round {rnd + 1}: {row['error']}")
            except BenchError as e:
                fail(t, e)

    # 3. memory per idle connection, then stop them all
    if args.idle_connections:
        for t in live:
            if t.idle and not t.failed and t.proc is not None:
                try:
                    meta["idle"].append(measure_idle(
                        f"{t.label} {t.config}", t.proc, t.port,
                        t.path(min(t.sizes)), args.idle_connections))
                except (OSError, BenchError) as e:
                    log(f"{t.label}: idle-connection RSS not measured: {e}")
    for t in targets:
        if t.proc is not None:
            t.proc.stop()
            t.proc = None
    origin.stop()

    # 4. coalescing: many concurrent misses of one slow object
    meta["coalescing"] = []
    if args.coalesce > 0 and runtimes:
        try:
            slow, slow_port = start_python_origin(args, pin, tmp, "slow-origin", args.slow_delay)
        except BenchError as e:
            failures.append(f"coalescing: the slow origin did not start: {e}")
        else:
            slow_counter = OriginCounter(port=slow_port)
            for rt, python_bin, _ in runtimes:
                for disk in (True, False):
                    res = coalesce_test(args, pin, tmp, rt, python_bin, args.pysrc, slow_port,
                                        slow_counter, disk)
                    meta["coalescing"].append(res)
                    if "error" in res:
                        failures.append(f"coalescing {rt} {res['tier']}: "
                                        f"{res['error'].splitlines()[0]}")
            slow.stop()

    meta["targets"] = [{"key": t.key, "label": t.label, "config": t.config, "sizes": t.sizes,
                        "failed": bool(t.failed)} for t in targets]
    rows = aggregate(targets, samples)
    meta["samples"] = samples
    mins, secs = divmod(int(time.monotonic() - started_at), 60)
    meta["elapsed"] = f"{mins} min {secs} s"
    return meta, rows, failures


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="speedproxy-bench-"))
    old_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        meta, rows, failures = run(args, tmp)
    except BenchError as e:
        print(f"\n[bench] ERROR: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\n[bench] interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        Proc.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        if args.keep_tmp:
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    section = render_section(meta, rows, failures)
    print()
    print(section.split("### Proxy CPU per request", 1)[-1].replace(END, "").strip())
    print()
    samples = meta.pop("samples")
    data = {"meta": meta, "rows": rows, "samples": samples, "failures": failures}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    write_results_md(args.output, section)
    log(f"wrote {args.output} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
