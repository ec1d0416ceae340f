"""What the disk cache hands out: :class:`DiskEntry` (a hit) and :class:`Writer`."""

from __future__ import annotations

import errno
import os
import zlib
from typing import TYPE_CHECKING, List, Optional

from speedproxy.cache.disk_background import LARGE, discard
from speedproxy.cache.packfile import HEADER_SIZE, PackFile, encode_header, pwrite_all, write_all

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.cache.disk import DiskStore

MiB = 1 << 20


class DiskEntry:
    """One object found on disk.

    ``meta`` is always bytes.  A small object (stored packed) has ``body``
    (bytes), ``fd`` -1 and ``path`` None.  A large object has ``body`` None
    and ``fd``, ``offset``, ``length``: ``length`` bytes of body at
    ``offset`` in the file open as ``fd`` (also at ``path``, which may be
    unlinked at any time: use ``fd``), to send with ``os.sendfile`` or
    splice.  The entry owns ``fd`` and closes it when it is closed (``with``,
    :meth:`close`) or garbage collected; :meth:`detach` hands it over.  The
    range stays readable through ``fd`` even if the object is evicted or
    purged meanwhile (files are never rewritten, only unlinked).

    ``where`` is the index row that located it (for :meth:`DiskStore.get_again`).
    """

    __slots__ = ("meta", "body", "path", "fd", "offset", "length", "where")

    def __init__(
        self,
        meta: bytes,
        body: Optional[bytes],
        path: Optional[str] = None,
        fd: int = -1,
        offset: int = 0,
        length: int = 0,
    ) -> None:
        self.meta = meta
        self.body = body
        self.path = path
        self.fd = fd
        self.offset = offset
        self.length = len(body) if body is not None else length
        self.where: Optional[tuple] = None

    @property
    def in_file(self) -> bool:
        return self.body is None

    def read_body(self) -> bytes:
        """The whole body as bytes (reads the file for a large object)."""
        if self.body is not None:
            return self.body
        parts = []
        offset, left = self.offset, self.length
        while left > 0:
            data = os.pread(self.fd, min(left, 4 * MiB), offset)
            if not data:
                raise OSError(errno.EIO, "disk cache file is short")
            parts.append(data)
            offset += len(data)
            left -= len(data)
        return b"".join(parts)

    def detach(self) -> int:
        """Take over ``fd`` (the caller closes it); -1 for a small object."""
        fd, self.fd = self.fd, -1
        return fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> "DiskEntry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass


class Writer:
    """Streams one object to disk: ``write(data)``... then ``commit()`` or ``abort()``.

    The body is kept in memory only up to ``pack_threshold``; past it, it goes
    to its own file as it comes.  Never raises: when the object cannot be
    stored (disk full, over ``max_object_size``, store closed) the writer
    becomes inactive and the rest is discarded.  Like ``put``, the object
    becomes visible once the background thread has committed it.
    """

    def __init__(self, store: Optional["DiskStore"], key: bytes, variant: bytes, meta: bytes):
        self._store = store
        self.key = key
        self.variant = variant
        self.meta = meta
        self._chunks: List[bytes] = []
        self._size = 0
        self._file: Optional[PackFile] = None
        self._crc = 0

    @property
    def active(self) -> bool:
        return self._store is not None

    def write(self, data: bytes) -> None:
        store = self._store
        if store is None or not data:
            return
        self._size += len(data)
        if self._size > store.max_object_size:
            self.abort()
            return
        try:
            if self._file is None:
                self._chunks.append(bytes(data))
                if HEADER_SIZE + len(self.key) + len(self.variant) + len(self.meta) + (
                    self._size
                ) >= store.pack_threshold:
                    self._spill(store)
            else:
                write_all(self._file.fd, data)
                self._crc = zlib.crc32(data, self._crc)
        except OSError as exc:
            self.abort()
            store._failed(exc, "write")

    def _spill(self, store: "DiskStore") -> None:
        self._file = store._new_file(large=True)
        head = b"\0" * HEADER_SIZE + self.key + self.variant + self.meta
        self._crc = zlib.crc32(self.meta, zlib.crc32(self.variant, zlib.crc32(self.key)))
        write_all(self._file.fd, head)
        for chunk in self._chunks:
            write_all(self._file.fd, chunk)
            self._crc = zlib.crc32(chunk, self._crc)
        self._chunks = []

    def commit(self) -> None:
        store, self._store = self._store, None
        if store is None:
            return
        if self._file is None:
            store.put(self.key, self.variant, self.meta, b"".join(self._chunks))
            self._chunks = []
            return
        pack, self._file = self._file, None
        head = encode_header(len(self.key), len(self.variant), len(self.meta), self._size, self._crc)
        try:
            pwrite_all(pack.fd, head, 0)
            pack.pending = HEADER_SIZE + len(self.key) + len(self.variant) + len(self.meta) + self._size
            item = (LARGE, self.key, self.variant, len(self.meta), self._size, self._crc, pack)
            if not store._submit(item, 0):
                raise OSError(errno.EAGAIN, "disk cache queue full")
        except OSError as exc:
            discard(pack)
            if exc.errno != errno.EAGAIN:
                store._failed(exc, "commit")

    def abort(self) -> None:
        self._store = None
        self._chunks = []
        if self._file is not None:
            pack, self._file = self._file, None
            discard(pack)

    def __del__(self) -> None:
        if self._file is not None:
            self.abort()
