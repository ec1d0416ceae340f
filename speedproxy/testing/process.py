"""A real ``twistd speedproxy`` process: config written, started, reloaded, stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from speedproxy.testing.support import DEFAULT_TIMEOUT, READY_PATTERN, _POLL, deep_merge, free_port


class ProxyStartError(RuntimeError):
    """``twistd speedproxy`` exited or did not become ready in time."""


class ProxyReloadError(RuntimeError):
    """The proxy logged that it refused a reloaded config."""


#: Log fragments saying a SIGHUP reload took effect (master / single process).
RELOAD_APPLIED: Tuple[str, ...] = (" is live", "config reloaded")
#: Log fragments saying a SIGHUP reload was refused or failed.
RELOAD_REFUSED: Tuple[str, ...] = ("config reload refused", "config reload failed")


def repo_root() -> Path:
    """The checkout holding ``twisted/plugins/speedproxy_plugin.py``."""
    return Path(__file__).resolve().parents[2]


def twistd_command() -> List[str]:
    """The argv prefix that runs this interpreter's ``twistd``."""
    candidate = Path(sys.executable).parent / "twistd"
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("twistd")
    if found and Path(found).parent == Path(sys.executable).parent:
        return [found]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def subprocess_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    root = str(repo_root())
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root if not existing else root + os.pathsep + existing
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def check_config(path: Union[str, Path], timeout: float = 30.0) -> "subprocess.CompletedProcess[str]":
    """Run ``twistd speedproxy --config PATH --check`` and return its result."""
    argv = twistd_command() + ["-n", "--pidfile=", "-l", "-", "speedproxy", "--config", str(path), "--check"]
    return subprocess.run(
        argv,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
        cwd=str(Path(path).parent),
    )


