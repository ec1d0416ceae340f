"""Token buckets and sessions in the host's edge state file (:mod:`speedproxy.edge.host_table`).

* **token buckets** (:meth:`HostEdgeState.take`): sets of :data:`WAYS`
  records ``(key hash, tokens, stamp, full_at)``.  A bucket's set is locked
  while it is read and written, so two workers never both spend the last
  token: with a named semaphore of the file's stripe
  (:mod:`speedproxy.edge.host_locks`, no system call when free), else a
  one-byte ``fcntl`` lock.  A set with no free record
  reuses one that is full again (a full bucket says nothing a missing one
  would not), else the one nearest to full.
* **sessions** (:meth:`HostEdgeState.open_session` and friends): the
  sessions of one client are kept in the set its address hashes to, so its
  live sessions are counted by reading one set.  A session id names its
  record (4 bytes) and carries 12 random bytes compared in constant time;
  reusing a record for a new session makes the old id unknown.  A record
  keeps a hash of its realm (a session of another realm is unknown to a
  route) and, for sessions opened by signed URLs, a tag of the signed link
  they came with, so that a cookie-less player gets its live session back
  (``reuse``) rather than a new one per request.

Times: buckets use a monotonic clock (``CLOCK_MONOTONIC`` is one clock for
every process of the host), sessions the wall clock (they are shown to
operators and outlive nothing: a new master starts an empty file).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from weakref import WeakKeyDictionary

from twisted.logger import Logger
from zope.interface import implementer

from speedproxy.edge.host_counts import HostConnectionCounts
from speedproxy.edge.host_locks import STRIPES, wait_or_take_over
from speedproxy.edge.host_table import (
    BUCKET,
    BUCKET_SET,
    BUCKET_SETS,
    BUCKETS_AT,
    CONN_TABLES,
    HASH_MEMO,
    LOCK_BUCKETS,
    LOCK_SESSIONS,
    SESSION,
    SESSION_LIVE,
    SESSION_REVOKED,
    SESSION_SETS,
    SESSION_WAYS,
    SESSIONS_AT,
    WAYS,
    EdgeTable,
    client_bytes,
    client_text,
    edge_state_path,
    key_hash,
    realm_tag,
    reuse_tag,
)
from speedproxy.edge.state import IEdgeState, Session, SessionLimitReached, SessionStatus, SessionStoreFull, Take

__all__ = ["HostEdgeState", "SessionStoreFull", "host_edge_for", "host_edge_for_master"]

log = Logger(namespace="speedproxy.edge")

lockf, LOCK_EX, LOCK_UN = fcntl.lockf, fcntl.LOCK_EX, fcntl.LOCK_UN
_STRIPE = STRIPES - 1
#: ``Take(...)`` without the named tuple's ``__new__`` (a Python frame).
_new_take = tuple.__new__


@implementer(IEdgeState)
class HostEdgeState:
    """:class:`~speedproxy.edge.state.IEdgeState` for the workers of one host.

    ``monotonic`` and ``wall`` are the clocks (injected for tests);
    ``random`` makes session ids.
    """

    def __init__(
        self,
        table: EdgeTable,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.table = table
        self.monotonic = monotonic
        self.wall = wall
        self.random = random
        #: Bucket keys seen lately: their hash and where their record was
        #: (clients come back; hashing and searching the set are the cost).
        self._known: Dict[bytes, Tuple[int, int]] = {}

    # -- token buckets --------------------------------------------------------

    def take(self, key: bytes, rate: float, burst: float) -> Take:
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= HASH_MEMO:
                self._known.clear()
            wanted, guess = key_hash(key), -1
        else:
            wanted, guess = known
        index = wanted % BUCKET_SETS
        table = self.table
        data = table.map
        # (the lock calls spelled out: this runs on every limited request)
        semaphores = table.bucket_locks
        if semaphores is None:
            semaphores = table.open_bucket_locks()
        fd = None
        if semaphores:
            semaphore = semaphores[index & _STRIPE]
            if not semaphore.acquire(False):
                wait_or_take_over(semaphore)
        else:
            fd = table.fd
            if fd is not None:
                lockf(fd, LOCK_EX, 1, LOCK_BUCKETS + index)
        try:
            now = self.monotonic()
            at = -1
            if guess >= 0:  # where this process found the bucket last time
                stored, tokens, stamp, _ = BUCKET.unpack_from(data, guess)
                if stored == wanted:
                    at = guess
                    tokens += (now - stamp) * rate
                    if tokens > burst:  # (min/max spelled out: this runs on every limited request)
                        tokens = burst
            if at < 0:
                at, tokens = self._find_bucket(data, BUCKETS_AT + index * WAYS * BUCKET.size, wanted, now, rate, burst)
                self._known[key] = (wanted, at)
            if tokens >= 0.999999999:  # float noise in the refill must not cost a token
                tokens -= 1.0
                if tokens < 0.0:
                    tokens = 0.0
                allowed = True
                retry_after = 0.0
            else:
                allowed = False
                retry_after = (1.0 - tokens) / rate
            reset = (burst - tokens) / rate
            BUCKET.pack_into(data, at, wanted, tokens, now, now + reset)
        finally:
            if semaphores:
                try:
                    semaphore.release()
                except ValueError:  # already free: its holder's lock was taken over
                    pass
            elif fd is not None:
                lockf(fd, LOCK_UN, 1, LOCK_BUCKETS + index)
        return _new_take(Take, (allowed, int(tokens) if allowed else 0, retry_after, reset))

    @staticmethod
    def _find_bucket(data: Any, base: int, wanted: int, now: float, rate: float, burst: float) -> Tuple[int, float]:
        """The offset of ``wanted``'s record in its set (or of the one to reuse) and its tokens now."""
        fields = BUCKET_SET.unpack_from(data, base)
        spare = -1
        nearest = float("inf")
        for way in range(WAYS):
            at = way * 4
            stored = fields[at]
            if stored == wanted:
                return base + way * BUCKET.size, min(burst, fields[at + 1] + (now - fields[at + 2]) * rate)
            full_at = fields[at + 3]
            if stored == 0 or full_at <= now:
                if spare < 0 or nearest > -1.0:
                    spare, nearest = way, -1.0  # free, or full again: nothing is lost
            elif full_at < nearest:
                spare, nearest = way, full_at  # else the one nearest to full
        return base + spare * BUCKET.size, burst

    # -- sessions -------------------------------------------------------------

    def open_session(
        self, client: str, ttl: float, max_per_client: int, realm: str = "", reuse: bytes = b""
    ) -> Session:
        raw_client = client_bytes(client)
        tag = realm_tag(realm)
        again = reuse_tag(realm, reuse)
        index = int.from_bytes(hashlib.blake2b(raw_client, digest_size=8).digest(), "little") % SESSION_SETS
        table = self.table
        data = table.map
        first = index * SESSION_WAYS
        table.lock(LOCK_SESSIONS + index)
        try:
            now = self.wall()
            live = 0
            free = -1
            for way in range(SESSION_WAYS):
                secret, reused, owner, created, expires, state, realm_of = SESSION.unpack_from(
                    data, SESSIONS_AT + (first + way) * SESSION.size
                )
                if state == SESSION_LIVE and expires > now:
                    if owner == raw_client:
                        if reuse and reused == again and realm_of == tag:
                            return Session(_session_id(first + way, secret), client_text(owner), created, expires, realm)
                        live += 1
                elif free < 0:
                    free = way
            if live >= max_per_client:
                raise SessionLimitReached(client, max_per_client)
            if free < 0:
                raise SessionStoreFull(client)
            secret = self.random(12)
            record = first + free
            SESSION.pack_into(
                data, SESSIONS_AT + record * SESSION.size, secret, again, raw_client, now, now + ttl, SESSION_LIVE, tag
            )
        finally:
            table.unlock(LOCK_SESSIONS + index)
        return Session(_session_id(record, secret), client_text(raw_client), now, now + ttl, realm)

    def _find(self, session_id: str) -> Optional[Tuple[int, bytes]]:
        """The record a session id names and its random part (``None``: not an id)."""
        if len(session_id) != 22:
            return None
        try:
            raw = base64.urlsafe_b64decode(session_id + "==")
        except (binascii.Error, ValueError):
            return None
        record = int.from_bytes(raw[:4], "big")
        if len(raw) != 16 or record >= SESSION_SETS * SESSION_WAYS:
            return None
        return record, raw[4:]

    def check_session(
        self, session_id: str, realm: Optional[str] = None, client: Optional[str] = None
    ) -> SessionStatus:
        found = self._find(session_id)
        if found is None:
            return SessionStatus.UNKNOWN
        record, secret = found
        lock = LOCK_SESSIONS + record // SESSION_WAYS
        table = self.table
        table.lock(lock, shared=True)
        try:
            stored, _, owner, _, expires, state, realm_of = SESSION.unpack_from(
                table.map, SESSIONS_AT + record * SESSION.size
            )
        finally:
            table.unlock(lock)
        if not state or not hmac.compare_digest(stored, secret):
            return SessionStatus.UNKNOWN
        if realm is not None and realm_of != realm_tag(realm):
            return SessionStatus.UNKNOWN  # another realm's: it does not open this route
        if client is not None and owner != client_bytes(client):
            return SessionStatus.UNKNOWN
        if state == SESSION_REVOKED:
            return SessionStatus.REVOKED
        return SessionStatus.VALID if expires > self.wall() else SessionStatus.EXPIRED

    def revoke_session(self, session_id: str) -> bool:
        found = self._find(session_id)
        if found is None:
            return False
        record, secret = found
        lock = LOCK_SESSIONS + record // SESSION_WAYS
        table = self.table
        at = SESSIONS_AT + record * SESSION.size
        table.lock(lock)
        try:
            stored, reused, owner, created, expires, state, realm_of = SESSION.unpack_from(table.map, at)
            if state != SESSION_LIVE or expires <= self.wall() or not hmac.compare_digest(stored, secret):
                return False
            SESSION.pack_into(table.map, at, stored, reused, owner, created, expires, SESSION_REVOKED, realm_of)
        finally:
            table.unlock(lock)
        return True

    def list_sessions(self, client: Optional[str] = None) -> List[Session]:
        if client is not None:
            raw_client = client_bytes(client)
            index = int.from_bytes(hashlib.blake2b(raw_client, digest_size=8).digest(), "little") % SESSION_SETS
            sets = range(index, index + 1)
        else:
            raw_client = None
            sets = range(SESSION_SETS)
        now = self.wall()
        found = []
        data = self.table.map
        for index in sets:
            for record in range(index * SESSION_WAYS, (index + 1) * SESSION_WAYS):
                secret, _, owner, created, expires, state, _ = SESSION.unpack_from(
                    data, SESSIONS_AT + record * SESSION.size
                )
                if state != SESSION_LIVE or expires <= now or (raw_client is not None and owner != raw_client):
                    continue
                found.append(Session(_session_id(record, secret), client_text(owner), created, expires))
        return found


