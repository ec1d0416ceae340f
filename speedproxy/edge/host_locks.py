"""Bucket locks of the host's edge state file: a stripe of named POSIX semaphores.

A token bucket's set is locked on every rate-limited request; an ``fcntl``
lock costs two system calls a request, a free semaphore none
(``sem_trywait`` and ``sem_post`` are atomic operations in user space; the
kernel is entered only when a process has to wait).  :data:`STRIPES`
semaphores guard the :data:`~speedproxy.edge.host_table.BUCKET_SETS` sets
(set ``i`` takes semaphore ``i % STRIPES``).

The semaphores are named after the state file (a hash of its directory's
real path, its inode number) and a random token, so two speedproxies on a
host never share one and a leftover of a crashed one is never picked up
again.  Whoever first needs them creates them (:func:`create_stripe`) and
writes the name into the file's header; the others open them by that name
(:func:`open_stripe`); :func:`unlink_stripe` removes them when the file's
owner (the master) removes the file.  Making or removing a stripe also
removes the leftovers of files of the same directory that are gone (their
master was killed, or something removed the file alone).

A process killed inside its few microseconds under a semaphore leaves it
taken: a waiter gives up waiting after :data:`TAKE_OVER_AFTER` seconds,
says so once, and goes on as the holder (its release makes the semaphore
free again; the maximum value of 1 keeps a second release from counting).
"""

from __future__ import annotations

import hashlib
import os
from typing import List, Optional, Sequence

from twisted.logger import Logger

try:
    from _multiprocessing import SemLock, sem_unlink
except ImportError:  # pragma: no cover - a build without POSIX semaphores
    SemLock = sem_unlink = None

__all__ = [
    "STRIPES", "TAKE_OVER_AFTER", "create_stripe", "open_stripe", "unlink_stripe", "stripe_prefix", "wait_or_take_over",
]

log = Logger(namespace="speedproxy.edge")

#: Semaphores per state file (a power of two: ``index & (STRIPES - 1)``).
STRIPES = 64
#: Seconds a waiter waits for a semaphore before taking it over: far more
#: than any critical section (microseconds), so only a dead holder costs it.
TAKE_OVER_AFTER = 0.5

_SEMAPHORE = 1  # multiprocessing.synchronize.SEMAPHORE (no owner: any process may release)
#: Where glibc keeps named semaphores (``sem.<name>``): swept of leftovers.
SHM_DIR = "/dev/shm"

_taken_over = False


def stripe_prefix(path: str) -> str:
    """The part of the semaphore names that the stripes of every file in ``path``'s directory share."""
    directory = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    tag = hashlib.blake2b(directory.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
    return f"/speedproxy-edge-{tag}-"


def _names(name: str) -> List[str]:
    return [f"{name}-{i}" for i in range(STRIPES)]


def create_stripe(path: str, inode: int) -> Optional[str]:
    """Create the stripe of the state file ``path`` (whose inode number is
    ``inode``); its name, or ``None`` where named semaphores are unavailable
    (logged: the caller falls back to ``fcntl``).
    """
    if SemLock is None:
        log.warn("named semaphores are unavailable (no _multiprocessing): edge bucket locks use fcntl")
        return None
    _sweep(path, inode)  # (a stripe naming this file's inode is a gone file's: this one has none yet)
    name = f"{stripe_prefix(path)}{inode:x}-{os.urandom(4).hex()}"
    made: List[str] = []
    try:
        for each in _names(name):
            try:
                SemLock(_SEMAPHORE, 1, 1, each, False)
            except FileExistsError:  # not ours (a token drawn twice): start it afresh
                sem_unlink(each)
                SemLock(_SEMAPHORE, 1, 1, each, False)
            made.append(each)
    except OSError as e:
        for each in made:
            _unlink(each)
        log.warn("cannot create named semaphores ({error}): edge bucket locks use fcntl", error=e)
        return None
    return name


def open_stripe(name: str) -> List[object]:
    """The semaphores of the stripe ``name`` (made by :func:`create_stripe`), opened by name."""
    if SemLock is None:
        raise OSError(f"edge state bucket locks are named semaphores ({name}) but _multiprocessing is unavailable")
    return [SemLock._rebuild(0, _SEMAPHORE, 1, each) for each in _names(name)]


def unlink_stripe(name: Optional[str], path: Optional[str] = None) -> None:
    """Remove the stripe ``name`` (and those of gone files of ``path``'s directory)."""
    if name:
        for each in _names(name):
            _unlink(each)
    if path is not None:
        _sweep(path, None)


def _unlink(name: str) -> None:
    if sem_unlink is None:
        return
    try:
        sem_unlink(name)
    except OSError:
        pass


def _sweep(path: str, inode: Optional[int]) -> None:
    """Unlink the stripes of ``path``'s directory whose file is gone (or is
    ``inode``), where semaphores can be listed."""
    start = "sem." + stripe_prefix(path)[1:]
    try:
        found: Sequence[str] = [entry for entry in os.listdir(SHM_DIR) if entry.startswith(start)]
        if not found:
            return
        with os.scandir(os.path.dirname(os.path.abspath(path))) as entries:
            live = {entry.inode() for entry in entries}
    except OSError:
        return
    live.discard(inode)
    for entry in found:
        try:
            owner = int(entry[len(start):].split("-", 1)[0], 16)
        except ValueError:
            continue
        if owner not in live:
            _unlink("/" + entry[4:])


def wait_or_take_over(semaphore: object) -> None:
    """Wait for a taken semaphore; past :data:`TAKE_OVER_AFTER`, go on as its holder."""
    global _taken_over
    if semaphore.acquire(True, TAKE_OVER_AFTER):  # type: ignore[attr-defined]
        return
    if not _taken_over:
        _taken_over = True
        log.warn(
            "an edge bucket lock was held for over {seconds}s (its holder died holding it?): taken over "
            "(said once per process)",
            seconds=TAKE_OVER_AFTER,
        )
