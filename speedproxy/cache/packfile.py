"""On-disk record format of the disk cache, and the files around it.

A *record* is one cached object::

    header (28 bytes) | key | variant | meta | body

    header = magic "SPK1", flags u8, reserved u8, key length u16,
             variant length u16, reserved u16, meta length u32,
             body length u64, crc32(key + variant + meta + body) u32
             (little endian)

Small records are appended to *pack files* shared by many objects; a large
object is one record alone in its own file.  Records are never rewritten in
place: a file only grows (by its owner) until it is sealed, and is later
deleted whole.  The index (``disk_index``) only points at records that were
fsync'ed before the index row was committed.

Files are named ``packs/<owner token>-<n>.pack`` (shared) and
``packs/<owner token>-<n>.obj`` (one large object).  Every store instance
holds an exclusive ``flock`` on ``owners/<token>.lock`` for as long as it is
open; the lock disappears with the process (``kill -9`` included), which is
how the others know that the files of that token are no longer being
written.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import zlib
from typing import Dict, Iterator, List, Optional, Tuple

MAGIC = b"SPK1"
HEADER = struct.Struct("<4sBBHHHIQI")
HEADER_SIZE = HEADER.size  # 28
MAX_KEY = 0xFFFF

PACKS_DIR = "packs"
OWNERS_DIR = "owners"
PACK_SUFFIX = ".pack"
LARGE_SUFFIX = ".obj"

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: ``OSError.errno`` values that mean "this disk cannot take more data now":
#: storing stops (and is retried later) instead of raising.
FULL_ERRNOS = frozenset(
    code
    for code in (
        errno.ENOSPC,
        getattr(errno, "EDQUOT", None),
        errno.EFBIG,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.ENOENT,
        errno.EMFILE,
        errno.ENFILE,
    )
    if code is not None
)


def record_crc(key: bytes, variant: bytes, meta: bytes, body: bytes = b"") -> int:
    return zlib.crc32(body, zlib.crc32(meta, zlib.crc32(variant, zlib.crc32(key))))


def encode_header(klen: int, vlen: int, mlen: int, blen: int, crc: int) -> bytes:
    return HEADER.pack(MAGIC, 0, 0, klen, vlen, 0, mlen, blen, crc)


def encode_record(key: bytes, variant: bytes, meta: bytes, body: bytes) -> Tuple[bytes, int]:
    """The bytes of one record and its crc."""
    crc = record_crc(key, variant, meta, body)
    head = encode_header(len(key), len(variant), len(meta), len(body), crc)
    return b"".join((head, key, variant, meta, body)), crc


def check_header(
    data: bytes, key: bytes, variant: bytes, mlen: int, blen: int, crc: int
) -> bool:
    """Whether ``data`` starts with the header, key and variant the index expects."""
    klen = len(key)
    vlen = len(variant)
    if len(data) < HEADER_SIZE + klen + vlen:
        return False
    magic, _f, _r, hk, hv, _r2, hm, hb, hc = HEADER.unpack_from(data)
    if magic != MAGIC or hk != klen or hv != vlen or hm != mlen or hb != blen or hc != crc:
        return False
    start = HEADER_SIZE
    return data[start : start + klen] == key and data[start + klen : start + klen + vlen] == variant


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - pwrite raises instead
            raise OSError(errno.EIO, "short write")
        view = view[written:]
        offset += written


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def datasync(fd: int) -> None:
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_read(path: str) -> int:
    return os.open(path, os.O_RDONLY | _O_CLOEXEC)


def create_file(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)


def file_crc(fd: int, offset: int, length: int, chunk: int = 1 << 20) -> Optional[int]:
    """crc32 of ``length`` bytes at ``offset``; None when the file is short."""
    crc = 0
    while length > 0:
        data = os.pread(fd, min(chunk, length), offset)
        if not data:
            return None
        crc = zlib.crc32(data, crc)
        offset += len(data)
        length -= len(data)
    return crc


def owner_of(name: str) -> str:
    """The owner token of a pack file name (``<token>-<n>.<ext>``)."""
    return name.split("-", 1)[0]


def list_pack_files(packs_dir: str) -> Iterator[str]:
    try:
        names = os.listdir(packs_dir)
    except OSError:
        return iter(())
    return (n for n in names if n.endswith(PACK_SUFFIX) or n.endswith(LARGE_SUFFIX))


class OwnerLock:
    """The exclusive lock that says "token ``token`` is alive"."""

    def __init__(self, owners_dir: str, token: str) -> None:
        self.path = os.path.join(owners_dir, token + ".lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


def claim_dead_owner(owners_dir: str, token: str) -> Optional[int]:
    """Lock the lock file of ``token`` if its owner is dead.

    Returns the fd holding the lock (release with :func:`drop_owner`), or
    None when the owner is alive or its lock file is gone.
    """
    path = os.path.join(owners_dir, token + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def drop_owner(owners_dir: str, token: str, fd: int) -> None:
    try:
        os.unlink(os.path.join(owners_dir, token + ".lock"))
    except OSError:
        pass
    os.close(fd)


def owner_lock_exists(owners_dir: str, token: str) -> bool:
    return os.path.exists(os.path.join(owners_dir, token + ".lock"))


def live_owners(owners_dir: str, exclude: str = "") -> bool:
    """Whether any other store instance holds its owner lock."""
    try:
        names = os.listdir(owners_dir)
    except OSError:
        return False
    for name in names:
        if not name.endswith(".lock"):
            continue
        token = name[: -len(".lock")]
        if token == exclude:
            continue
        path = os.path.join(owners_dir, name)
        try:
            fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


class FileLock:
    """A ``flock`` on a small file (``store.lock``, ``maint.lock``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def acquire(self, blocking: bool = True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError:
            os.close(fd)
            if blocking:
                raise
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PackFile:
    """A data file this process writes (or wrote) to."""

    __slots__ = ("id", "name", "path", "fd", "end", "pending", "large")

    def __init__(self, name: str, path: str, fd: int, large: bool) -> None:
        self.id: Optional[int] = None  # in the index, once committed
        self.name = name
        self.path = path
        self.fd = fd
        self.end = 0  # committed
        self.pending = 0  # written or placed, not yet committed
        self.large = large

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def new_file(packs_dir: str, token: str, number: int, large: bool) -> PackFile:
    name = "%s-%d%s" % (token, number, LARGE_SUFFIX if large else PACK_SUFFIX)
    path = os.path.join(packs_dir, name)
    return PackFile(name, path, create_file(path), large)


class Batch:
    """Records placed in pack files, to be written, fsync'ed, then indexed."""

    def __init__(self) -> None:
        self.chunks: Dict[PackFile, List[bytes]] = {}
        self.created: List[PackFile] = []
        self.large: List[PackFile] = []

    def add(self, pack: PackFile, data: bytes) -> None:
        self.chunks.setdefault(pack, []).append(data)
