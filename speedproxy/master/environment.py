"""The environment the master starts workers with, and the master's own allocator settings."""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

#: PyPy sizes its GC nursery at half the CPU's last-level cache.  Some
#: virtual CPUs report hundreds of MiB of L3 (480 MiB on the benchmark VM),
#: and every worker then holds that much nursery: 330 MiB RSS before the
#: first request.  Measured on that VM (bench/RESULTS.md), a 64 MiB nursery
#: costs no CPU per request and halves the RSS; below ~16 MiB the 99th
#: percentile latency grows.  Workers get this cap unless the operator set
#: ``PYPY_GC_NURSERY`` or the cache is small enough anyway.
MAX_PYPY_NURSERY = 64 * 2**20

_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def last_level_cache(directory: str = "/sys/devices/system/cpu/cpu0/cache") -> Optional[int]:
    """Size in bytes of the CPU's last-level cache, from sysfs; ``None`` if unknown."""
    best: Optional[tuple] = None
    try:
        entries = os.listdir(directory)
    except OSError:
        return None
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(os.path.join(directory, entry, "level"), encoding="ascii") as handle:
                level = int(handle.read().strip())
            with open(os.path.join(directory, entry, "size"), encoding="ascii") as handle:
                text = handle.read().strip()
        except (OSError, ValueError):
            continue
        size = _parse_size(text)
        if size is not None and (best is None or (level, size) > best):
            best = (level, size)
    return best[1] if best else None


def _parse_size(text: str) -> Optional[int]:
    """``491520K`` → bytes."""
    unit = _UNITS.get(text[-1:].upper())
    number = text[:-1] if unit else text
    try:
        return int(number) * (unit or 1)
    except ValueError:
        return None


def worker_environment(
    environ: Mapping[str, str], pypy: bool, cache_bytes: Optional[int]
) -> Dict[str, str]:
    """The master's environment, plus a capped GC nursery for PyPy workers."""
    env = dict(environ)
    if pypy and "PYPY_GC_NURSERY" not in env and cache_bytes and cache_bytes // 2 > MAX_PYPY_NURSERY:
        env["PYPY_GC_NURSERY"] = "%dMB" % (MAX_PYPY_NURSERY // 2**20)
    return env


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim_threshold: int = 32 * 2**20, mmap_threshold: int = 4 * 2**20) -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (the master only).

    The master relays the workers' access log in batches of up to a few
    hundred KiB (:mod:`speedproxy.master.access_relay`).  With glibc's
    defaults each batch's buffers are mapped and unmapped again (or the
    heap trimmed), about 2,500 page faults a second at 12,000 requests a
    second: most of the master's CPU for the access log.  Returns whether
    the allocator took the settings (not glibc, or no ``ctypes``: no).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
