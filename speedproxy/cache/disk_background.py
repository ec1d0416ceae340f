"""The background thread of a :class:`~speedproxy.cache.disk.DiskStore`.

Everything slow happens here, never on the caller's (reactor) thread.
Queued objects are appended to this process's open pack file (or written to
their own file when large), fsync'ed, and only then indexed, several per
fsync and per transaction; a pack that reaches ``pack_size`` is sealed and a
new one started.  Between batches, and at least once a second, it runs the
maintenance of ``disk_maintenance``.  The queue is bounded: ``put`` drops
what does not fit rather than wait.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from speedproxy.cache import disk_index as ix
from speedproxy.cache.disk_maintenance import Maintenance
from speedproxy.cache.packfile import (
    Batch,
    PackFile,
    datasync,
    encode_record,
    fsync_dir,
    pwrite_all,
    write_all,
)

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.cache.disk import DiskStore

# Queue item tags.
PUT = 0
LARGE = 1
DROP = 2
VERIFY = 3
FLUSH = 4
WAKE = 5
STOP = 6
NOTIFY = 7  # call item[1]() once the stores queued before it are committed

TICK = 1.0  # seconds between touch flushes / eviction checks
SWEEP_EVERY = 10.0
EVICT_BUDGET = 0.25  # seconds of eviction per pass, so stores keep flowing
BATCH_ITEMS = 512
BATCH_BYTES = 8 << 20


def discard(pack: PackFile) -> None:
    """Close and delete a file that is not (and will not be) indexed."""
    pack.close()
    pack.id = None
    try:
        os.unlink(pack.path)
    except OSError:
        pass


class Background(Maintenance, threading.Thread):
    def __init__(self, store: "DiskStore", queue_size: int) -> None:
        super().__init__(name="speedproxy-disk-cache", daemon=True)
        self.store = store
        self.queue: "queue.Queue[tuple]" = queue.Queue(queue_size)
        self.conn: Optional[sqlite3.Connection] = None
        self._current: Optional[PackFile] = None
        self._to_seal: List[PackFile] = []
        self._verifying: set = set()
        self._next_sweep = 0.0

    # -- loop ----------------------------------------------------------------

    def run(self) -> None:
        store = self.store
        self.conn = ix.connect(store.db_path, store.busy_timeout)
        try:
            self._loop()
        finally:
            self._safely(self._seal_own)
            self._safely(self._close_current)
            self.conn.close()

    def _loop(self) -> None:
        q = self.queue
        next_tick = time.monotonic() + TICK
        while True:
            try:
                items = [q.get(timeout=max(0.0, next_tick - time.monotonic()))]
            except queue.Empty:
                items = []
            size = 0
            while items and len(items) < BATCH_ITEMS and size < BATCH_BYTES:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                if item[0] == PUT:
                    size += item[5]
            stores = [i for i in items if i[0] in (PUT, LARGE)]
            flushes = [i[1] for i in items if i[0] == FLUSH]
            stop = any(i[0] == STOP for i in items)
            if stores:
                self._safely(self._store, stores)
                self.store._release(sum(i[5] for i in stores if i[0] == PUT))
            for item in items:
                if item[0] == DROP:
                    self._safely(self._drop, *item[1:])
                elif item[0] == VERIFY:
                    self._safely(self._verify, *item[1:])
                elif item[0] == NOTIFY:
                    self._safely(item[1])
            now = time.monotonic()
            full = bool(flushes) or stop
            if full or now >= next_tick or stores:
                if full or now >= next_tick:
                    self._safely(self._flush_touches)
                    next_tick = now + TICK
                if full or now >= self._next_sweep:
                    self._safely(self._sweep)
                    self._safely(self._prune_fds)
                    self._next_sweep = now + SWEEP_EVERY
                self._safely(self._evict, None if full else EVICT_BUDGET)
            for event in flushes:
                event.set()
            if stop:
                return

    def _safely(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except (OSError, sqlite3.Error) as exc:
            self.store._failed(exc, "background " + getattr(fn, "__name__", "task"))
        except Exception as exc:  # never let the thread die
            self.store._failed(exc, "background " + getattr(fn, "__name__", "task"))

    # -- stores ----------------------------------------------------------------

    def _place(self, batch: Batch, size: int) -> Tuple[PackFile, int]:
        cur = self._current
        if cur is not None and cur.pending > 0 and cur.pending + size > self.store.pack_size:
            self._to_seal.append(cur)
            self._current = cur = None
        if cur is None:
            cur = self.store._new_file(large=False)
            batch.created.append(cur)
            self._current = cur
        offset = cur.pending
        cur.pending += size
        return cur, offset

    def _write(self, batch: Batch) -> None:
        for pack, chunks in batch.chunks.items():
            pwrite_all(pack.fd, b"".join(chunks), pack.end)
            datasync(pack.fd)
        for pack in batch.large:
            datasync(pack.fd)
        if batch.created:
            fsync_dir(self.store.packs_dir)

    def _abandon(self, batch: Batch) -> None:
        """Forget what ``batch`` wrote: nothing of it is indexed."""
        created = set(batch.created)
        for pack in list(batch.chunks) + batch.large + batch.created:
            if pack in created:
                discard(pack)
                if pack is self._current:
                    self._current = None
                continue
            pack.pending = pack.end
            try:
                os.ftruncate(pack.fd, pack.end)
            except OSError:
                pass
            if pack is self._current:
                self._to_seal.append(pack)
                self._current = None
        self._to_seal = [p for p in self._to_seal if p not in created]

    def _commit(self, batch: Batch, apply: Callable[[sqlite3.Connection], None]) -> bool:
        """Write and fsync ``batch``, then index it with ``apply`` in one transaction."""
        conn = self.conn
        assert conn is not None
        try:
            self._write(batch)
            with ix.Transaction(conn):
                owner = self.store.token
                for pack in batch.created:
                    pack.id = ix.insert_pack(
                        conn, pack.name, owner, pack.large, ix.SEALED if pack.large else ix.OPEN
                    )
                conn.executemany(
                    "UPDATE packs SET size = ? WHERE id = ?",
                    [(p.pending, p.id) for p in list(batch.chunks) + batch.large],
                )
                apply(conn)
                sealing = [(ix.SEALED, p.id) for p in self._to_seal if p.id is not None]
                conn.executemany("UPDATE packs SET state = ? WHERE id = ? AND state = 0", sealing)
        except (OSError, sqlite3.Error):
            for pack in batch.created:
                pack.id = None
            self._abandon(batch)
            raise
        for pack in list(batch.chunks) + batch.large:
            pack.end = pack.pending
        for pack in batch.large:
            pack.close()
        for pack in self._to_seal:
            pack.close()
        self._to_seal = []
        return True

    def _store(self, items: Sequence[tuple]) -> None:
        store = self.store
        batch = Batch()
        placed: List[Tuple[PackFile, list]] = []
        epochs: dict = {}
        placed_epochs: List[int] = []
        now = int(time.time())
        gen = store.generation
        try:
            for item in items:
                if item[0] == PUT:
                    _, key, variant, meta, body, _n, epoch = item
                    if store.purged_since(epoch, key, variant):
                        continue  # purged while it waited: never make it visible
                    epochs[id(item)] = epoch
                    record, crc = encode_record(key, variant, meta, body)
                    row = [key, variant, 0, 0, len(record), len(meta), len(body), crc, 0, 0, now]
                    if len(record) >= store.pack_threshold:
                        pack = store._new_file(large=True)
                        batch.created.append(pack)
                        batch.large.append(pack)
                        write_all(pack.fd, record)
                        pack.pending = len(record)
                        row[8] = 1
                        row[9] = gen
                    else:
                        pack, row[3] = self._place(batch, len(record))
                        batch.add(pack, record)
                else:  # LARGE: written by a Writer, fsync'ed here
                    _, key, variant, mlen, blen, crc, pack = item
                    batch.created.append(pack)
                    batch.large.append(pack)
                    row = [key, variant, 0, 0, pack.pending, mlen, blen, crc, 1, gen, now]
                placed.append((pack, row))
                placed_epochs.append(epochs.get(id(item), store.purge_epoch))
        except BaseException:
            self._abandon(batch)
            for item in items:  # files of writers not reached: nobody else deletes them
                if item[0] == LARGE and item[6] not in batch.created:
                    discard(item[6])
            raise

        def apply(conn: sqlite3.Connection) -> None:
            rows = []
            for (pack, row), epoch in zip(placed, placed_epochs):
                # Checked again inside the transaction: a purge noted before
                # its DELETE ran either deleted this row already or is seen here.
                if store.purged_since(epoch, row[0], row[1]):
                    continue
                row[2] = pack.id
                rows.append(tuple(row))
            ix.store_entries(conn, rows)

        self._commit(batch, apply)
        store._stored(len(placed))

    def request_verify(self, key: bytes, variant: bytes, pack: int, offset: int) -> None:
        if (key, variant) in self._verifying:
            return
        try:
            self.queue.put_nowait((VERIFY, key, variant, pack, offset))
            self._verifying.add((key, variant))
        except queue.Full:
            pass

    # -- shutdown ----------------------------------------------------------------

    def _seal_own(self) -> None:
        assert self.conn is not None
        with ix.Transaction(self.conn) as conn:
            conn.execute(
                "UPDATE packs SET state = ? WHERE owner = ? AND state = ?",
                (ix.SEALED, self.store.token, ix.OPEN),
            )

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        for pack in self._to_seal:
            pack.close()
        self._to_seal = []
