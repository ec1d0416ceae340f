"""Which worker fetches a key: coalescing across the workers of a host.

Each worker coalesces its own requests (:mod:`speedproxy.cache.fill`); with a
disk tier, the workers also agree that only one of them asks the origin for
a key.  The agreement is a byte-range lock (``fcntl``) in a lock file beside
the disk tier, one byte per slot of a hash of the key: the kernel drops a
worker's locks when it dies, so a crashed leader never leaves a key stuck.
The other workers wait for the object to appear on the disk tier (or for
the lock, when the leader's response was not stored) and serve it from there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from typing import Dict, Optional

#: Lock slots: distinct keys share a slot with probability 1/SLOTS.
SLOTS = 1 << 20


class FillLocks:
    """Per-key locks shared by the processes that open the same ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._held: Dict[int, int] = {}
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            self._fd = None  # no cross-worker coalescing; each worker fetches

    @staticmethod
    def slot(key: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % SLOTS

    def acquire(self, key: bytes) -> bool:
        """Take the lock of ``key`` without waiting; False when another process has it."""
        fd = self._fd
        if fd is None:
            return True
        slot = self.slot(key)
        held = self._held.get(slot)
        if held:
            self._held[slot] = held + 1
            return True
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
        except OSError:
            return False
        self._held[slot] = 1
        return True

    def release(self, key: bytes) -> None:
        fd = self._fd
        if fd is None:
            return
        slot = self.slot(key)
        held = self._held.get(slot, 0)
        if held > 1:
            self._held[slot] = held - 1
            return
        if held == 1:
            del self._held[slot]
            try:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, slot)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._held.clear()
