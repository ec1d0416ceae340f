"""Requests in flight per key, summed over the workers of a host (``connection_limit``).

Each worker slot has a table of its own in the host's edge state file
(:mod:`speedproxy.edge.host_table`), written only by its worker and cleared
when a worker starts in that slot, so a killed worker's requests do not
stay counted; a check sums the tables of the workers that registered,
under a lock per key (so two workers never both let the last one in).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from speedproxy.edge.host_table import (
    CONN,
    CONN_LOCKS,
    CONN_SET,
    CONN_SETS,
    CONN_TABLE_SIZE,
    CONN_TABLES,
    CONNS_AT,
    LOCK_CONNS,
    LOCK_REGISTER,
    WAYS,
    WORKERS,
    WORKERS_AT,
    EdgeTable,
    key_hash,
    remember,
)


class HostConnectionCounts:
    """Requests in flight per key, summed over the workers of the host.

    ``slot``: this worker's slot (its own table).  As nginx's ``limit_conn``,
    a request counts from when its head is read until its answer is done.
    """

    def __init__(self, table: EdgeTable, slot: int) -> None:
        if not 0 <= slot < CONN_TABLES:
            raise ValueError(f"worker slot {slot} has no connection-count table (0..{CONN_TABLES - 1})")
        self.table = table
        self.slot = slot
        self._own = CONNS_AT + slot * CONN_TABLE_SIZE
        self._hashes: Dict[bytes, int] = {}
        self._registered: Tuple[int, int] = (-1, -1)
        self._known_tables: List[int] = []
        data = table.map
        table.lock(LOCK_REGISTER)
        try:
            data[self._own:self._own + CONN_TABLE_SIZE] = bytes(CONN_TABLE_SIZE)
            low, high = WORKERS.unpack_from(data, WORKERS_AT)
            if slot < 64:
                low |= 1 << slot
            else:
                high |= 1 << (slot - 64)
            WORKERS.pack_into(data, WORKERS_AT, low, high)
        finally:
            table.unlock(LOCK_REGISTER)

    def _tables(self) -> List[int]:
        """Offsets of the tables of every registered worker (remembered until one registers)."""
        registered = WORKERS.unpack_from(self.table.map, WORKERS_AT)
        if registered == self._registered:
            return self._known_tables
        low, high = registered
        bits = low | (high << 64)
        tables = []
        slot = 0
        while bits:
            if bits & 1:
                tables.append(CONNS_AT + slot * CONN_TABLE_SIZE)
            bits >>= 1
            slot += 1
        self._registered, self._known_tables = registered, tables
        return tables

    def acquire(self, key: bytes, limit: int) -> Tuple[bool, int]:
        """Count one more request for ``key`` unless ``limit`` are in flight.

        Returns ``(allowed, in_flight)`` (``in_flight`` before this one).
        """
        wanted = self._hashes.get(key) or remember(self._hashes, key)
        index = wanted % CONN_SETS
        offset = index * WAYS * CONN.size
        table = self.table
        data = table.map
        lock = LOCK_CONNS + wanted % CONN_LOCKS
        table.lock(lock)
        try:
            total = 0
            own_free = -1
            own_found = -1
            for base in self._tables():
                fields = CONN_SET.unpack_from(data, base + offset)
                for way in range(WAYS):
                    if fields[2 * way] == wanted:
                        total += fields[2 * way + 1]
                        if base == self._own:
                            own_found = way
                    elif base == self._own and own_free < 0 and fields[2 * way + 1] <= 0:
                        own_free = way
            if total >= limit:
                return False, total
            way = own_found if own_found >= 0 else own_free
            at = self._own + offset + way * CONN.size if way >= 0 else -1
            if at < 0:
                return True, total  # no room in our set: not counted (logged by nobody; rare)
            count = CONN.unpack_from(data, at)[1] if own_found >= 0 else 0
            CONN.pack_into(data, at, wanted, count + 1)
        finally:
            table.unlock(lock)
        return True, total

    def release(self, key: bytes) -> None:
        """One request for ``key`` (counted by :meth:`acquire`) is over."""
        wanted = self._hashes.get(key) or remember(self._hashes, key)
        at = self._own + (wanted % CONN_SETS) * WAYS * CONN.size
        data = self.table.map
        fields = CONN_SET.unpack_from(data, at)
        for way in range(WAYS):
            if fields[2 * way] == wanted and fields[2 * way + 1] > 0:
                CONN.pack_into(data, at + way * CONN.size, wanted, fields[2 * way + 1] - 1)
                return

    def in_flight(self, key: bytes) -> int:
        """Requests for ``key`` in flight on the whole host (for tests and the admin API)."""
        wanted = key_hash(key)
        offset = (wanted % CONN_SETS) * WAYS * CONN.size
        total = 0
        for base in self._tables():
            fields = CONN_SET.unpack_from(self.table.map, base + offset)
            total += sum(fields[2 * way + 1] for way in range(WAYS) if fields[2 * way] == wanted)
        return total
