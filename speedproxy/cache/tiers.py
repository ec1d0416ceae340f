"""The cache of one worker: its memory tier and the host's disk tier.

Lookups try memory first, then disk (a disk hit is promoted to memory when
it fits); stores go to both.  Keys are the primary cache keys of
:func:`speedproxy.cache.keys.cache_key` (``scheme://host/path?query``);
responses that vary keep a :class:`VaryMarker` under the primary key and
one object per variant under ``(key, variant)``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from twisted.logger import Logger
from zope.interface import Interface, implementer

from speedproxy.cache.entry import CachedObject, VaryMarker
from speedproxy.cache.keys import variant_key
from speedproxy.cache.locks import FillLocks
from speedproxy.cache.memory import MemoryTier
from speedproxy.config.model import CacheConfig

Headers = List[Tuple[bytes, bytes]]
Stored = Union[CachedObject, VaryMarker]

log = Logger(namespace="speedproxy.cache")

#: Objects at most this large are promoted from disk to memory on a hit.
PROMOTE_LIMIT = 4 * 1024 * 1024

#: Bytes of stored heads a worker keeps for objects it found on disk, with
#: where their records are (nginx's ``keys_zone``): a repeated disk hit then
#: costs no index lookup and no rebuilt head, only the body's read or sendfile.
KEYS_ZONE_BYTES = 8 * 1024 * 1024

#: A refreshed (304) object whose body is only on disk is rewritten with its
#: new head up to this size; a bigger one keeps its old record (and is
#: revalidated again when it is next stale) rather than copy it on the reactor.
REWRITE_LIMIT = 16 * 1024 * 1024


class ICacheStore(Interface):
    """What the cache filter and the admin API need of a worker's cache."""

    def lookup(key: bytes, headers: Headers, lowered: List[bytes]) -> Optional[CachedObject]:
        """The stored response for a request (its variant), or ``None``."""

    def store(entry: CachedObject) -> None:
        """Keep a complete response (memory and disk)."""

    def purge(key: bytes) -> int:
        """Drop every variant stored under a primary key; return how many."""

    def purge_prefix(prefix: bytes) -> int:
        """Drop every object whose key starts with ``prefix``."""

    def clear(tier: str) -> int:
        """Drop everything from ``memory``, ``disk`` or ``all``."""

    def info() -> Dict[str, Any]:
        """Entries, bytes and hit counters per tier."""


