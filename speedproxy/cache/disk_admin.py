"""Purges, listings and counters of the disk cache (admin calls, caller's thread).

Each call is one short SQL statement or transaction on a connection of its
own (serialised by a lock), waiting up to ``busy_timeout`` for the write
lock; files are reclaimed afterwards by the background thread.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable, Dict, List, Optional

from speedproxy.cache import disk_index as ix
from speedproxy.cache.disk_background import WAKE, Background


class DiskAdmin:
    """Mixed into :class:`~speedproxy.cache.disk.DiskStore`."""

    # Provided by DiskStore.
    db_path: str
    busy_timeout: float
    max_size: int
    generation: int
    errors: int
    hits: int
    misses: int
    stored: int
    dropped: int
    _open: bool
    _bg: Optional[Background]
    _conns: List[sqlite3.Connection]
    _last_error: str
    _corrupt: int
    _failed: Callable[[BaseException, str], None]
    _cursor: Callable[[], Optional[sqlite3.Cursor]]

    _admin: Optional[sqlite3.Connection] = None

    def _init_admin(self) -> None:
        self._admin = None
        self._admin_lock = threading.Lock()

    @property
    def storing(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def variants(self, key: bytes) -> List[bytes]:
        """The variants stored under ``key`` (for ``Vary``; fast, like ``get``)."""
        cur = self._cursor()
        if cur is None:
            return []
        try:
            rows = cur.execute(
                "SELECT variant FROM entries WHERE key = ? ORDER BY variant", (key,)
            ).fetchall()
        except sqlite3.Error:
            return []
        return [bytes(r[0]) for r in rows]

    def _admin_conn(self) -> sqlite3.Connection:
        if self._admin is None:
            self._admin = ix.connect(self.db_path, self.busy_timeout)
            self._conns.append(self._admin)
        return self._admin

    def _query(self, sql: str, params: tuple) -> list:
        if not self._open:
            return []
        try:
            with self._admin_lock:
                return self._admin_conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._failed(exc, "query")
            return []

    def _delete(self, where: str, params: tuple) -> int:
        if not self._open:
            return 0
        try:
            with self._admin_lock:
                with ix.Transaction(self._admin_conn()) as conn:
                    count = ix.delete_where(conn, where, params)
        except sqlite3.Error as exc:
            self._failed(exc, "delete")
            return 0
        self._wake()
        return count

    def _wake(self) -> None:
        bg = self._bg
        if bg is not None:
            try:
                bg.queue.put_nowait((WAKE,))
            except Exception:
                pass

    def _note_purge(self, test) -> None:  # type: ignore[no-untyped-def]
        """Writes queued before this purge and matching ``test(key, variant)``
        are dropped instead of committed (a purge must stick)."""
        with self._pending_lock:
            self.purge_epoch += 1
            self._purges.append((self.purge_epoch, test))

    def purged_since(self, epoch: int, key: bytes, variant: bytes) -> bool:
        """Was ``key``/``variant`` purged after a write queued at ``epoch``?"""
        if epoch >= self.purge_epoch:
            return False
        with self._pending_lock:
            purges = list(self._purges)
        return any(when > epoch and test(key, variant) for when, test in purges)

    def delete(self, key: bytes, variant: Optional[bytes] = None) -> int:
        """Delete one variant, or every variant of ``key``; the number deleted."""
        if variant is None:
            self._note_purge(lambda k, v: k == key)
            return self._delete("key = ?", (key,))
        self._note_purge(lambda k, v: k == key and v == variant)
        return self._delete("key = ? AND variant = ?", (key, variant))

    def delete_prefix(self, prefix: bytes) -> int:
        """Delete every object whose key starts with ``prefix``; the number deleted."""
        self._note_purge(lambda k, v: k.startswith(prefix))
        where, params = ix.prefix_range(prefix)
        return self._delete(where, params)

    def clear(self) -> int:
        """Delete everything; the number of objects deleted.  Files go in the background."""
        self._note_purge(lambda k, v: True)
        if not self._open:
            return 0
        try:
            with self._admin_lock:
                with ix.Transaction(self._admin_conn()) as conn:
                    count = conn.execute("SELECT count(*) FROM entries").fetchall()[0][0]
                    conn.execute("DELETE FROM entries")
                    conn.execute("UPDATE packs SET live = 0, count = 0")
        except sqlite3.Error as exc:
            self._failed(exc, "clear")
            return 0
        self._wake()
        return int(count)

    def keys(self, prefix: bytes = b"", limit: int = 100) -> List[bytes]:
        """Up to ``limit`` distinct keys starting with ``prefix``, in order."""
        where, params = ix.prefix_range(prefix)
        rows = self._query(
            "SELECT key FROM entries WHERE " + where + " GROUP BY key ORDER BY key LIMIT ?",
            params + (int(limit),),
        )
        return [bytes(r[0]) for r in rows]

    def search(self, substring: bytes, limit: int = 100, scan: int = 200_000) -> List[bytes]:
        """Up to ``limit`` keys containing ``substring``, among the first ``scan`` rows."""
        rows = self._query(
            "SELECT key FROM (SELECT key FROM entries LIMIT ?) WHERE instr(key, ?) > 0"
            " GROUP BY key ORDER BY key LIMIT ?",
            (int(scan), bytes(substring), int(limit)),
        )
        return [bytes(r[0]) for r in rows]

    def info(self) -> Dict[str, Any]:
        """Counters for /cache/info and metrics."""
        entries = live = used = total_evictions = 0
        rows = self._query(
            "SELECT coalesce(sum(count), 0), coalesce(sum(live), 0), coalesce(sum(size), 0)"
            " FROM packs WHERE state != ?",
            (ix.DELETING,),
        )
        if rows:
            entries, live, used = (int(v) for v in rows[0])
        rows = self._query("SELECT value FROM meta WHERE name = 'evictions'", ())
        if rows:
            total_evictions = int(rows[0][0])
        return {
            "entries": entries,
            "bytes": used,
            "live_bytes": live,
            "max_bytes": self.max_size,
            "storing": self.storing,
            "errors": self.errors,
            "last_error": self._last_error,
            "evictions": total_evictions,
            "hits": self.hits,
            "misses": self.misses,
            "stored": self.stored,
            "dropped": self.dropped,
            "corrupt": self._corrupt,
            "generation": self.generation,
        }
