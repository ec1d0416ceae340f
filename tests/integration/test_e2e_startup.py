"""Start-up: every listener is bound before anything serves.

An address that cannot be used stops ``twistd speedproxy`` with exit status 1
and one line naming the address, the config key and the reason (no
traceback), before any client could reach any listener; ``--check`` binds
nothing.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
import yaml

import speedproxy
from speedproxy.testing import ProxyProcess, ProxyStartError, check_config, free_port, twistd_command

HOST = "127.0.0.1"
IN_USE = os.strerror(errno.EADDRINUSE)
#: Bound of a start-up that is expected to fail.
START_TIMEOUT = 20.0


@pytest.fixture
def taken() -> Iterator[List[socket.socket]]:
    """Listening sockets standing in for another process holding a port."""
    sockets: List[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def _hold(taken: List[socket.socket], port: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, port))
    sock.listen(8)
    taken.append(sock)
    return port


def _connects(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


def _fails_to_start(proxy: ProxyProcess, probe: Tuple[int, ...] = ()) -> Tuple[int, str, Dict[int, int]]:
    """Start ``proxy`` expecting it to exit; meanwhile keep connecting to ``probe``.

    Returns the exit status, the whole output and, per probed port, how many
    connection attempts succeeded (bounded: at most until the process exits
    or ``START_TIMEOUT`` passes).
    """
    outcome: Dict[str, BaseException] = {}

    def start() -> None:
        try:
            proxy.start()
        except BaseException as error:  # noqa: B036 - reported below
            outcome["error"] = error

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    accepted = {port: 0 for port in probe}
    deadline = time.monotonic() + START_TIMEOUT + 5.0
    while starter.is_alive() and time.monotonic() < deadline:
        for port in probe:
            accepted[port] += _connects(port)
        time.sleep(0.002)
    starter.join(10.0)
    assert not starter.is_alive(), "the start-up did not end"
    assert isinstance(outcome.get("error"), ProxyStartError), (outcome, proxy.log_tail())
    assert proxy.returncode is not None
    return proxy.returncode, proxy.log_text(), accepted


def _assert_one_line(output: str, address: str, key: str) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [f"speedproxy: cannot listen on {address} ({key}): [Errno {errno.EADDRINUSE}] {IN_USE}"], output


def _assert_free(port: int) -> None:
    """Nothing listens on ``port`` any more (the failed start-up left nothing behind)."""
    assert not _connects(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, port))


@pytest.mark.parametrize("workers", [1, 0], ids=["master", "single-process"])
def test_admin_address_in_use_stops_before_the_proxy_listens(tmp_path: Path, taken, workers: int) -> None:
    admin_port = _hold(taken, free_port())
    proxy = ProxyProcess(
        {"server": {"workers": workers}, "admin": {"listen": f"{HOST}:{admin_port}"}},
        directory=tmp_path / "p",
        ready_timeout=START_TIMEOUT,
    )
    code, output, accepted = _fails_to_start(proxy, probe=(proxy.port,))
    assert code == 1, output
    _assert_one_line(output, f"{HOST}:{admin_port}", "admin.listen")
    # No client ever reached the proxy port, and it is free again.
    assert accepted == {proxy.port: 0}, output
    _assert_free(proxy.port)


@pytest.mark.parametrize("workers", [1, 0], ids=["master", "single-process"])
def test_proxy_address_in_use_stops_startup(tmp_path: Path, taken, workers: int) -> None:
    port = _hold(taken, free_port())
    proxy = ProxyProcess({"server": {"port": port, "workers": workers}}, directory=tmp_path / "p",
                         ready_timeout=START_TIMEOUT)
    code, output, accepted = _fails_to_start(proxy, probe=(proxy.admin_port,))
    assert code == 1, output
    _assert_one_line(output, f"{HOST}:{port}", "server.host/server.port")
    assert accepted == {proxy.admin_port: 0}, output
    _assert_free(proxy.admin_port)


def test_demo_origin_address_in_use_stops_startup(tmp_path: Path, taken) -> None:
    demo_port = _hold(taken, free_port())
    config = {
        "backends": {"default": [{"id": "demo", "host": HOST, "port": demo_port}]},
        "routing": {"default": {"path": "/", "upstream": "default"}},
    }
    proxy = ProxyProcess(config, directory=tmp_path / "p", ready_timeout=START_TIMEOUT,
                         extra_args=["--demo-origin"])
    code, output, accepted = _fails_to_start(proxy, probe=(proxy.port, proxy.admin_port))
    assert code == 1, output
    _assert_one_line(output, f"{HOST}:{demo_port}", "--demo-origin")
    assert accepted == {proxy.port: 0, proxy.admin_port: 0}, output


def test_a_daemon_stops_on_the_terminal_and_leaves_no_pid_file(tmp_path: Path, taken) -> None:
    """Without ``-n``: the line goes to the caller's stderr, before twistd forks or writes its pid file."""
    admin_port = _hold(taken, free_port())
    path = tmp_path / "speedproxy.yaml"
    path.write_text(
        yaml.safe_dump(
            {"server": {"host": HOST, "port": free_port(), "workers": 1}, "admin": {"listen": f"{HOST}:{admin_port}"}},
            sort_keys=False,
        )
    )
    env = dict(os.environ)
    root = str(Path(speedproxy.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    argv = twistd_command() + [
        "--pidfile", str(pidfile), "-l", str(logfile), "speedproxy", "--config", str(path),
    ]
    result = subprocess.run(argv, env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=START_TIMEOUT)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    _assert_one_line(result.stderr, f"{HOST}:{admin_port}", "admin.listen")
    assert not pidfile.exists()


def test_check_binds_nothing(tmp_path: Path, taken) -> None:
    port = _hold(taken, free_port())
    admin_port = _hold(taken, free_port())
    path = tmp_path / "speedproxy.yaml"
    path.write_text(
        yaml.safe_dump(
            {"server": {"host": HOST, "port": port}, "admin": {"listen": f"{HOST}:{admin_port}"}},
            sort_keys=False,
        )
    )
    result = check_config(path)
    assert result.returncode == 0, result.stdout
    assert "successful" in result.stdout
    assert "cannot listen" not in result.stdout


def test_both_listeners_serve_after_a_normal_start(tmp_path: Path) -> None:
    """The adopted sockets serve: the proxy and the admin API answer."""
    with ProxyProcess({"server": {"workers": 1}}, directory=tmp_path / "p") as proxy:
        assert _connects(proxy.port)
        assert _connects(proxy.admin_port)


def test_the_test_harness_picks_other_ports_when_its_own_were_taken(tmp_path: Path) -> None:
    """``ProxyProcess`` picks its ports with ``free_port()``; another process
    may bind one before twistd does (parallel test runs): it starts again on
    new ones instead of failing the test.  A port the test chose is kept."""
    proxy = ProxyProcess(directory=tmp_path)
    taken = socket.socket()
    taken.bind((proxy.host, proxy.admin_port))
    taken.listen(1)
    first_admin = proxy.admin_port
    try:
        proxy.start()
        assert proxy.admin_port != first_admin
        assert proxy.running()
    finally:
        proxy.stop(timeout=5.0)
        taken.close()
    chosen = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", chosen))
    squatter.listen(1)
    try:
        with pytest.raises(ProxyStartError, match="Address already in use"):
            ProxyProcess({"server": {"port": chosen}}, directory=tmp_path / "chosen").start()
    finally:
        squatter.close()
