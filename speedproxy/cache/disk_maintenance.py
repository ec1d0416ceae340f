"""Maintenance of the disk cache, run by its background thread.

* **touches**: hits recorded by ``get`` set the CLOCK bit (``ref``) of their
  rows, in one transaction per second (and before any eviction);
* **eviction**: while the data files exceed ``max_size``, down to 90 % of
  it, the oldest sealed pack of the FIFO is taken; records read since they
  were stored or last spared (``ref``) are copied to this process's open pack
  and spared, the others are evicted, then the file is deleted: CLOCK, an
  approximation of LRU, at pack granularity.  A large object read since is
  spared by moving it to the tail of the FIFO, without a copy.  Empty packs,
  then packs less than a quarter live, are taken first (compaction);
* **sweeps**: the packs of dead stores (their owner lock is free) are sealed
  and cut to what was indexed, files nobody indexed and whose owner is gone
  are deleted, empty sealed packs are deleted;
* **checks**: rows whose record failed a check on read are dropped; large
  objects not yet verified in this generation are checksummed.

Only the holder of ``maint.lock`` evicts or sweeps: the workers of a host
take turns.
"""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Set, Tuple

from speedproxy.cache import disk_index as ix
from speedproxy.cache.packfile import (
    HEADER_SIZE,
    Batch,
    FileLock,
    PackFile,
    check_header,
    claim_dead_owner,
    drop_owner,
    file_crc,
    list_pack_files,
    open_read,
    owner_lock_exists,
    owner_of,
)

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.cache.disk import DiskStore


