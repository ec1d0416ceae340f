"""CPU, memory and file descriptors of processes, from ``/proc``.

The one reader of ``/proc`` in the tree: the admin API (the master and its
workers), the test harness (a proxy's process tree) and ``bench/`` (CPU
per request) use it.  Linux only; elsewhere every figure is ``None``.  CPU
percent is measured over a short window (two readings ``interval`` seconds
apart), 100 meaning one core fully busy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, NamedTuple, Optional

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred

try:
    CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
    PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
    CLOCK_TICKS, PAGE_SIZE = 100, 4096


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.read()
    except OSError:
        return None


class Stat(NamedTuple):
    """What ``/proc/<pid>/stat`` says of one process."""

    state: str
    ppid: int
    #: utime + stime, in clock ticks.
    ticks: int
    #: cutime + cstime: children that exited and were waited for.
    children_ticks: int
    threads: int
    rss_bytes: int


def read_stat(pid: int, proc: str = "/proc") -> Optional[Stat]:
    """``/proc/<pid>/stat`` parsed, or ``None`` (gone, unreadable, not Linux)."""
    stat = _read(f"{proc}/{pid}/stat")
    if stat is None or ")" not in stat:
        return None
    # After the command name (which may hold spaces and parentheses): field
    # N of proc(5) is fields[N - 3].
    fields = stat.rsplit(")", 1)[1].split()
    try:
        return Stat(
            fields[0],
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]),
            int(fields[17]),
            int(fields[21]) * PAGE_SIZE,
        )
    except (IndexError, ValueError):
        return None


def process_tree(root: int, proc: str = "/proc") -> Dict[int, Stat]:
    """``root`` and its live (not zombie) descendants, each with its :class:`Stat`."""
    stats: Dict[int, Stat] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        return stats
    for entry in entries:
        if entry.isdigit():
            found = read_stat(int(entry), proc)
            if found is not None and found.state not in ("Z", "X"):
                stats[int(entry)] = found
    children: Dict[int, List[int]] = {}
    for pid, found in stats.items():
        children.setdefault(found.ppid, []).append(pid)
    tree: Dict[int, Stat] = {}
    todo = [root]
    while todo:
        pid = todo.pop(0)
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid]
            todo.extend(sorted(children.get(pid, ())))
    return tree


def rss_bytes(pid: int, proc: str = "/proc") -> Optional[int]:
    """Resident set size (``VmRSS``) of one process, or ``None``."""
    for line in (_read(f"{proc}/{pid}/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def read_process(pid: int, proc: str = "/proc") -> Dict[str, Any]:
    """One reading of process ``pid``: cpu seconds, threads, RSS, open fds."""
    row: Dict[str, Any] = {
        "pid": pid,
        "alive": False,
        "cpu_seconds": None,
        "threads": None,
        "rss_bytes": None,
        "rss_peak_bytes": None,
        "open_fds": None,
        "max_fds": None,
    }
    stat = read_stat(pid, proc)
    if stat is None:
        return row
    row["alive"] = stat.state not in ("Z", "X")
    row["cpu_seconds"] = round(stat.ticks / CLOCK_TICKS, 3)
    row["threads"] = stat.threads
    row["rss_bytes"] = stat.rss_bytes
    status = _read(f"{proc}/{pid}/status") or ""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            row["rss_bytes"] = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            row["rss_peak_bytes"] = int(line.split()[1]) * 1024
    try:
        row["open_fds"] = len(os.listdir(f"{proc}/{pid}/fd"))
    except OSError:
        pass
    limits = _read(f"{proc}/{pid}/limits") or ""
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            row["max_fds"] = None if soft == "unlimited" else int(soft)
    return row


def usage_now(processes: Iterable[Mapping[str, Any]], proc: str = "/proc") -> List[Dict[str, Any]]:
    """One reading per process row (``role``, ``slot``, ``pid``)."""
    rows = []
    for process in processes:
        row = dict(process)
        row.update(read_process(int(process["pid"]), proc))
        rows.append(row)
    return rows


def resource_usage(
    clock: Any, processes: List[Mapping[str, Any]], interval: float = 0.25, proc: str = "/proc"
) -> "Deferred":
    """Readings of ``processes`` with ``cpu_percent`` over ``interval`` seconds.

    Fires with ``{"processes": [...], "total": {...}, "interval_seconds": ...}``.
    """
    from twisted.internet.task import deferLater

    first = {row["pid"]: row for row in usage_now(processes, proc)}
    started = clock.seconds()

    def second() -> Dict[str, Any]:
        elapsed = max(clock.seconds() - started, 1e-6)
        rows = usage_now(processes, proc)
        for row in rows:
            before = first.get(row["pid"], {}).get("cpu_seconds")
            if row["cpu_seconds"] is not None and before is not None:
                row["cpu_percent"] = round(max(row["cpu_seconds"] - before, 0.0) / elapsed * 100.0, 1)
            else:
                row["cpu_percent"] = None
        total: Dict[str, Any] = {"processes": len(rows)}
        for key in ("cpu_percent", "cpu_seconds", "rss_bytes", "open_fds", "threads"):
            values = [row[key] for row in rows if row.get(key) is not None]
            total[key] = round(sum(values), 3) if values else None
        return {"interval_seconds": round(elapsed, 3), "processes": rows, "total": total}

    return deferLater(clock, interval, second)
