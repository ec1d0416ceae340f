"""The shared SQLite index of the disk cache.

One database (``index.db``, WAL mode, ``synchronous=NORMAL``) per cache
directory, opened by every worker of the host.  Readers never block writers
nor each other; writers (the background thread of each worker, and purges)
take SQLite's write lock for one short transaction at a time.

Tables:

``packs``
    One row per data file: ``name`` (file name under ``packs/``), ``owner``
    (token of the store that wrote it), ``large`` (1: one object alone),
    ``state`` (OPEN: its owner may still append; SEALED; DELETING: being
    unlinked), ``size`` (bytes committed: end of the last indexed record),
    ``live``/``count`` (bytes and number of records still indexed) and
    ``seq`` (position in the eviction FIFO).
``entries``
    One row per object, keyed by ``(key, variant)``: where its record is
    (``pack``, ``offset``, ``size``), ``meta_len``, ``body_len``, ``crc``,
    ``large``, ``verified`` (large objects: the generation in which their
    checksum was last checked), ``ref`` (read since stored or since last
    spared by eviction: the CLOCK bit), ``stored_at``, ``last_access``.
``meta``
    ``schema``, ``generation`` (bumped when a store opens while no other is
    alive: large objects are re-verified once per generation) and
    ``evictions``.

Every change to ``entries`` keeps ``packs.live``/``packs.count`` in step in
the same transaction (explicitly, not by triggers, so ``clear()`` is one
fast ``DELETE``).
"""

from __future__ import annotations

import sqlite3
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

SCHEMA_VERSION = 1

OPEN = 0
SEALED = 1
DELETING = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    large INTEGER NOT NULL,
    state INTEGER NOT NULL,
    size INTEGER NOT NULL,
    live INTEGER NOT NULL,
    count INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    key BLOB NOT NULL,
    variant BLOB NOT NULL,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    meta_len INTEGER NOT NULL,
    body_len INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    large INTEGER NOT NULL,
    verified INTEGER NOT NULL,
    ref INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    last_access INTEGER NOT NULL,
    PRIMARY KEY (key, variant)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_pack ON entries (pack);
"""

GET_SQL = (
    "SELECT pack, offset, size, meta_len, body_len, crc, large, verified, ref"
    " FROM entries WHERE key = ? AND variant = ?"
)

#: A row that ``put`` stores: key, variant, pack, offset, size, meta_len,
#: body_len, crc, large, verified, stored_at.
EntryRow = Tuple[bytes, bytes, int, int, int, int, int, int, int, int, int]


def connect(path: str, busy_seconds: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        timeout=busy_seconds,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=64,
    )
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def setup(conn: sqlite3.Connection) -> None:
    """Create or check the schema (the caller holds ``store.lock``)."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError("cannot use WAL journal mode: %s" % mode)
    conn.executescript(SCHEMA)
    rows = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchall()
    if rows and rows[0][0] != SCHEMA_VERSION:
        raise sqlite3.DatabaseError("unknown disk cache schema %r" % rows[0][0])
    if not rows:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)",
                [("schema", SCHEMA_VERSION), ("generation", 0), ("evictions", 0)],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def get_meta(conn: sqlite3.Connection, name: str) -> int:
    rows = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchall()
    return int(rows[0][0]) if rows else 0


def add_meta(conn: sqlite3.Connection, name: str, delta: int) -> None:
    """Inside a transaction."""
    conn.execute("UPDATE meta SET value = value + ? WHERE name = ?", (delta, name))


class Transaction:
    """``with Transaction(conn):`` = BEGIN IMMEDIATE ... COMMIT / ROLLBACK."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def insert_pack(
    conn: sqlite3.Connection, name: str, owner: str, large: bool, state: int
) -> int:
    """Inside a transaction: a new pack row at the tail of the FIFO."""
    cur = conn.execute(
        "INSERT INTO packs (name, owner, large, state, size, live, count, seq)"
        " VALUES (?, ?, ?, ?, 0, 0, 0, (SELECT coalesce(max(seq), 0) + 1 FROM packs))",
        (name, owner, 1 if large else 0, state),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def account(conn: sqlite3.Connection, deltas: Dict[int, List[int]]) -> None:
    """Inside a transaction: apply ``{pack: [live delta, count delta]}``."""
    conn.executemany(
        "UPDATE packs SET live = live + ?, count = count + ? WHERE id = ?",
        [(d[0], d[1], pack) for pack, d in deltas.items() if d[0] or d[1]],
    )


def store_entries(conn: sqlite3.Connection, rows: Sequence[EntryRow]) -> None:
    """Inside a transaction: insert or replace ``rows``, keeping accounts."""
    deltas: Dict[int, List[int]] = {}
    for row in rows:
        old = conn.execute(
            "SELECT pack, size FROM entries WHERE key = ? AND variant = ?", (row[0], row[1])
        ).fetchall()
        if old:
            d = deltas.setdefault(old[0][0], [0, 0])
            d[0] -= old[0][1]
            d[1] -= 1
        conn.execute(
            "INSERT OR REPLACE INTO entries (key, variant, pack, offset, size, meta_len,"
            " body_len, crc, large, verified, ref, stored_at, last_access)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0)",
            row,
        )
        d = deltas.setdefault(row[2], [0, 0])
        d[0] += row[4]
        d[1] += 1
    account(conn, deltas)


def delete_where(conn: sqlite3.Connection, where: str, params: Iterable[object]) -> int:
    """Inside a transaction: delete the entries matching ``where``."""
    params = tuple(params)
    deltas: Dict[int, List[int]] = {}
    for pack, count, size in conn.execute(
        "SELECT pack, count(*), sum(size) FROM entries WHERE " + where + " GROUP BY pack",
        params,
    ).fetchall():
        deltas[pack] = [-int(size), -int(count)]
    if not deltas:
        return 0
    conn.execute("DELETE FROM entries WHERE " + where, params)
    account(conn, deltas)
    return -sum(d[1] for d in deltas.values())


def prefix_range(prefix: bytes) -> Tuple[str, Tuple[bytes, ...]]:
    """A WHERE clause (and its parameters) for ``key`` starting with ``prefix``."""
    if not prefix:
        return "1", ()
    end = prefix.rstrip(b"\xff")
    if not end:
        return "key >= ?", (prefix,)
    upper = end[:-1] + bytes((end[-1] + 1,))
    return "key >= ? AND key < ?", (prefix, upper)


def totals(conn: sqlite3.Connection) -> Tuple[int, int, int]:
    """(entries, live bytes, bytes on disk) of every pack not being deleted."""
    row = conn.execute(
        "SELECT coalesce(sum(count), 0), coalesce(sum(live), 0), coalesce(sum(size), 0)"
        " FROM packs WHERE state != ?",
        (DELETING,),
    ).fetchall()[0]
    return int(row[0]), int(row[1]), int(row[2])


def disk_bytes(conn: sqlite3.Connection) -> int:
    return totals(conn)[2]


def pack_name(conn: sqlite3.Connection, pack: int) -> Optional[str]:
    rows = conn.execute(
        "SELECT name FROM packs WHERE id = ? AND state != ?", (pack, DELETING)
    ).fetchall()
    return rows[0][0] if rows else None
