"""The host's edge state file: its layout, its locks and the hashing of keys.

The file lives beside the stats segment (``<stats segment>.edge``, under
``/dev/shm`` normally); every process of one speedproxy (the master for the
admin API, each worker for its filters) maps it.  It holds three regions of
fixed-size records found by hashing, and no names: token buckets and
sessions (:mod:`speedproxy.edge.host_state`) and per-worker connection
counts (:mod:`speedproxy.edge.host_counts`).  It is sparse: a page of it
takes memory once a record in it is used (38 MiB at most).

Locks are ``fcntl`` byte-range locks on the file (the kernel drops a dead
process's locks); the locked bytes are lock names, not the records.  The
bucket sets, locked on every rate-limited request, are locked with named
semaphores instead (:mod:`speedproxy.edge.host_locks`: no system call when
free), whose name the header keeps.  A private table (``path=None``, one
process) takes no locks.  :func:`remove_edge_state` removes a file and its
semaphores.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import struct
from typing import Dict, Optional, Sequence

from speedproxy.edge.host_locks import create_stripe, open_stripe, unlink_stripe

MAGIC = 0x5350_4544_4745_3031  # "SPEDGE01"
VERSION = 1
HEADER = 4096

#: Bucket key hashes remembered per process.
HASH_MEMO = 8192

#: Records per set (buckets, connection counts).
WAYS = 8
BUCKET_SETS = 8192
BUCKET = struct.Struct("<Qddd")  # key hash, tokens, stamp, full_at
BUCKET_SET = struct.Struct("<" + "Qddd" * WAYS)

SESSION_WAYS = 16
SESSION_SETS = 4096
#: random part, reuse tag (:func:`reuse_tag`), client address (16 bytes),
#: created, expires, state, realm tag (:func:`realm_tag`).
SESSION = struct.Struct("<12s4s16sddQ8s")
SESSION_LIVE, SESSION_REVOKED = 1, 2

#: Worker slots with a connection-count table each.
CONN_TABLES = 128
CONN_SETS = 2048  # x WAYS records a table
CONN = struct.Struct("<qq")  # key hash, requests in flight
CONN_SET = struct.Struct("<" + "qq" * WAYS)
CONN_LOCKS = 4096

BUCKETS_AT = HEADER
SESSIONS_AT = BUCKETS_AT + BUCKET_SETS * WAYS * BUCKET.size
CONNS_AT = SESSIONS_AT + SESSION_SETS * SESSION_WAYS * SESSION.size
CONN_TABLE_SIZE = CONN_SETS * WAYS * CONN.size
SIZE = CONNS_AT + CONN_TABLES * CONN_TABLE_SIZE

# Lock names (byte offsets locked; not the records' offsets).
LOCK_INIT = 0
LOCK_BUCKETS = 1
LOCK_SESSIONS = LOCK_BUCKETS + BUCKET_SETS
LOCK_CONNS = LOCK_SESSIONS + SESSION_SETS
LOCK_REGISTER = LOCK_CONNS + CONN_LOCKS

# Header words: magic, version, size, then the registered worker slots (bitmap).
HEADER_WORDS = struct.Struct("<QQQ")
WORKERS_AT = 64
WORKERS = struct.Struct("<QQ")  # 128 bits
#: The bucket locks: the name of their semaphores, ``fcntl`` (none could be
#: made), or nothing yet (the first process to take from a bucket decides).
LOCKS_AT = 128
LOCKS = struct.Struct("<64s")
FCNTL_LOCKS = b"fcntl"


def key_hash(key: bytes) -> int:
    """A non-zero 63-bit hash of a key (0 marks a free record)."""
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    return value or 1


def realm_tag(realm: str) -> bytes:
    """The 8 bytes a session record keeps of its realm (never all zero: a
    record written before realms were kept matches no realm)."""
    tag = hashlib.blake2b(realm.encode("utf-8"), digest_size=8, person=b"spx-realm").digest()
    return tag if any(tag) else b"\0" * 7 + b"\1"


def reuse_tag(realm: str, reuse: bytes) -> bytes:
    """The 4 bytes a session record keeps of what it may be reused for (zero: nothing)."""
    if not reuse:
        return b"\0" * 4
    tag = hashlib.blake2b(realm.encode("utf-8") + b"\0" + reuse, digest_size=4, person=b"spx-reuse").digest()
    return tag if any(tag) else b"\0\0\0\1"


def remember(hashes: Dict[bytes, int], key: bytes) -> int:
    """Hash ``key`` into the bounded memo ``hashes``."""
    if len(hashes) >= HASH_MEMO:
        hashes.clear()
    hashes[key] = value = key_hash(key)
    return value


def client_bytes(client: str) -> bytes:
    """A client address as 16 bytes (IPv4 mapped into IPv6; else a hash)."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return hashlib.blake2b(client.encode("utf-8", "replace"), digest_size=16).digest()
    if address.version == 4:
        return b"\0" * 10 + b"\xff\xff" + address.packed
    return address.packed