@implementer(ICacheStore)
class CacheTiers:
    """Memory tier (per worker) in front of the disk tier (per host)."""

    def __init__(
        self,
        config: CacheConfig,
        disk_factory: Optional[Callable[[CacheConfig], Any]] = None,
        reactor: Any = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        #: Objects stored but not yet visible on disk, that the memory tier
        #: could not keep (no memory tier, or too large): served from here
        #: until the disk tier has committed them.
        self._unwritten: Dict[Any, Stored] = {}
        self.memory: MemoryTier[Stored] = MemoryTier(config.memory_size)
        #: Heads of objects found on disk and where they are (``KEYS_ZONE_BYTES``).
        self.heads: MemoryTier[Tuple[Stored, Optional[tuple]]] = MemoryTier(KEYS_ZONE_BYTES)
        self.disk: Any = None
        self._disk_factory = disk_factory or _open_disk
        self.hits = {"memory": 0, "disk": 0}
        self.misses = 0
        self.stores = 0
        #: Which worker of the host fetches a key (with a disk tier only).
        self.locks: Optional[FillLocks] = None
        if config.disk_path:
            self._open_disk(config)

    def _open_disk(self, config: CacheConfig) -> None:
        self.heads.clear()
        self.disk = self._disk_factory(config)
        self.locks = FillLocks(os.path.join(config.disk_path, "fills.lock"))

    def apply_config(self, config: CacheConfig) -> None:
        """Follow a new ``cache:`` section (sizes now; a new disk path reopens)."""
        old = self.config
        self.config = config
        self.memory.resize(config.memory_size)
        if (config.disk_path, config.disk_size) != (old.disk_path, old.disk_size):
            self.close()
            if config.disk_path:
                self._open_disk(config)

    def close(self) -> None:
        self.heads.clear()
        if self.disk is not None:
            self.disk.close()
            self.disk = None
        if self.locks is not None:
            self.locks.close()
            self.locks = None

    # -- the data path ---------------------------------------------------------------

    def lookup(self, key: bytes, headers: Headers, lowered: List[bytes]) -> Optional[CachedObject]:
        found = self.memory.get(key)  # (self._get, its first step spelled out: the memory hit)
        if found is not None:
            self.hits["memory"] += 1
        else:
            found = self._get_elsewhere(key, b"", key)
        if isinstance(found, VaryMarker):
            found = self._get(key, variant_key(found.names, headers, lowered))
            if isinstance(found, VaryMarker):
                found = None
        if found is None:
            self.misses += 1
        return found

    def _get(self, key: bytes, variant: bytes) -> Optional[Stored]:
        memory_key = (key, variant) if variant else key
        found = self.memory.get(memory_key)
        if found is not None:
            self.hits["memory"] += 1
            return found
        return self._get_elsewhere(key, variant, memory_key)

    def _get_elsewhere(self, key: bytes, variant: bytes, memory_key: Any) -> Optional[Stored]:
        """:meth:`_get` past the memory tier: not yet written, or on disk."""
        found = self._unwritten.get(memory_key)
        if found is not None:
            self.hits["memory"] += 1
            return found
        disk = self.disk
        if disk is None:
            return None
        known = self.heads.get(memory_key)
        if known is not None:
            head, where = known
            if where is None:  # a Vary marker
                return head
            entry = disk.get_again(key, variant, where)
            if entry is not None:
                return self._disk_hit(memory_key, head, entry)  # type: ignore[arg-type]
            self.heads.remove(memory_key)  # its file is gone: ask the index
        entry = disk.get(key, variant)
        if entry is None:
            return None
        marker = VaryMarker.from_meta(entry.meta)
        if marker is not None:
            entry.close()
            self.memory.put(memory_key, marker, len(key) + 100)
            self.heads.put(memory_key, (marker, None), len(key) + 100)
            return marker
        stored = CachedObject.from_meta(key, variant, entry.meta, b"")
        if stored is None:
            entry.close()
            return None
        if entry.where is not None:
            self.heads.put(memory_key, (stored, entry.where), stored.size + 100)
        return self._disk_hit(memory_key, stored, entry)

    def _disk_hit(self, memory_key: Any, head: CachedObject, entry: Any) -> CachedObject:
        self.hits["disk"] += 1
        if entry.body is None and entry.fd >= 0:
            # The body stays on disk: it goes out with sendfile(2); the entry
            # keeps its file open until then.
            return head.for_hit(b"", entry)
        with entry:
            body = entry.read_body()
        stored = head.for_hit(body, None)
        if stored.size <= PROMOTE_LIMIT:
            self.memory.put(memory_key, stored, stored.size)
        return stored

    def store(self, entry: CachedObject) -> None:
        self.stores += 1
        key = entry.key
        memory_key = (key, entry.variant) if entry.vary else key
        self.heads.remove(memory_key)
        self.heads.remove(key)
        # A refreshed disk hit whose body is still only in its file: the
        # memory tier keeps bodies, not open files.
        in_file = entry.file is not None
        if entry.vary:
            marker = VaryMarker(entry.vary)
            self.memory.put(key, marker, len(key) + 100)
        else:
            self.memory.remove(key)  # an old marker, if the response stopped varying
        if in_file:
            self.memory.remove(memory_key)
            if entry.file.where is not None:
                # Until its new record is on disk, serve the new head with the
                # body of the old record (a 304: the same bytes).
                head = entry.for_hit(b"", None)
                self.heads.put(memory_key, (head, entry.file.where), head.size + 100)
        else:
            self.memory.put(memory_key, entry, entry.size)
        disk = self.disk
        if disk is not None and entry.length <= self.config.max_object_size:
            try:
                if entry.vary:
                    disk.put(key, b"", marker.meta(), b"")
                if in_file:
                    _copy_to_disk(disk, entry)
                    return
                disk.put(key, entry.variant, entry.meta(), entry.body)
            except Exception:  # the disk tier never stops proxying
                log.failure("cache: storing {key!r} on disk failed", key=key)
                return
            if memory_key not in self.memory and self.reactor is not None:
                self._keep_until_written(memory_key, entry, marker if entry.vary else None)

    def _keep_until_written(self, memory_key: Any, entry: CachedObject, marker: Optional[VaryMarker]) -> None:
        unwritten = self._unwritten
        unwritten[memory_key] = entry
        if marker is not None and entry.key not in self.memory:
            unwritten[entry.key] = marker
        reactor = self.reactor

        def written() -> None:
            if unwritten.get(memory_key) is entry:
                del unwritten[memory_key]
            if marker is not None and unwritten.get(entry.key) is marker:
                del unwritten[entry.key]

        if not self.disk.when_committed(lambda: reactor.callFromThread(written)):
            written()

    def refresh(self, entry: CachedObject) -> None:
        """A stored object's head changed (revalidated): write it back."""
        self.store(entry)

    # -- purging and listing ----------------------------------------------------

    def drop_from_memory(self, key: bytes) -> int:
        """Drop every variant of ``key`` from this worker's memory tier only."""
        self._forget_unwritten(lambda item: item == key or (isinstance(item, tuple) and item[0] == key))
        self.heads.remove_where(lambda item: item == key or (isinstance(item, tuple) and item[0] == key))
        return self.memory.remove_where(lambda item: item == key or (isinstance(item, tuple) and item[0] == key))

    def forget_copy(self, key: bytes, variant: bytes = b"") -> None:
        """Forget this worker's copy (and known head) of one object, so the
        next lookup reads the disk tier's index: another worker may have
        stored a newer one."""
        memory_key = (key, variant) if variant else key
        self.memory.remove(memory_key)
        self.heads.remove(memory_key)

    def _forget_unwritten(self, predicate: Callable[[Any], bool]) -> None:
        for item in [item for item in self._unwritten if predicate(item)]:
            del self._unwritten[item]

    def purge(self, key: bytes) -> int:
        self._forget_unwritten(lambda item: item == key or (isinstance(item, tuple) and item[0] == key))
        self.heads.remove_where(lambda item: item == key or (isinstance(item, tuple) and item[0] == key))
        count = self.memory.remove_where(lambda item: item == key or (isinstance(item, tuple) and item[0] == key))
        if self.disk is not None:
            count = max(count, self.disk.delete(key) or 0)
        return count

    def purge_prefix(self, prefix: bytes) -> int:
        self._forget_unwritten(lambda item: (item[0] if isinstance(item, tuple) else item).startswith(prefix))
        self.heads.remove_where(
            lambda item: (item[0] if isinstance(item, tuple) else item).startswith(prefix)  # type: ignore[union-attr]
        )
        count = self.memory.remove_where(
            lambda item: (item[0] if isinstance(item, tuple) else item).startswith(prefix)  # type: ignore[union-attr]
        )
        if self.disk is not None:
            count = max(count, self.disk.delete_prefix(prefix))
        return count

    def clear(self, tier: str = "all") -> int:
        count = 0
        self.heads.clear()
        if tier in ("memory", "all"):
            self._unwritten.clear()
            count += self.memory.clear()
        if tier in ("disk", "all") and self.disk is not None:
            count += self.disk.clear()
        return count

    def keys(self, prefix: bytes = b"", limit: int = 100) -> List[bytes]:
        found: List[bytes] = []
        for item in self.memory.keys():
            key = item[0] if isinstance(item, tuple) else item
            if key.startswith(prefix) and key not in found:  # type: ignore[union-attr]
                found.append(key)  # type: ignore[arg-type]
                if len(found) >= limit:
                    return found
        if self.disk is not None:
            for key in self.disk.keys(prefix, limit):
                if key not in found:
                    found.append(key)
                    if len(found) >= limit:
                        break
        return found

    def search(self, text: bytes, limit: int = 100) -> List[bytes]:
        found = [key for key in self.keys(b"", 100000) if text in key][:limit]
        if self.disk is not None and len(found) < limit:
            for key in self.disk.search(text, limit):
                if key not in found:
                    found.append(key)
                    if len(found) >= limit:
                        break
        return found

    def info(self) -> Dict[str, Any]:
        memory = self.memory
        result: Dict[str, Any] = {
            "memory": {
                "entries": len(memory),
                "bytes": memory.bytes,
                "max_bytes": memory.max_bytes,
                "evictions": memory.evictions,
                "hits": self.hits["memory"],
            },
            "misses": self.misses,
            "stores": self.stores,
        }
        if self.disk is not None:
            disk = dict(self.disk.info())
            disk["hits"] = self.hits["disk"]
            result["disk"] = disk
        return result


def _copy_to_disk(disk: Any, entry: CachedObject) -> None:
    """Store ``entry`` (new head) with the body it still has in its disk file."""
    file = entry.file
    if file.length > REWRITE_LIMIT:
        return
    writer = disk.begin(entry.key, entry.variant, entry.meta())
    offset = 0
    while offset < file.length and writer.active:
        chunk = os.pread(file.fd, min(file.length - offset, 1 << 20), file.offset + offset)
        if not chunk:
            writer.abort()
            return
        writer.write(chunk)
        offset += len(chunk)
    writer.commit()


def _open_disk(config: CacheConfig) -> Any:
    from speedproxy.cache.disk import DiskStore

    store = DiskStore(config.disk_path, config.disk_size, max_object_size=config.max_object_size)
    store.open()
    return store
