"""``server.cpu_affinity`` end to end: the workers' CPUs as /proc shows them.

``twistd -n speedproxy`` runs with several workers; each worker's allowed
CPUs are read from ``/proc/<pid>/status`` (``Cpus_allowed_list``), after
start, after a respawn and after reloads that change the setting.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from typing import Dict, List, Optional

import pytest

from speedproxy.testing import wait_until

from workers_support import reload, wait_workers

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"), reason="needs Linux"
)

WORKERS = 3


def allowed_cpus(pid: int) -> List[int]:
    """The CPUs ``pid`` may run on, from ``Cpus_allowed_list`` (``0-2,5``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("Cpus_allowed_list:"))
    cpus: List[int] = []
    for part in line.split(":", 1)[1].strip().split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def cpus_of(workers: Dict[int, int]) -> Dict[int, List[int]]:
    return {slot: allowed_cpus(pid) for slot, pid in workers.items()}


def test_auto_pins_worker_n_to_cpu_n_and_follows_reloads_and_respawns(stack, backend) -> None:
    available = sorted(os.sched_getaffinity(0))  # what the master inherits from us
    proxy = stack.proxy(backend, workers=WORKERS, cpu_affinity="auto", access_log="off")
    workers = wait_workers(proxy, WORKERS, timeout=15.0)
    expected = {slot: [available[slot % len(available)]] for slot in range(WORKERS)}
    assert cpus_of(workers) == expected
    with urllib.request.urlopen(proxy.url + "/", timeout=5) as response:
        assert response.status == 200

    # A replaced worker is pinned like the one it replaces.
    os.kill(workers[1], signal.SIGKILL)

    def replaced() -> Optional[Dict[int, int]]:
        now = wait_workers(proxy, WORKERS, timeout=15.0)
        return now if now[1] != workers[1] else None

    respawned = wait_until(replaced, 15.0, "worker 1 replaced")
    assert cpus_of(respawned) == expected

    # An explicit list, cycled over the workers, applied by a reload.
    last = available[-1]
    proxy.write_config({**proxy.config, "server": {**proxy.config["server"], "cpu_affinity": [last, available[0]]}})
    line, _ = reload(proxy)
    assert "is live" in line, line
    assert cpus_of(respawned) == {0: [last], 1: [available[0]], 2: [last]}

    # off: every worker may run anywhere the master may.
    proxy.write_config({**proxy.config, "server": {**proxy.config["server"], "cpu_affinity": "off"}})
    line, _ = reload(proxy)
    assert "is live" in line, line
    assert cpus_of(respawned) == {slot: available for slot in range(WORKERS)}


def test_off_by_default_leaves_the_workers_on_every_cpu(stack, backend) -> None:
    available = sorted(os.sched_getaffinity(0))
    proxy = stack.proxy(backend, workers=2, access_log="off")
    workers = wait_workers(proxy, 2, timeout=15.0)
    assert cpus_of(workers) == {0: available, 1: available}