def client_text(raw: bytes) -> str:
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped if mapped is not None else address)


def edge_state_path(stats_path: str) -> str:
    """The edge state file of the speedproxy whose stats segment is ``stats_path``."""
    return stats_path + ".edge"


class EdgeTable:
    """The mapped file (or a private anonymous map) and its locks."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.fd: Optional[int] = None
        #: The bucket sets' semaphores (:meth:`open_bucket_locks`; empty: ``fcntl``
        #: locks, or none for a private table; ``None``: not known yet).
        self.bucket_locks: Optional[Sequence[object]] = None if path is not None else ()
        if path is None:
            self.map = mmap.mmap(-1, SIZE)
            HEADER_WORDS.pack_into(self.map, 0, MAGIC, VERSION, SIZE)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, LOCK_INIT)
            try:
                if os.fstat(fd).st_size == 0:
                    os.ftruncate(fd, SIZE)  # sparse: pages appear as they are used
                    self.map = mmap.mmap(fd, SIZE)
                    HEADER_WORDS.pack_into(self.map, 0, MAGIC, VERSION, SIZE)
                else:
                    if os.fstat(fd).st_size != SIZE:
                        raise ValueError(f"{path} is not a speedproxy edge state file of version {VERSION}")
                    self.map = mmap.mmap(fd, SIZE)
                    magic, version, size = HEADER_WORDS.unpack_from(self.map, 0)
                    if (magic, version, size) != (MAGIC, VERSION, SIZE):
                        self.map.close()
                        raise ValueError(f"{path} is not a speedproxy edge state file of version {VERSION}")
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, LOCK_INIT)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def lock(self, name: int, shared: bool = False) -> None:
        # (HostEdgeState.take spells the bucket locks out: keep them alike.)
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, 1, name)

    def unlock(self, name: int) -> None:
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, name)

    def open_bucket_locks(self) -> Sequence[object]:
        """The bucket sets' semaphores, made if this is the first process to
        need them (empty: every process of the file uses ``fcntl`` locks)."""
        assert self.fd is not None and self.path is not None
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, LOCK_INIT)
        try:
            name = LOCKS.unpack_from(self.map, LOCKS_AT)[0].rstrip(b"\0")
            if not name:
                made = create_stripe(self.path, os.fstat(self.fd).st_ino)
                name = made.encode("ascii") if made else FCNTL_LOCKS
                LOCKS.pack_into(self.map, LOCKS_AT, name)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, LOCK_INIT)
        if name == FCNTL_LOCKS:
            self.bucket_locks = ()
        else:
            try:
                self.bucket_locks = open_stripe(name.decode("ascii"))
            except OSError as e:  # removed under the live processes: they would not exclude a new stripe
                stripe = name.decode("ascii", "replace")
                raise OSError(f"{self.path}: cannot open the bucket locks {stripe}: {e}") from e
        return self.bucket_locks

    def close(self) -> None:
        self.map.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def remove_edge_state(path: str) -> None:
    """Remove the edge state file ``path`` and its bucket locks (its owner stops)."""
    name = None
    try:
        with open(path, "rb") as file:
            file.seek(LOCKS_AT)
            raw = file.read(LOCKS.size).rstrip(b"\0")
        if raw and raw != FCNTL_LOCKS:
            name = raw.decode("ascii", "replace")
    except OSError:
        pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    unlink_stripe(name, path)
