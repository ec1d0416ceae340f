#!/usr/bin/env python3
"""speedproxy benchmark: one command, one run, every target side by side.

Measures, with wrk on loopback and keep-alive, for each response size:

* ``direct``           -- wrk straight at the origin (no proxy): req/s only;
* ``speedproxy-cpython`` -- ``twistd -n speedproxy`` from the project's venv;
* ``speedproxy-pypy``  -- the same under PyPy (venv cached in bench/.pypy-venv);
* ``nginx``            -- nginx as the reference reverse proxy (when installed).

For each proxy it reports requests/s, proxy CPU microseconds per request
(utime+stime of the proxy process and all its descendants, over the measured
wrk run, divided by the requests wrk completed) and the proxy's RSS.

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
import subprocess
import sys
import tempfile
import time
import resource
from pathlib import Path

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
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (use 10s, 500ms, 1m)")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


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
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    # fields[0] is field 3 (state): field N is fields[N - 3].
    ppid = int(fields[1])
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    rss = int(fields[21]) * PAGE_SIZE
    return ppid, ticks, rss


def process_tree(root: int) -> dict[int, tuple[int, int]]:
    """{pid: (ticks, rss)} for root and all of its descendants."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = (stats[pid][1], stats[pid][2])
            todo.extend(children.get(pid, ()))
    return tree


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


def measure(args, pin: Pinning, target: str, root: Proc | None, port: int, size: int,
            warmup: float, workers: int | None) -> dict:
    url = f"http://127.0.0.1:{port}/{size_name(size)}"
    row = {"target": target, "size": size, "workers": workers, "url": url, "status": "ok"}
    if warmup > 0:
        log(f"{target} {human_size(size)}: warm-up {warmup:.0f}s")
        run_wrk(args, pin, url, warmup)
    if root is not None and not root.alive():
        raise BenchError(f"{root.name} died during warm-up\n" + root.output_tail())
    before = cpu_seconds(root.pid) if root else None
    origin_pid = getattr(args, "origin_pid", None)
    origin_before = cpu_seconds(origin_pid)[0] if origin_pid else None
    log(f"{target} {human_size(size)}: measuring {args.duration:.0f}s")
    res = run_wrk(args, pin, url, args.duration)
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
    errs = sum(res["socket_errors"].values()) + res["non_2xx"]
    if errs:
        row["status"] = f"ok, {errs} errors"
    line = f"{target} {human_size(size)}: {res['rps']:.0f} req/s"
    if row.get("cpu_us_per_req") is not None:
        line += (f", {row['cpu_us_per_req']:.1f} µs CPU/req, "
                 f"RSS {row['rss_bytes'] / 2**20:.1f} MiB in {row['processes']} process(es)")
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