class Maintenance:
    """Mixed into :class:`~speedproxy.cache.disk_background.Background`."""

    store: "DiskStore"
    conn: Optional[sqlite3.Connection]
    _verifying: Set[Tuple[bytes, bytes]]
    _place: Callable[[Batch, int], Tuple[PackFile, int]]
    _commit: Callable[[Batch, Callable[[sqlite3.Connection], None]], bool]

    # -- reads gone wrong, verification ---------------------------------------

    def _drop(self, key: bytes, variant: bytes, pack: int, offset: int) -> None:
        assert self.conn is not None
        with ix.Transaction(self.conn) as conn:
            ix.delete_where(
                conn,
                "key = ? AND variant = ? AND pack = ? AND offset = ?",
                (key, variant, pack, offset),
            )

    def _verify(self, key: bytes, variant: bytes, pack: int, offset: int) -> None:
        conn = self.conn
        assert conn is not None
        gen = self.store.generation
        self._verifying.discard((key, variant))
        rows = conn.execute(
            "SELECT size, meta_len, body_len, crc, verified FROM entries"
            " WHERE key = ? AND variant = ? AND pack = ? AND offset = ?",
            (key, variant, pack, offset),
        ).fetchall()
        if not rows or rows[0][4] == gen:
            return
        size, mlen, blen, crc, _v = rows[0]
        ok = False
        name = ix.pack_name(conn, pack)
        if name is not None:
            try:
                fd = open_read(os.path.join(self.store.packs_dir, name))
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                try:
                    if os.fstat(fd).st_size >= offset + size:
                        head = os.pread(fd, HEADER_SIZE + len(key) + len(variant), offset)
                        if check_header(head, key, variant, mlen, blen, crc):
                            ok = file_crc(fd, offset + HEADER_SIZE, size - HEADER_SIZE) == crc
                finally:
                    os.close(fd)
        with ix.Transaction(conn):
            if ok:
                conn.execute(
                    "UPDATE entries SET verified = ? WHERE key = ? AND variant = ?"
                    " AND pack = ? AND offset = ?",
                    (gen, key, variant, pack, offset),
                )
            else:
                self.store._corrupt += 1
                ix.delete_where(
                    conn,
                    "key = ? AND variant = ? AND pack = ? AND offset = ?",
                    (key, variant, pack, offset),
                )

    # -- touches ---------------------------------------------------------------

    def _flush_touches(self) -> None:
        touched = self.store._take_touches()
        if not touched:
            return
        assert self.conn is not None
        with ix.Transaction(self.conn) as conn:
            conn.executemany(
                "UPDATE entries SET ref = 1, last_access = ? WHERE key = ? AND variant = ?",
                [(when, k, v) for (k, v), when in touched.items()],
            )

    # -- eviction --------------------------------------------------------------

    def _evict(self, budget: Optional[float]) -> None:
        store = self.store
        conn = self.conn
        assert conn is not None
        if ix.disk_bytes(conn) <= store.max_size:
            return
        self._flush_touches()  # hits seen so far count
        lock = FileLock(store.maint_lock_path)
        if not lock.acquire(blocking=False):
            return
        try:
            deadline = None if budget is None else time.monotonic() + budget
            freed = False
            while ix.disk_bytes(conn) > store.low_water:
                if deadline is not None and time.monotonic() > deadline:
                    break
                victim = conn.execute(
                    "SELECT id, name, large FROM packs WHERE state = ? ORDER BY"
                    " CASE WHEN count = 0 THEN 0 WHEN live * 4 < size THEN 1 ELSE 2 END, seq"
                    " LIMIT 1",
                    (ix.SEALED,),
                ).fetchall()
                if not victim:
                    break
                self._evict_pack(*victim[0])
                freed = True
            if freed:
                store._space_freed()
        finally:
            lock.release()

    def _evict_pack(self, pid: int, name: str, large: int) -> None:
        conn = self.conn
        assert conn is not None
        path = os.path.join(self.store.packs_dir, name)
        rows = conn.execute(
            "SELECT key, variant, offset, size, meta_len, body_len, crc, ref"
            " FROM entries WHERE pack = ?",
            (pid,),
        ).fetchall()
        if large and rows and rows[0][7]:
            with ix.Transaction(conn):  # spared: back to the tail, no copy
                conn.execute("UPDATE entries SET ref = 0 WHERE pack = ?", (pid,))
                conn.execute(
                    "UPDATE packs SET seq = (SELECT max(seq) + 1 FROM packs) WHERE id = ?", (pid,)
                )
            return
        moved: List[Tuple[tuple, PackFile, int]] = []
        batch = Batch()
        hot = [r for r in rows if r[7]]
        if hot and not large:
            try:
                fd = open_read(path)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                try:
                    for r in hot:
                        key, variant, offset, size, mlen, blen, crc, _ref = r
                        data = os.pread(fd, size, offset)
                        if not check_header(data, key, variant, mlen, blen, crc) or len(
                            data
                        ) != size:
                            continue
                        if zlib.crc32(memoryview(data)[HEADER_SIZE:]) != crc:
                            continue
                        pack, new_offset = self._place(batch, size)
                        batch.add(pack, data)
                        moved.append((r, pack, new_offset))
                finally:
                    os.close(fd)

        def apply(conn: sqlite3.Connection) -> None:
            deltas: Dict[int, List[int]] = {}
            for r, pack, new_offset in moved:
                cur = conn.execute(
                    "UPDATE entries SET pack = ?, offset = ?, ref = 0"
                    " WHERE key = ? AND variant = ? AND pack = ? AND offset = ?",
                    (pack.id, new_offset, r[0], r[1], pid, r[2]),
                )
                if cur.rowcount:
                    d = deltas.setdefault(pack.id, [0, 0])  # type: ignore[arg-type]
                    d[0] += r[3]
                    d[1] += 1
            ix.account(conn, deltas)
            evicted = ix.delete_where(conn, "pack = ?", (pid,))
            conn.execute("UPDATE packs SET state = ? WHERE id = ?", (ix.DELETING, pid))
            ix.add_meta(conn, "evictions", evicted)
            self.store.evictions += evicted

        try:
            self._commit(batch, apply)
        except OSError as exc:  # could not copy: evict everything instead
            self.store._failed(exc, "eviction copy")
            moved = []
            self._commit(Batch(), apply)
        self._unlink_pack(pid, path)

    def _unlink_pack(self, pid: int, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        assert self.conn is not None
        self.conn.execute("DELETE FROM packs WHERE id = ? AND state = ?", (pid, ix.DELETING))

    # -- sweeping ----------------------------------------------------------------

    def _sweep(self) -> None:
        store = self.store
        conn = self.conn
        assert conn is not None
        lock = FileLock(store.maint_lock_path)
        if not lock.acquire(blocking=False):
            return
        try:
            files = list(list_pack_files(store.packs_dir))
            # Not while a store opens: it must see the dead as dead.
            opening = FileLock(store.store_lock_path)
            opening.acquire()
            try:
                self._seal_dead_owners()
            finally:
                opening.release()
            known = {row[0] for row in conn.execute("SELECT name FROM packs").fetchall()}
            for name in files:
                if name in known:
                    continue
                token = owner_of(name)
                if token == store.token or owner_lock_exists(store.owners_dir, token):
                    continue
                try:
                    os.unlink(os.path.join(store.packs_dir, name))
                except OSError:
                    pass
            empty = conn.execute(
                "SELECT id, name FROM packs WHERE state = ? OR (state = ? AND count = 0)",
                (ix.DELETING, ix.SEALED),
            ).fetchall()
            for pid, name in empty:
                with ix.Transaction(conn):
                    cur = conn.execute(
                        "UPDATE packs SET state = ? WHERE id = ?"
                        " AND (state = ? OR (state = ? AND count = 0))",
                        (ix.DELETING, pid, ix.DELETING, ix.SEALED),
                    )
                    go = cur.rowcount > 0
                if go:
                    self._unlink_pack(pid, os.path.join(store.packs_dir, name))
        finally:
            lock.release()

    def _seal_dead_owners(self) -> None:
        store = self.store
        conn = self.conn
        assert conn is not None
        try:
            names = os.listdir(store.owners_dir)
        except OSError:
            return
        for lock_name in names:
            if not lock_name.endswith(".lock"):
                continue
            token = lock_name[: -len(".lock")]
            if token == store.token:
                continue
            fd = claim_dead_owner(store.owners_dir, token)
            if fd is None:
                continue
            try:
                rows = conn.execute(
                    "SELECT name, size FROM packs WHERE owner = ? AND state = ? AND large = 0",
                    (token, ix.OPEN),
                ).fetchall()
                for name, size in rows:  # cut what was written but never indexed
                    try:
                        os.truncate(os.path.join(store.packs_dir, name), size)
                    except OSError:
                        pass
                with ix.Transaction(conn):
                    conn.execute(
                        "UPDATE packs SET state = ? WHERE owner = ? AND state = ?",
                        (ix.SEALED, token, ix.OPEN),
                    )
            finally:
                drop_owner(store.owners_dir, token, fd)

    def _prune_fds(self) -> None:
        assert self.conn is not None
        alive = {
            row[0]
            for row in self.conn.execute(
                "SELECT id FROM packs WHERE state != ?", (ix.DELETING,)
            ).fetchall()
        }
        self.store._prune_fds(alive)
