"""The rate limit's bucket locks end to end (:mod:`speedproxy.edge.host_locks`): ``twistd speedproxy`` with 2 workers.

The workers lock the bucket sets with named semaphores: both map the same
ones (``/proc/<pid>/maps``), a worker killed with SIGKILL and respawned maps
them again and the limit stays exact for the host, and the master removes
them when it stops.  Waits are bounded polls.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Set

import pytest

from speedproxy.testing import RawClient, wait_until

from workers_support import stats, wait_workers

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")

SERVER = {"workers": 2, "access_log": "off", "shutdown_grace": "5s"}
CONFIG = {"routing": {"default": {"path": "/", "upstream": "default",
                                  "rate_limit": {"requests": 1, "per": "1h", "burst": 10}}}}


def _mapped_semaphores(pid: int) -> Set[str]:
    """The speedproxy semaphores (``/dev/shm`` paths) that ``pid`` maps."""
    found = set()
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(None, 5)
            if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("sem.speedproxy-edge-"):
                found.add(fields[5].strip())
    return found


def _one_get(proxy: Any) -> int:
    """The status of one GET on a new connection (new connections spread over the workers)."""
    client = RawClient(*proxy.address, timeout=10.0)
    try:
        client.request("GET", "/x")
        return client.read_response().status
    finally:
        client.close()


def _requests_until_both_map_them(proxy, pids: Dict[int, int], statuses: List[int]) -> Set[str]:
    """One GET a new connection (at most 200) until every worker in ``pids`` took a token."""
    for _ in range(200):
        mapped = {slot: _mapped_semaphores(pid) for slot, pid in pids.items()}
        if all(mapped.values()):
            names = set.union(*mapped.values())
            assert all(found == names for found in mapped.values()), mapped  # one stripe for the host
            return names
        statuses.append(_one_get(proxy))
    raise AssertionError(f"200 connections did not reach every worker: {pids}")


def test_workers_share_one_stripe_that_outlives_a_killed_worker_and_goes_with_the_master(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, config=CONFIG, **SERVER)
    pids = wait_workers(proxy, 2)
    statuses: List[int] = []
    names = _requests_until_both_map_them(proxy, pids, statuses)
    assert len(names) == 64 and all(os.path.exists(name) for name in names)

    os.kill(pids[0], signal.SIGKILL)
    respawned = wait_until(
        lambda: (lambda now: now if now.get(0) not in (None, pids[0]) and len(now) == 2 else None)(
            {w["slot"]: w["pid"] for w in stats(proxy)["workers"] if w["ready"] and w["pid"]}
        ),
        15.0, "worker 0 respawned",
    )
    assert _requests_until_both_map_them(proxy, respawned, statuses) == names  # opened by name again
    for _ in range(12 - len(statuses)):  # at least 12 requests in all
        statuses.append(_one_get(proxy))
    assert statuses.count(200) == 10 and statuses.count(429) == len(statuses) - 10, statuses

    assert proxy.stop() == 0
    assert [name for name in names if os.path.exists(name)] == []