def _session_id(record: int, secret: bytes) -> str:
    return base64.urlsafe_b64encode(record.to_bytes(4, "big") + secret).decode("ascii").rstrip("=")


class _HostEdge:
    """A process's edge table, its state store and its connection counts."""

    def __init__(self, table: EdgeTable, slot: int) -> None:
        self.table = table
        self.state = HostEdgeState(table)
        self.slot = slot
        self._counts: Optional[HostConnectionCounts] = None

    @property
    def counts(self) -> HostConnectionCounts:
        if self._counts is None:
            if self.slot < CONN_TABLES:
                self._counts = HostConnectionCounts(self.table, self.slot)
            else:
                log.warn(
                    "worker slot {slot} has no shared connection-count table (there are {tables}): "
                    "connection_limit counts this worker's requests only",
                    slot=self.slot, tables=CONN_TABLES,
                )
                self._counts = HostConnectionCounts(EdgeTable(None), 0)
        return self._counts


_by_core: "WeakKeyDictionary[Any, _HostEdge]" = WeakKeyDictionary()


def host_edge_for(core: Any) -> _HostEdge:
    """The edge table of a worker's (or single process's) core, opened once.

    Workers of one master find the file beside their stats segment; a
    process serving alone (private segment) keeps a private table.
    """
    found = _by_core.get(core)
    if found is None:
        segment = core.shared.segment
        table = EdgeTable(edge_state_path(segment.path) if segment.path else None)
        found = _HostEdge(table, core.shared.slot)
        _by_core[core] = found
    return found


def host_edge_for_master(stats_path: str) -> HostEdgeState:
    """The master's store over the workers' file (for the admin API)."""
    return HostEdgeState(EdgeTable(edge_state_path(stats_path)))

