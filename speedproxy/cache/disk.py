"""The disk tier of the cache: one directory shared by the workers of a host.

Layout of ``disk_path``::

    index.db (+ -wal, -shm)   SQLite index, see ``disk_index``
    packs/<token>-<n>.pack    small records appended together (``packfile``)
    packs/<token>-<n>.obj     one large record
    owners/<token>.lock       flock'ed while the store ``<token>`` is open
    store.lock, maint.lock    open / maintenance serialisation

Guarantees:

* **No torn or mixed object is ever returned.**  Data is written and
  fsync'ed before the index row that points at it is committed, records are
  never rewritten in place, and every read is checked: packed objects
  (below ``pack_threshold``) against their crc32 on each read (objects over
  32 KiB once per process), large objects by size and header on each read
  and by a full crc32 once per *generation* (a new generation starts when a
  store opens while no other is open, i.e. after a restart or a crash of all
  workers).  A record that fails a check is dropped from the index and
  ``get`` answers None, so the object is fetched again.
* **Crashes**: ``kill -9`` of any process, or a power cut, loses at most the
  objects not yet committed (and, with ``synchronous=NORMAL``, the last
  commits before a power cut); nothing needs repairing on open.  Files of a
  dead store are sealed, truncated to what was indexed, and files nobody
  indexed are deleted by the next sweep.
* **Bounded** by ``max_size`` bytes of data files (the index itself is not
  counted): eviction in the background brings them under 90 % of it, CLOCK
  (approximate LRU) at pack granularity, objects read since they were stored
  being copied forward once instead of evicted.
* **Never raises into the data path**: an unwritable directory, a full disk
  (ENOSPC, EDQUOT, EFBIG...) or a broken index stops storing (one log line,
  :attr:`DiskStore.storing` False, ``info()["errors"]``) and storing is tried
  again after ``retry_after`` seconds or as soon as eviction freed space;
  lookups answer None when the index cannot be read.

Threads: ``get``, ``variants``, ``put``, ``begin`` are for the caller's
(reactor) thread and do no fsync and no write transaction; ``delete*``,
``clear``, ``keys``, ``search`` and ``info`` run a short SQL statement or
transaction on the caller's thread (admin calls).  Everything else runs on
one background thread per store (``disk_background``).  Open the store after
forking, never before.
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
import sqlite3
import threading
import time
import zlib
from typing import Callable, Dict, List, Optional, Set, Tuple

from speedproxy.cache import disk_index as ix
from speedproxy.cache.disk_admin import DiskAdmin
from speedproxy.cache.disk_background import DROP, FLUSH, NOTIFY, PUT, STOP, Background
from speedproxy.cache.disk_entry import DiskEntry, Writer
from speedproxy.cache.packfile import (
    FULL_ERRNOS,
    HEADER_SIZE,
    MAX_KEY,
    OWNERS_DIR,
    PACKS_DIR,
    FileLock,
    OwnerLock,
    PackFile,
    check_header,
    encode_header,
    live_owners,
    new_file,
    open_read,
)

__all__ = ["DiskEntry", "DiskStore", "Writer"]

MiB = 1 << 20
KiB = 1 << 10
VERIFY_ALWAYS_BELOW = 32 * 1024  # packed objects this small: crc on every read
SPLIT_READ_ABOVE = 16 * 1024  # packed bodies this big: read apart from the head
SENDFILE_ABOVE = 32 * 1024  # packed bodies this big, once verified: sent with sendfile(2)
_TOUCH_MAX = 100_000
_FD_CACHE_MAX = 512


def _default_log(message: str) -> None:
    from twisted.logger import Logger

    Logger(namespace="speedproxy.cache.disk").warn("{message}", message=message)


class DiskStore(DiskAdmin):
    """The disk cache of one host; every worker opens its own ``DiskStore(path)``.

    ``path``: the cache directory (local file system: ``flock`` must work),
    created if needed.  ``max_size``: bytes of data files to stay under.
    ``pack_threshold``: records (header, key, variant, meta, body) smaller
    than this are packed together, bigger ones get a file each.
    ``pack_size``: size at which a pack is sealed (default ``max_size / 16``
    within 256 KiB..64 MiB: the granularity of eviction).
    ``max_object_size``: bigger objects are not stored (default
    ``max_size / 4``).  ``max_pending``/``queue_size``: bounds of the write
    queue.  ``retry_after``: seconds before storing is tried again after a
    full disk.  ``busy_timeout``: how long a write waits for SQLite's lock.
    ``log``: called with one line per problem, possibly from the background
    thread (the default logs through ``twisted.logger``; pass a function that
    hops to the reactor thread if your observers need it).  ``clock``:
    monotonic seconds, for tests.

    ``put``/``Writer.commit`` are asynchronous: the object becomes visible to
    ``get`` (in every process) when the background thread has written,
    fsync'ed and indexed it, normally within milliseconds; :meth:`flush`
    waits for that.  When the queue is full (``max_pending`` bytes or
    ``queue_size`` items), the object is not stored (``info()["dropped"]``).
    A ``get`` right after a ``put`` of the same key may thus miss: the
    memory tier in front is what serves an object just fetched.
    """

    def __init__(
        self,
        path: str,
        max_size: int,
        *,
        pack_threshold: int = MiB,
        pack_size: Optional[int] = None,
        max_object_size: Optional[int] = None,
        max_pending: int = 64 * MiB,
        queue_size: int = 4096,
        retry_after: float = 60.0,
        busy_timeout: float = 5.0,
        log: Callable[[str], None] = _default_log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.path.abspath(path)
        self.max_size = int(max_size)
        self.low_water = int(self.max_size * 0.9)
        self.pack_threshold = pack_threshold
        self.pack_size = pack_size or min(64 * MiB, max(256 * 1024, self.max_size // 16))
        self.max_object_size = max_object_size or max(1, self.max_size // 4)
        self.max_pending = max_pending
        self.queue_size = queue_size
        self.retry_after = retry_after
        self.busy_timeout = busy_timeout
        self.log = log
        self.clock = clock
        self.db_path = os.path.join(self.path, "index.db")
        self.packs_dir = os.path.join(self.path, PACKS_DIR)
        self.owners_dir = os.path.join(self.path, OWNERS_DIR)
        self.maint_lock_path = os.path.join(self.path, "maint.lock")
        self.store_lock_path = os.path.join(self.path, "store.lock")
        self.token = os.urandom(6).hex()
        self.generation = 0
        self.evictions = 0  # by this process; info() has the total
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.dropped = 0
        self.stored = 0
        self._corrupt = 0
        self._names = itertools.count()
        self._open = False
        self._closed = False
        self._storing = False
        self._retry_at = 0.0
        self._last_error = ""
        self._logged = ""
        self._logged_at = 0.0
        self._owner: Optional[OwnerLock] = None
        self._bg: Optional[Background] = None
        self._local = threading.local()
        self._conns: List[sqlite3.Connection] = []
        self._init_admin()
        self._fds: Dict[int, int] = {}
        self._names_by_id: Dict[int, str] = {}
        self._fd_lock = threading.Lock()
        self._touched: Dict[Tuple[bytes, bytes], int] = {}
        self._touch_lock = threading.Lock()
        self._verified: Set[Tuple[int, int]] = set()
        self._pending = 0
        #: Purges so far, and the recent ones (see DiskAdmin.purged_since).
        self.purge_epoch = 0
        self._purges: "collections.deque" = collections.deque(maxlen=4096)
        self._pending_lock = threading.Lock()

    # -- life cycle ------------------------------------------------------------

    def open(self) -> bool:
        """Open (creating the directory if needed); False if it cannot be used.

        A store that cannot be opened answers every ``get`` with None and
        stores nothing; ``put`` tries to open it again every ``retry_after``.
        """
        if self._open or self._closed:
            return self._open
        try:
            self._open_files()
        except (OSError, sqlite3.Error) as exc:
            self._release_files()
            self._failed(exc, "open")
            return False
        self._open = True
        self._storing = True
        bg = self._bg = Background(self, self.queue_size)
        bg.start()
        return True

    def _open_files(self) -> None:
        os.makedirs(self.packs_dir, exist_ok=True)
        os.makedirs(self.owners_dir, exist_ok=True)
        lock = FileLock(self.store_lock_path)
        lock.acquire()
        try:
            conn: Optional[sqlite3.Connection] = None
            try:
                conn = ix.connect(self.db_path, self.busy_timeout)
                ix.setup(conn)
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                if isinstance(exc, sqlite3.OperationalError):
                    raise
                # Not a database (any more): start an empty index; the old
                # files, indexed by nobody, go with the next sweep.
                self._failed(exc, "index unusable, starting an empty one")
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.unlink(self.db_path + suffix)
                    except FileNotFoundError:
                        pass
                conn = ix.connect(self.db_path, self.busy_timeout)
                ix.setup(conn)
            try:
                alone = not live_owners(self.owners_dir, exclude=self.token)
                self._owner = OwnerLock(self.owners_dir, self.token)
                if alone:
                    with ix.Transaction(conn):
                        ix.add_meta(conn, "generation", 1)
                self.generation = ix.get_meta(conn, "generation")
            finally:
                conn.close()
        finally:
            lock.release()

    def _release_files(self) -> None:
        if self._owner is not None:
            self._owner.release()
            self._owner = None

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, seal this store's pack, release everything."""
        if self._closed:
            return
        self._closed = True
        self._storing = False
        bg, self._bg = self._bg, None
        if bg is not None:
            try:
                bg.queue.put((STOP,), timeout=timeout)
            except Exception:
                pass
            bg.join(timeout)
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        for conn in self._conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._conns = []
        self._local = threading.local()
        self._release_files()
        self._open = False

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued before is committed and maintenance ran.

        Also flushes recorded hits, sweeps and evicts down to the low
        watermark.  Returns False on timeout or when the store is not open.
        Blocks: for tests, tools and shutdown, not for the reactor thread.
        """
        bg = self._bg
        if bg is None or not bg.is_alive():
            return False
        event = threading.Event()
        try:
            bg.queue.put((FLUSH, event), timeout=timeout)
        except Exception:
            return False
        return event.wait(timeout)

    def when_committed(self, callback: Callable[[], None]) -> bool:
        """Call ``callback()`` (from the background thread) once everything
        queued before is committed; False (and no call) when that cannot be
        asked.  Never blocks: the reactor thread passes a callback that
        hands over with ``reactor.callFromThread``."""
        bg = self._bg
        if bg is None or not bg.is_alive():
            return False

        try:
            bg.queue.put_nowait((NOTIFY, callback))
        except Exception:
            return False
        return True

    # -- state -----------------------------------------------------------------

    @property
    def storing(self) -> bool:
        """Whether new objects are being stored (False after a write error)."""
        if self._storing or self._closed:
            return self._storing
        if self.clock() >= self._retry_at:
            if not self._open:
                return self.open()
            self._storing = True
        return self._storing

    def _failed(self, exc: BaseException, where: str) -> None:
        """Something failed: count it, log it once, stop storing for a while
        when it says that the disk cannot take more (full, read-only...)."""
        self.errors += 1
        message = "disk cache %s: %s: %s" % (self.path, where, exc)
        self._last_error = message
        stop = where == "open" or (isinstance(exc, OSError) and exc.errno in FULL_ERRNOS)
        if isinstance(exc, sqlite3.Error):
            text = str(exc)
            stop = stop or any(w in text for w in ("full", "readonly", "disk I/O", "unable to open"))
        if stop:
            self._storing = False
            self._retry_at = self.clock() + self.retry_after
            message += "; not storing for now"
        now = self.clock()
        # The same failure again (each retry of a full disk) is not logged
        # again for ten minutes.
        if message != self._logged or now - self._logged_at > 600:
            self._logged = message
            self._logged_at = now
            self.log(message)

    def _new_file(self, large: bool) -> PackFile:
        """A new data file of this store (raises OSError)."""
        return new_file(self.packs_dir, self.token, next(self._names), large)

    def _space_freed(self) -> None:
        if not self._storing and not self._closed and self._open:
            self._retry_at = 0.0

    def _stored(self, count: int) -> None:
        self.stored += count

    def _release(self, nbytes: int) -> None:
        if nbytes:
            with self._pending_lock:
                self._pending -= nbytes

    def _submit(self, item: tuple, nbytes: int) -> bool:
        bg = self._bg
        if bg is None:
            return False
        with self._pending_lock:
            if self._pending + nbytes > self.max_pending:
                self.dropped += 1
                return False
            self._pending += nbytes
        try:
            bg.queue.put_nowait(item)
        except Exception:
            self._release(nbytes)
            self.dropped += 1
            return False
        return True

    # -- reads -----------------------------------------------------------------

    def _cursor(self) -> Optional[sqlite3.Cursor]:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            if not self._open:
                return None
            try:
                conn = ix.connect(self.db_path, 0.1)
            except sqlite3.Error:
                return None
            self._conns.append(conn)
            cur = self._local.cur = conn.cursor()
        return cur

    def get(self, key: bytes, variant: bytes = b"") -> Optional[DiskEntry]:
        """The object stored under ``(key, variant)``, or None.  Never raises."""
        cur = getattr(self._local, "cur", None) or self._cursor()
        if cur is None:
            return None
        try:
            rows = cur.execute(ix.GET_SQL, (key, variant)).fetchall()
        except sqlite3.Error:
            self.misses += 1
            return None
        if not rows:
            self.misses += 1
            return None
        pack, offset, size, mlen, blen, crc, large, verified, ref = rows[0]
        try:
            if large:
                entry = self._get_large(key, variant, pack, offset, size, mlen, blen, crc, verified)
            else:
                entry = self._get_small(key, variant, pack, offset, size, mlen, crc)
        except OSError:  # missing or unreadable file: forget the row
            entry = None
            self._drop(key, variant, pack, offset)
        except sqlite3.Error:
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        if not ref:
            self._touch(key, variant)
        entry.where = (pack, offset, size, mlen, blen, crc, large)
        return entry

    def get_again(self, key: bytes, variant: bytes, where: tuple) -> Optional[DiskEntry]:
        """The object a :meth:`get` found at ``where``, read again without the index.

        For callers that keep the heads of objects they found (the cache's
        "keys zone", as nginx keeps its ``keys_zone`` in memory): records
        are never rewritten in place, so the bytes at ``where`` are still
        that object as long as its file exists.  The returned entry's
        ``meta`` may be empty.  ``None`` when the file is gone (evicted,
        purged, cleared) or the record fails its checks: ask :meth:`get`.
        Never raises.
        """
        pack, offset, size, mlen, blen, crc, large = where
        try:
            if large:
                entry = self._get_large(key, variant, pack, offset, size, mlen, blen, crc, self.generation)
            else:
                entry = self._get_small(key, variant, pack, offset, size, mlen, crc, need_meta=False)
        except (OSError, sqlite3.Error):
            return None
        if entry is None:
            return None
        self.hits += 1
        self._touch(key, variant)
        entry.where = where
        return entry

    def _get_small(
        self,
        key: bytes,
        variant: bytes,
        pack: int,
        offset: int,
        size: int,
        mlen: int,
        crc: int,
        need_meta: bool = True,
    ) -> Optional[DiskEntry]:
        start = HEADER_SIZE + len(key) + len(variant)
        blen = size - start - mlen
        body: Optional[bytes] = None
        with self._fd_lock:
            fd = self._fds.get(pack)
            if fd is None:
                fd = self._open_pack(pack)
            if fd is None:
                data = b""
            elif blen >= SENDFILE_ABOVE and (pack, offset) in self._verified:
                # Checked whole by this process before and never rewritten:
                # the body goes out with sendfile(2) from a descriptor of
                # its own (the cached one may be closed by a prune meanwhile).
                head = os.pread(fd, start + mlen, offset) if need_meta else b""
                if need_meta and (len(head) != start + mlen or not check_header(head, key, variant, mlen, blen, crc)):
                    data = b""
                else:
                    return DiskEntry(head[start:], None, None, os.dup(fd), offset + start + mlen, blen)
            elif blen < SPLIT_READ_ABOVE:
                data = os.pread(fd, size, offset)
            else:  # two reads rather than copying a big body out of one
                data = os.pread(fd, start + mlen, offset)
                body = os.pread(fd, blen, offset + start + mlen)
        if body is None:
            ok = len(data) == size
        else:
            ok = len(data) == start + mlen and len(body) == blen
        if ok and (size < VERIFY_ALWAYS_BELOW or (pack, offset) not in self._verified):
            # The whole record: the header as the row describes it, then the
            # crc of key, variant, meta and body.
            view = memoryview(data)
            ok = view[:HEADER_SIZE] == encode_header(len(key), len(variant), mlen, blen, crc)
            if ok:
                check = zlib.crc32(view[HEADER_SIZE:])
                ok = (check if body is None else zlib.crc32(body, check)) == crc
            if ok and size >= VERIFY_ALWAYS_BELOW:
                if len(self._verified) > 65536:
                    self._verified.clear()
                self._verified.add((pack, offset))
        elif ok:  # verified before by this process: the header still has to match
            ok = check_header(data, key, variant, mlen, blen, crc)
        if not ok:
            self._drop(key, variant, pack, offset)
            return None
        if body is None:
            return DiskEntry(data[start : start + mlen], data[start + mlen :])
        return DiskEntry(data[start:], body)

    def _open_pack(self, pack: int) -> Optional[int]:
        """Under ``_fd_lock``: a read fd for a pack file, cached."""
        path = self._pack_path(pack)
        if path is None:
            return None
        try:
            fd = open_read(path)
        except FileNotFoundError:
            return None
        if len(self._fds) >= _FD_CACHE_MAX:
            for old in self._fds.values():
                os.close(old)
            self._fds.clear()
        self._fds[pack] = fd
        return fd

    def _pack_path(self, pack: int) -> Optional[str]:
        name = self._names_by_id.get(pack)
        if name is None:
            cur = self._cursor()
            if cur is None:
                return None
            name = ix.pack_name(cur.connection, pack)
            if name is None:
                return None
            if len(self._names_by_id) > 100_000:
                self._names_by_id.clear()
            self._names_by_id[pack] = name
        return os.path.join(self.packs_dir, name)

    def _get_large(
        self,
        key: bytes,
        variant: bytes,
        pack: int,
        offset: int,
        size: int,
        mlen: int,
        blen: int,
        crc: int,
        verified: int,
    ) -> Optional[DiskEntry]:
        if verified != self.generation and self._bg is not None:
            # Its data was fsync'ed before it was indexed, so a crash cannot
            # have torn it: serve it now (header and length are checked
            # below) and verify the checksum against media damage in the
            # background, dropping it if that fails.
            self._bg.request_verify(key, variant, pack, offset)
        path = self._pack_path(pack)
        if path is None:
            return None
        fd = open_read(path)  # missing: OSError, the row is dropped
        try:
            start = HEADER_SIZE + len(key) + len(variant)
            if os.fstat(fd).st_size < offset + size:
                raise OSError(errno.EIO, "short file")
            head = os.pread(fd, start + mlen, offset)
            if len(head) != start + mlen or not check_header(head, key, variant, mlen, blen, crc):
                raise OSError(errno.EIO, "bad header")
        except OSError:
            os.close(fd)
            raise
        return DiskEntry(head[start:], None, path, fd, offset + start + mlen, blen)

    def _drop(self, key: bytes, variant: bytes, pack: int, offset: int) -> None:
        self._corrupt += 1
        bg = self._bg
        if bg is not None:
            try:
                bg.queue.put_nowait((DROP, key, variant, pack, offset))
            except Exception:
                pass

    def _touch(self, key: bytes, variant: bytes) -> None:
        with self._touch_lock:
            if len(self._touched) < _TOUCH_MAX:
                self._touched[(key, variant)] = int(time.time())

    def _take_touches(self) -> Dict[Tuple[bytes, bytes], int]:
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        return touched

    def _prune_fds(self, alive: Set[int]) -> None:
        with self._fd_lock:
            for pack in [p for p in self._fds if p not in alive]:
                os.close(self._fds.pop(pack))
            for pack in [p for p in self._names_by_id if p not in alive]:
                del self._names_by_id[pack]

    # -- writes ----------------------------------------------------------------

    def _accepting(self, key: bytes, variant: bytes, size: int) -> bool:
        if not self.storing:
            return False
        if len(key) > MAX_KEY or len(variant) > MAX_KEY:
            return False
        return size <= self.max_object_size

    def put(self, key: bytes, variant: bytes, meta: bytes, body: bytes) -> None:
        """Store an object, asynchronously (see the class docstring).  Never raises."""
        if not self._accepting(key, variant, len(body)):
            return
        nbytes = len(key) + len(variant) + len(meta) + len(body)
        self._submit((PUT, bytes(key), bytes(variant), bytes(meta), bytes(body), nbytes, self.purge_epoch), nbytes)

    def begin(self, key: bytes, variant: bytes, meta: bytes) -> Writer:
        """A :class:`Writer` for an object whose body comes in pieces."""
        if not self._accepting(key, variant, 0):
            return Writer(None, key, variant, meta)
        return Writer(self, bytes(key), bytes(variant), bytes(meta))
