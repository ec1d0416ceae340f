"""speedproxy.master.affinity: which CPU each worker is pinned to."""

from __future__ import annotations

import errno
import os
from typing import Dict, List, Set

import pytest

from speedproxy.config import ConfigError
from speedproxy.config.loader import config_from_mapping, config_to_mapping, parse_config
from speedproxy.master.affinity import CPUPinner, process_threads, worker_cpus


@pytest.mark.parametrize("slot, cpu", [(0, 0), (1, 1), (3, 3), (4, 0), (9, 1)])
def test_auto_pins_worker_n_to_cpu_n_and_wraps_around(slot: int, cpu: int) -> None:
    assert worker_cpus("auto", slot, {0, 1, 2, 3}) == {cpu}


def test_auto_uses_the_cpus_the_master_may_run_on_in_order() -> None:
    # Under taskset -c 2,5,7: worker 0 on CPU 2, worker 1 on 5, worker 2 on 7.
    assert [worker_cpus("auto", slot, {7, 2, 5}) for slot in range(4)] == [{2}, {5}, {7}, {2}]


def test_an_explicit_list_gives_one_cpu_per_worker_cycled() -> None:
    assert [worker_cpus((2, 3), slot, {0, 1, 2, 3}) for slot in range(5)] == [{2}, {3}, {2}, {3}, {2}]
    assert worker_cpus((5,), 7, {0}) == {5}  # not checked against the host here: see the OSError test


def test_off_pins_nothing() -> None:
    assert worker_cpus("off", 0, {0, 1}) is None


class FakeSystem:
    """sched_{get,set}affinity of a 4-CPU host with one two-thread process."""

    def __init__(self, cpus: Set[int] = {0, 1, 2, 3}, error: int = 0) -> None:
        self.cpus = set(cpus)
        self.error = error
        self.set: Dict[int, Set[int]] = {}

    def get_affinity(self, pid: int) -> Set[int]:
        assert pid == 0
        return set(self.cpus)

    def set_affinity(self, tid: int, cpus: Set[int]) -> None:
        if self.error:
            raise OSError(self.error, os.strerror(self.error))
        self.set[tid] = set(cpus)

    def threads(self, pid: int) -> List[int]:
        return [pid, pid + 1]

    def pinner(self) -> CPUPinner:
        return CPUPinner(self.get_affinity, self.set_affinity, self.threads)


def test_pin_sets_every_thread_of_the_worker() -> None:
    system = FakeSystem()
    assert system.pinner().pin(2, 100, "auto") == {2}
    assert system.set == {100: {2}, 101: {2}}


def test_pin_with_off_leaves_a_new_worker_alone() -> None:
    system = FakeSystem()
    assert system.pinner().pin(0, 100, "off") is None
    assert system.set == {}


def test_repin_after_a_reload_applies_the_new_setting_and_off_unpins() -> None:
    system = FakeSystem()
    pinner = system.pinner()
    pinner.repin([(0, 100), (1, 200)], (3, 2))
    assert system.set == {100: {3}, 101: {3}, 200: {2}, 201: {2}}
    pinner.repin([(0, 100), (1, 200), (2, 0)], "off")  # pid 0: not running, skipped
    assert system.set == {100: {0, 1, 2, 3}, 101: {0, 1, 2, 3}, 200: {0, 1, 2, 3}, 201: {0, 1, 2, 3}}


def test_a_cpu_the_host_lacks_is_logged_and_the_worker_runs_unpinned() -> None:
    system = FakeSystem(error=errno.EINVAL)
    assert system.pinner().pin(0, 100, (64,)) is None


def test_a_worker_gone_already_is_no_error() -> None:
    system = FakeSystem(error=errno.ESRCH)
    assert system.pinner().pin(0, 100, "auto") is None


def test_without_sched_setaffinity_nothing_is_pinned() -> None:
    assert CPUPinner(None, None).pin(0, 100, "auto") is None


def test_process_threads_of_this_process() -> None:
    threads = process_threads(os.getpid())
    assert os.getpid() in threads
    assert process_threads(-1) == [-1]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pinning_a_real_process() -> None:
    import subprocess
    import sys

    available = sorted(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        slot = len(available) + 1  # wraps around
        assert CPUPinner().pin(slot, child.pid, "auto") == {available[slot % len(available)]}
        with open(f"/proc/{child.pid}/status") as status:
            line = next(line for line in status if line.startswith("Cpus_allowed_list:"))
        assert line.split()[1] == str(available[slot % len(available)])
    finally:
        child.communicate(b"")


# -- the config key ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("", "off"),
        ("cpu_affinity: off", "off"),  # YAML 1.1: a boolean
        ('cpu_affinity: "off"', "off"),
        ("cpu_affinity: auto", "auto"),
        ("cpu_affinity: [0, 2, 4]", (0, 2, 4)),
        ("cpu_affinity: [3]", (3,)),
    ],
)
def test_cpu_affinity_values(text: str, value: object) -> None:
    config = parse_config(f"server:\n  {text}\n" if text else "")
    assert config.server.cpu_affinity == value
    assert config_from_mapping(config_to_mapping(config)).server.cpu_affinity == value


@pytest.mark.parametrize(
    "text, message",
    [
        ("cpu_affinity: on", 'server.cpu_affinity: expected "off", "auto" or a list of CPU numbers like [0, 1], got true'),
        ("cpu_affinity: 2", 'server.cpu_affinity: expected "off", "auto" or a list of CPU numbers like [0, 1], got 2'),
        ("cpu_affinity: []", 'server.cpu_affinity: an empty list pins nothing: write "off"'),
        ("cpu_affinity: [0, -1]", "server.cpu_affinity[1]: expected a CPU number >= 0, got -1"),
        ("cpu_affinity: [0, x]", 'server.cpu_affinity[1]: expected a CPU number >= 0, got "x"'),
    ],
)
def test_cpu_affinity_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"server:\n  {text}\n", "speedproxy.yaml")
    assert f"speedproxy.yaml:2: {message}" in str(caught.value)