class ProxyProcess:
    """A ``twistd -n speedproxy`` subprocess with a generated config.

    ``config`` is merged over test defaults (listen on 127.0.0.1 on a free
    port, the admin API on another free port, access log to the twistd log,
    one worker, a 2 s shutdown grace)::

        with ProxyProcess(proxy_config(backend)) as proxy:
            urllib.request.urlopen(proxy.url + "/")

    Output (stdout and stderr) goes to ``proxy.log_path``.
    """

    def __init__(
        self,
        config: Optional[Mapping[str, Any]] = None,
        *,
        directory: Optional[Union[str, Path]] = None,
        ready_timeout: float = 20.0,
        env: Optional[Mapping[str, str]] = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="speedproxy-test-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.admin_port = free_port(self.host)
        defaults: Dict[str, Any] = {
            "server": {
                "host": self.host,
                "port": self.port,
                "workers": 1,
                "access_log": "-",
                # Teardown must not wait out a 30 s drain of leftover connections.
                "shutdown_grace": "2s",
            },
            "admin": {"listen": f"{self.host}:{self.admin_port}"},
        }
        self.config: Dict[str, Any] = deep_merge(defaults, config or {})
        server = self.config.get("server", {})
        #: The ports picked here (not given by the test): picked again if
        #: another process takes one before twistd binds it.
        self._picked_port = server.get("port") == self.port
        self._picked_admin = self.config.get("admin", {}).get("listen") == f"{self.host}:{self.admin_port}"
        self.host = str(server.get("host", self.host))
        self.port = int(server.get("port", self.port))
        self.config_path = self.directory / "speedproxy.yaml"
        self.log_path = self.directory / "twistd.log"
        self.ready_timeout = ready_timeout
        self._env = dict(env or {})
        self._extra_args = list(extra_args)
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self._log_file: Optional[IO[bytes]] = None
        self.returncode: Optional[int] = None

    # -- config ------------------------------------------------------------

    def write_config(self, config: Optional[Mapping[str, Any]] = None) -> Path:
        """Write ``config`` (default: the current one) to :attr:`config_path`."""
        if config is not None:
            self.config = dict(config)
        text = yaml.safe_dump(self.config, sort_keys=False, default_flow_style=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config_path)
        return self.config_path

    def write_config_text(self, text: str) -> Path:
        """Replace the config file with raw ``text`` (for invalid configs)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config_path)
        return self.config_path

    def reload(self, config: Optional[Mapping[str, Any]] = None, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Write ``config`` merged over the current one, SIGHUP, wait for the outcome.

        Returns the log line saying the new config is live.

        :raises ProxyReloadError: if the proxy logged that it refused the file.
        """
        if config is not None:
            self.write_config(deep_merge(self.config, config))
        mark = self.log_mark()
        self.signal(signal.SIGHUP)
        line = self.wait_for_log(RELOAD_APPLIED + RELOAD_REFUSED, timeout, since=mark)
        if any(marker in line for marker in RELOAD_REFUSED):
            raise ProxyReloadError(f"reload refused: {line}\n{self.log_tail()}")
        return line

    # -- life cycle ----------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy listener."""
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> Tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the proxy is not started")
        return self.process.pid

    def start(self) -> "ProxyProcess":
        """Start twistd and wait (bounded) for the readiness line."""
        if self.process is not None:
            raise RuntimeError("already started")
        for attempt in range(3):
            try:
                return self._start_once()
            except ProxyStartError as error:
                # free_port() only found ports free a moment ago: another
                # process (a parallel test run) may have bound one since.
                if attempt == 2 or not self._pick_ports_again(str(error)):
                    raise
                self.process = None
        raise AssertionError("unreachable")

    def _pick_ports_again(self, error: str) -> bool:
        """After ``error`` (a start that failed), pick new ports if one of
        ours was taken; whether it did."""
        if "Address already in use" not in error:
            return False
        picked = False
        if self._picked_port and f":{self.port} " in error:
            self.port = free_port(self.host)
            self.config["server"]["port"] = self.port
            picked = True
        if self._picked_admin and f":{self.admin_port} " in error:
            self.admin_port = free_port(self.host)
            self.config["admin"]["listen"] = f"{self.host}:{self.admin_port}"
            picked = True
        return picked

    def _start_once(self) -> "ProxyProcess":
        self.write_config()
        argv = twistd_command() + [
            "-n",
            "--pidfile=",
            "-l",
            "-",
            "speedproxy",
            "--config",
            str(self.config_path),
            *self._extra_args,
        ]
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(self._env),
            cwd=str(self.directory),
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(timeout=5.0)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            match = READY_PATTERN.search(self.log_text())
            if match is not None:
                if int(match.group(2)) != self.port:
                    raise ProxyStartError(
                        f"proxy serves on port {match.group(2)}, expected {self.port}\n{self.log_tail()}"
                    )
                return
            code = self.process.poll() if self.process is not None else None
            if code is not None:
                self.returncode = code
                raise ProxyStartError(f"twistd speedproxy exited with {code} before it was ready:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise ProxyStartError(
                    f"twistd speedproxy not ready after {self.ready_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def running(self) -> bool:
        """Is the process still alive?"""
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process."""
        if self.process is None:
            raise RuntimeError("the proxy is not started")
        self.process.send_signal(sig)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait (bounded) for the process to exit on its own; return its code."""
        if self.process is None:
            raise RuntimeError("the proxy is not started")
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"proxy still running after {timeout}s:\n{self.log_tail()}") from None
        return self.returncode

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code."""
        process = self.process
        if process is None:
            return self.returncode
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):  # workers too: they would be orphaned
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                process.wait(10.0)
        self.returncode = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.returncode

    def cleanup(self) -> None:
        """Stop the process and remove the directory if this object made it."""
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "ProxyProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # -- the log -------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for failure messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_mark(self) -> int:
        """The current length of the log; pass as ``since=`` to see only new lines."""
        return len(self.log_text())

    def wait_for_log(
        self, substring: Union[str, Sequence[str]], timeout: float = DEFAULT_TIMEOUT, since: int = 0
    ) -> str:
        """Wait (bounded) for a log line containing ``substring``; return the line.

        ``substring`` may be a sequence: the first line containing any of them
        is returned.  Only text after character offset ``since`` (see
        :meth:`log_mark`) is searched.
        """
        wanted = (substring,) if isinstance(substring, str) else tuple(substring)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()[since:]
            found = [index for index in (text.find(item) for item in wanted) if index >= 0]
            if found:
                index = min(found)
                start = text.rfind("\n", 0, index) + 1
                end = text.find("\n", index)
                return text[start : end if end >= 0 else len(text)]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{substring!r} not logged within {timeout}s; log tail:\n{self.log_tail()}")
            time.sleep(_POLL)

    # -- process facts -------------------------------------------------------

    def pids(self) -> List[int]:
        """The process and all its live descendants (the master and its workers)."""
        from speedproxy.admin.procinfo import process_tree

        return list(process_tree(self.pid)) or [self.pid]

    def worker_pids(self) -> List[int]:
        """Descendant processes only (empty when the proxy serves in-process)."""
        return self.pids()[1:]

    def rss_bytes(self) -> int:
        """Total resident set size of :meth:`pids` (``VmRSS`` in ``/proc``)."""
        from speedproxy.admin.procinfo import rss_bytes

        return sum(rss_bytes(pid) or 0 for pid in self.pids())
