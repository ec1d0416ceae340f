"""speedproxy.admin.procinfo: /proc readings of real processes."""

from __future__ import annotations

import os
import subprocess
import sys

from speedproxy.admin import procinfo


def test_a_process_tree_holds_live_children_not_zombies() -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        dead.wait(10)  # reaped: gone from /proc
        tree = procinfo.process_tree(os.getpid())
        assert list(tree)[0] == os.getpid()
        assert live.pid in tree and dead.pid not in tree
        assert tree[live.pid].ppid == os.getpid()
    finally:
        live.kill()
        live.wait(10)


def test_stat_rss_and_a_missing_process() -> None:
    mine = procinfo.read_stat(os.getpid())
    assert mine is not None and mine.state in ("R", "S") and mine.threads >= 1 and mine.rss_bytes > 0
    assert (procinfo.rss_bytes(os.getpid()) or 0) > 1 << 20
    assert procinfo.read_stat(2**22 + 12345) is None  # above pid_max: never a process
    assert procinfo.read_process(2**22 + 12345)["alive"] is False