def start_origin(args, pin: Pinning, tmp: Path, nginx: str | None) -> tuple[Proc, int, str]:
    checks = [(f"/{size_name(s)}", s) for s in args.sizes]
    if nginx and not args.python_origin:
        www = tmp / "www"
        www.mkdir()
        for s in args.sizes:
            (www / size_name(s)).write_bytes((b"0123456789abcdef" * (s // 16 + 1))[:s])
        last = None
        for _ in range(3):
            port = free_port()
            conf = NGINX_COMMON.format(tmp=tmp, name="origin") + (
                "master_process off;\nworker_processes 1;\n"
                "http {\n" + NGINX_HTTP_COMMON.format(tmp=tmp, name="origin") +
                "    sendfile on;\n    tcp_nopush on;\n    etag off;\n    open_file_cache max=64 inactive=1h;\n    open_file_cache_valid 1h;\n"
                "    default_type application/octet-stream;\n"
                f"    server {{\n        listen 127.0.0.1:{port};\n"
                f"        root {www};\n        location / {{ }}\n    }}\n}}\n"
            )
            proc = start_nginx(nginx, tmp, "origin", conf, pin.wrap_loader)
            try:
                wait_ready(proc, port, checks, 10)
                return proc, port, f"nginx {nginx_version(nginx)} (static files, 1 process)"
            except BenchError as e:
                last = e
                proc.stop()
        raise BenchError(f"could not start the nginx origin: {last}")
    cmd = pin.wrap_loader([sys.executable, str(BENCH_DIR / "origin.py"),
                           "--port", "0", "--sizes", ",".join(map(str, args.sizes))])
    proc = Proc("origin", cmd, tmp)
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
        raise BenchError("python origin did not start\n" + proc.output_tail())
    wait_ready(proc, port, checks, 10)
    return proc, port, f"bench/origin.py (asyncio, {platform.python_implementation()} " \
                       f"{platform.python_version()}, 1 process)"


def write_plugin_tree(tmp: Path) -> Path:
    """A PYTHONPATH entry exposing the live speedproxy package and its twistd
    plugin, so Twisted writes its dropin.cache here and not into the work tree."""
    root = tmp / "pysrc"
    plugins = root / "twisted" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    src = REPO / "twisted" / "plugins"
    for f in src.glob("*.py"):
        shutil.copy2(f, plugins / f.name)
    (root / "speedproxy").symlink_to(REPO / "speedproxy", target_is_directory=True)
    return root


def start_speedproxy(args, pin: Pinning, tmp: Path, python_bin: Path, label: str,
                     origin_port: int, workers: int) -> tuple[Proc, int, dict]:
    twistd = python_bin.parent / "twistd"
    port, admin_port = free_port(), free_port()
    cfg = tmp / f"{label}-w{workers}.yaml"
    cfg.write_text(
        f'server: {{host: "127.0.0.1", port: {port}, workers: {workers}, access_log: "off"}}\n'
        f'admin: {{listen: "127.0.0.1:{admin_port}"}}\n'
        f'backends: {{default: [{{id: origin, host: "127.0.0.1", port: {origin_port}}}]}}\n'
        f'routing: {{default: {{path: "/", upstream: default, load_balancer: round_robin}}}}\n'
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(args.pysrc) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDEVMODE", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    cmd = [str(twistd), "-n", "--pidfile=", "speedproxy", "--config", str(cfg)]
    if not twistd.exists():
        cmd = [str(python_bin), "-m", "twisted", *cmd[1:]]
    proc = Proc(f"{label}-w{workers}", pin.wrap_proxy(workers, cmd), tmp,
                env=env, cwd=str(tmp))
    checks = [(f"/{size_name(s)}", s) for s in args.sizes]
    headers = wait_ready(proc, port, checks, args.ready_timeout)
    pin.spread(proc.pid, workers)
    return proc, port, headers


def start_nginx_proxy(args, pin: Pinning, tmp: Path, nginx: str, origin_port: int,
                      workers: int) -> tuple[Proc, int]:
    port = free_port()
    name = f"nginx-proxy-w{workers}"
    conf = NGINX_COMMON.format(tmp=tmp, name=name) + (
        f"master_process on;\nworker_processes {workers};\n"
        + ("worker_cpu_affinity auto;\n" if workers > 1 and pin.enabled else "")
        + "http {\n" + NGINX_HTTP_COMMON.format(tmp=tmp, name=name) +
        f"    upstream origin {{\n        server 127.0.0.1:{origin_port};\n"
        "        keepalive 64;\n        keepalive_requests 1000000;\n    }\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n"
        "        location / {\n            proxy_pass http://origin;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_max_temp_file_size 0;\n"
        "        }\n    }\n}\n"
    )
    proc = start_nginx(nginx, tmp, name, conf, lambda c: pin.wrap_proxy(workers, c))
    wait_ready(proc, port, [(f"/{size_name(s)}", s) for s in args.sizes], 10)
    return proc, port


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


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        target = r["target"]
        if r.get("workers") and r["target"] != "direct":
            target += f" ×{r['workers']}w"
        lat = (r.get("latency") or {}).get("p99_ms")
        rss = r.get("rss_bytes")
        rows.append([
            target,
            human_size(r["size"]),
            fmt(r.get("rps"), ",.0f"),
            fmt(r.get("cpu_us_per_req"), ".1f"),
            fmt(r.get("loader_us_per_req"), ".1f"),
            fmt(rss / 2**20 if rss else None, ".1f"),
            fmt(r.get("processes"), "d"),
            fmt(lat, ".2f"),
            r.get("status", ""),
        ])
    return rows


HEADERS = ["target", "size", "req/s", "proxy CPU µs/req", "wrk+origin CPU µs/req", "RSS MiB",
           "procs", "p99 ms", "status"]


def markdown_table(results: list[dict]) -> str:
    rows = table_rows(results)
    out = ["| " + " | ".join(HEADERS) + " |",
           "|" + "|".join(["---"] * 2 + ["---:"] * 6 + ["---"]) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def text_table(results: list[dict]) -> str:
    rows = [HEADERS] + table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(
            c.ljust(w) if i in (0, 1, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_section(meta: dict, results: list[dict], failures: list[str]) -> str:
    m, v = meta["machine"], meta["versions"]
    ver = [f"CPython {v['cpython'].get('python', '?')} (Twisted {v['cpython'].get('twisted', '?')})"]
    if v.get("pypy"):
        ver.append(f"PyPy {v['pypy'].get('pypy', '?')} / Python {v['pypy'].get('python', '?')} "
                   f"(Twisted {v['pypy'].get('twisted', '?')})")
    else:
        ver.append(f"PyPy: {meta.get('pypy_note') or 'not used'}")
    ver.append(f"nginx {v['nginx']}" if v.get("nginx") else "nginx: not installed / not used")
    ver.append(f"wrk {v['wrk']}")
    lines = [
        BEGIN,
        "<!-- Generated by `python3 bench/run.py`; edits between these markers are overwritten. -->",
        "",
        f"## Last run: {meta['date']}",
        "",
        f"- **Command**: `{meta['command']}`",
        f"- **Machine**: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}",
        "- **Versions**: " + "; ".join(ver),
        f"- **Method**: wrk `-t{meta['threads']} -c{meta['connections']} "
        f"-d{wrk_secs(meta['duration'])} --latency`, keep-alive, loopback; "
        f"warm-up {meta['warmup']:.0f}s (PyPy {meta['pypy_warmup']:.0f}s) per size before "
        f"the measured run; {meta['pinning']}.",
        f"- **Origin**: {meta['origin']}, serving /1k-style paths with Content-Length.",
        "- **proxy CPU µs/req** = (utime+stime of the proxy process and all descendants, "
        "from /proc/PID/stat, over the measured run) × 10⁶ / requests completed. "
        "**wrk+origin CPU µs/req** = the same for wrk and the origin: with N workers "
        "and every core busy, at most cores / (proxy + wrk+origin) requests per µs. "
        "**RSS** = sum over those processes after the run (**procs** of them). `direct` is "
        "wrk straight at the origin (no proxy).",
        "",
        markdown_table(results),
        "",
    ]
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
        lines.append("**Not measured:**")
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
        description="Benchmark speedproxy (CPython, PyPy) against a direct hit on the "
                    "origin and nginx as reference proxy, with wrk on loopback. Reports "
                    "req/s, proxy CPU µs per request and RSS; writes bench/RESULTS.md "
                    "(between its bench:begin/end markers) and bench/out/last.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=parse_duration, default="10s",
                   help="length of each measured wrk run (10s, 30s, 1m)")
    p.add_argument("--warmup", type=parse_duration, default="2s",
                   help="wrk warm-up before each measured run (direct, CPython, nginx)")
    p.add_argument("--pypy-warmup", type=parse_duration, default="5s",
                   help="warm-up for the PyPy target (its JIT needs longer)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c: keep-alive connections")
    p.add_argument("--threads", type=int, default=1, help="wrk -t: load-generator threads")
    p.add_argument("--sizes", type=int_list, default="1024,102400",
                   help="comma-separated response sizes in bytes (path /1k, /100k, ...)")
    p.add_argument("--only", choices=["all", "cpython", "pypy", "none"], default="all",
                   help="which speedproxy runtimes to measure (`none`: only direct and nginx)")
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
                        "(first worker count only; 0 skips)")
    p.add_argument("--install-missing", action="store_true",
                   help="apt-get install nginx-light and pypy3 when missing (wrk is always "
                        "installed when missing)")
    p.add_argument("--ready-timeout", type=parse_duration, default="15s",
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
    for name in ("duration", "warmup", "pypy_warmup", "ready_timeout"):
        if isinstance(getattr(args, name), str):
            setattr(args, name, parse_duration(getattr(args, name)))
    if args.duration < 1:
        p.error("--duration must be at least 1s")
    return args


def run(args: argparse.Namespace, tmp: Path) -> tuple[dict, list[dict], list[str]]:
    results: list[dict] = []
    failures: list[str] = []

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

    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python3", "bench/run.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "duration": args.duration, "warmup": args.warmup, "pypy_warmup": args.pypy_warmup,
        "connections": args.connections, "threads": args.threads, "sizes": args.sizes,
        "workers": args.workers, "pinning": pin.describe(args.workers),
        "versions": {"cpython": py_versions(cpython_bin), "nginx": nginx_version(nginx),
                     "wrk": wrk_version(args.wrk)},
    }
    args.pysrc = write_plugin_tree(tmp)

    runtimes: list[tuple[str, Path, float]] = []
    if args.only in ("all", "cpython"):
        runtimes.append(("speedproxy-cpython", cpython_bin, args.warmup))
    if args.only in ("all", "pypy"):
        if not pypy:
            meta["pypy_note"] = "pypy3 not installed"
            failures.append("speedproxy-pypy: pypy3 is not on PATH (try --install-missing)")
        else:
            try:
                venv = ensure_pypy_venv(pypy, tmp)
                runtimes.append(("speedproxy-pypy", venv / "bin" / "python", args.pypy_warmup))
                meta["versions"]["pypy"] = py_versions(venv / "bin" / "python")
            except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                log(f"skipping PyPy: {e}")
                meta["pypy_note"] = "PyPy venv could not be created"
                failures.append(f"speedproxy-pypy: {str(e).splitlines()[0]}")

    busy = system_busy()
    meta["cpu_busy_before"] = round(busy, 3)
    if busy > 0.10:
        meta["busy_warning"] = (
            f"the machine was {busy:.0%} busy (all CPUs) before the run started: other "
            "processes compete for the cores, so req/s and µs/req are less reliable."
        )
        log("WARNING: " + meta["busy_warning"])
    log(f"pinning: {meta['pinning']}")
    origin, origin_port, origin_desc = start_origin(args, pin, tmp, nginx)
    args.origin_pid = origin.pid
    meta["origin"] = origin_desc
    meta["idle"] = []
    log(f"origin: {origin_desc} on 127.0.0.1:{origin_port}")

    def note_failure(target: str, workers, err: Exception, sizes) -> None:
        msg = str(err) or type(err).__name__
        name = target + (f" ×{workers}w" if workers else "")
        print(f"\n[bench] {name} FAILED:\n{msg}\n", flush=True)
        lines = [l.strip() for l in msg.splitlines() if l.strip()]
        summary = lines[0]
        detail = next((l for l in reversed(lines[1:]) if not l.startswith(("---", "("))), None)
        if detail and detail != summary:
            summary += f" (last output: `{detail[:200]}`)"
        failures.append(f"{name}: {summary}")
        for s in sizes:
            results.append({"target": target, "size": s, "workers": workers,
                            "status": "failed", "error": msg[-4000:]})

    def idle_rss(target: str, workers: int, proc: Proc, port: int) -> None:
        if not args.idle_connections:
            return
        try:
            meta["idle"].append(measure_idle(f"{target} ×{workers}w", proc, port,
                                             f"/{size_name(min(args.sizes))}",
                                             args.idle_connections))
        except (OSError, BenchError) as e:
            log(f"{target}: idle-connection RSS not measured: {e}")

    def not_done(target: str, workers) -> list[int]:
        done = {r["size"] for r in results
                if r["target"] == target and r.get("workers") == workers}
        return [s for s in args.sizes if s not in done]

    # a. direct hit on the origin
    for size in args.sizes:
        try:
            results.append(measure(args, pin, "direct", None, origin_port, size,
                                   min(args.warmup, 1.0), None))
        except BenchError as e:
            note_failure("direct", None, e, [size])

    # b./c. speedproxy on CPython and PyPy
    for label, python_bin, warmup in runtimes:
        for workers in args.workers:
            proc = None
            try:
                log(f"starting {label} with {workers} worker(s)")
                proc, port, headers = start_speedproxy(args, pin, tmp, python_bin, label,
                                                       origin_port, workers)
                log(f"{label} ready on 127.0.0.1:{port} "
                    f"(X-Speedproxy: {headers.get('x-speedproxy', 'absent')})")
                for size in args.sizes:
                    results.append(measure(args, pin, label, proc, port, size, warmup, workers))
                if workers == args.workers[0]:
                    idle_rss(label, workers, proc, port)
            except BenchError as e:
                note_failure(label, workers, e, not_done(label, workers))
            finally:
                if proc is not None:
                    proc.stop()

    # d. nginx as reference proxy
    if nginx and not args.no_nginx:
        for workers in args.workers:
            proc = None
            try:
                proc, port = start_nginx_proxy(args, pin, tmp, nginx, origin_port, workers)
                for size in args.sizes:
                    results.append(measure(args, pin, "nginx", proc, port, size,
                                           args.warmup, workers))
                if workers == args.workers[0]:
                    idle_rss("nginx", workers, proc, port)
            except BenchError as e:
                note_failure("nginx", workers, e, not_done("nginx", workers))
            finally:
                if proc is not None:
                    proc.stop()
    elif not args.no_nginx:
        failures.append("nginx reference: nginx is not installed (try --install-missing)")

    origin.stop()
    return meta, results, failures


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="speedproxy-bench-"))
    old_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        meta, results, failures = run(args, tmp)
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

    print()
    print(text_table(results))
    if failures:
        print("\nNot measured:")
        for f in failures:
            print(f"  - {f}")
    print()
    data = {"meta": meta, "results": results, "failures": failures}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    write_results_md(args.output, render_section(meta, results, failures))
    log(f"wrote {args.output} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
