"""A cheap HPACK encoder for response headers (RFC 7541), in place of hpack's.

hpack's encoder indexes every field in its dynamic table and searches that
table linearly for every field it encodes; with a unique ``X-Request-Id`` in
every answer the table churns and encoding a response head costs more than
relaying the whole HTTP/1.1 response.  This encoder uses only the static
table: a field is an index when name and value are in it, else a literal
without indexing (the name indexed when the static table has it).

The encoding is stateless, so one process-wide memo serves every
connection: the fields of :data:`REPEATED` names (``Via``, ``X-Speedproxy``,
``Content-Type``...: a few values seen in answer after answer) cost one
dictionary look-up.  Fields whose values are new in every answer
(``X-Request-Id``, ``ETag``, ``Date``, ``Content-Length``, ``Age``,
``Cache-Status`` with its ``ttl``) are encoded every time and never kept:
the memo stays small and bounded (:data:`MEMORY`), however many connections
and answers.

Its dynamic table size is 0 from the first header block on (a size update
opens the block), so no ``SETTINGS_HEADER_TABLE_SIZE`` a client sends can
require anything more of it.

The other direction keeps hpack's decoder, with a memory of its own:
:class:`MemoDecoder` decodes a request header block that left the dynamic
table as it was only once while the table stays the same (a client sends
the same block request after request).
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Tuple

from hpack.hpack import Decoder
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE_MAPPING
#: Fields remembered (process-wide) before the memory starts again.
MEMORY = 1024
#: Longer fields are encoded every time, never remembered.
LONGEST = 256
#: The names whose fields are remembered: values that repeat across answers.
REPEATED: FrozenSet[bytes] = frozenset(
    {
        b":status",
        b"accept-ranges",
        b"access-control-allow-credentials",
        b"access-control-allow-origin",
        b"cache-control",
        b"content-encoding",
        b"content-type",
        b"server",
        b"strict-transport-security",
        b"vary",
        b"via",
        b"x-content-type-options",
        b"x-speedproxy",
    }
)
#: The memo of every connection's encoder: (name, value) to its encoding.
_KNOWN: Dict[Tuple[bytes, bytes], bytes] = {}
#: "Dynamic table size update" to 0 (RFC 7541 6.3).
_TABLE_SIZE_ZERO = b"\x20"


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """``value`` as an HPACK integer with an N-bit prefix, ``first`` OR-ed into its first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    size = len(data)
    if size < 127:
        return _SIZES[size] + data
    return _integer(size, 7, 0) + data


_SIZES = [bytes((size,)) for size in range(127)]


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field: indexed, or a literal without indexing."""
    found = _STATIC.get(name)
    if found is not None:
        index = found[1].get(value)
        if index is not None:
            return _integer(index, 7, 0x80)
        return _STATIC_NAMES[name] + _string(value)
    return b"\x00" + _string(name) + _string(value)


#: The first bytes of a literal without indexing whose name is in the static table.
_STATIC_NAMES = {name: _integer(found[0], 4, 0x00) for name, found in _STATIC.items()}


class EncodedFields(list):
    """A header list that brings its own encoding: :attr:`block`, the
    fields as :func:`encode_field` encodes them one after the other (what
    :meth:`StaticEncoder.encode` would make of the list), built by whoever
    made the list from parts it remembered (:mod:`speedproxy.proxy.h2_stream`)."""

    __slots__ = ("block",)


class StaticEncoder:
    """What h2 asks of ``H2Connection.encoder``: :meth:`encode` and ``header_table_size``."""

    def __init__(self) -> None:
        self._first = True
        #: The client's SETTINGS_HEADER_TABLE_SIZE; never used: the table stays empty.
        self.header_table_size = 4096

    def encode(self, headers: Iterable[Tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        if type(headers) is EncodedFields:
            if self._first:
                self._first = False
                return _TABLE_SIZE_ZERO + headers.block
            return headers.block
        known = _KNOWN
        parts = []
        if self._first:
            self._first = False
            parts.append(_TABLE_SIZE_ZERO)
        for field in headers:
            if type(field) is not tuple:
                field = tuple(field)
            encoded = known.get(field)
            if encoded is None:
                name, value = field[0], field[1]
                encoded = encode_field(name, value)
                if name in REPEATED and len(name) + len(value) <= LONGEST:
                    if len(known) >= MEMORY:
                        known.clear()
                    known[field] = encoded
            parts.append(encoded)
        return b"".join(parts)


#: Header blocks remembered per connection by :class:`MemoDecoder`.
DECODED_MEMORY = 8
#: Longer header blocks, or ones of more fields, are decoded every time,
#: never remembered (what one connection may hold stays a few KiB: a
#: remembered list's values are the dynamic table's and the block's own).
DECODED_LONGEST = 512
DECODED_FIELDS = 64


class _CountingTable(HeaderTable):
    """hpack's dynamic table, counting its changes: :attr:`generation` moves
    whenever an entry is added or the size changes (every way its content
    can change)."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class MemoDecoder(Decoder):
    """hpack's decoder, remembering the header blocks that left its dynamic
    table as it was.

    A client sends the same request fields again and again (h2load; a
    browser or player fetching segment after segment): once they are in the
    dynamic table its header blocks are the same few bytes each time.
    Decoding such a block again gives the same list as long as the dynamic
    table did not change in between, so a block is remembered together
    with the table's :attr:`_CountingTable.generation` (and the limits it was
    checked against) and served from memory only while all are the same.
    A block that changes the table (a literal with incremental indexing, a
    size update) is never remembered; one that failed was never decoded.
    At most :data:`DECODED_MEMORY` blocks of at most
    :data:`DECODED_LONGEST` bytes and :data:`DECODED_FIELDS` fields per
    connection.
    """

    def __init__(self, max_header_list_size: int = 65536) -> None:
        super().__init__(max_header_list_size)
        self.header_table = _CountingTable()
        self._memo: Dict[bytes, Tuple[int, int, int, list]] = {}

    def decode(self, data: bytes, raw: bool = False) -> list:  # type: ignore[override]
        table = self.header_table
        generation = table.generation  # type: ignore[attr-defined]
        if raw and type(data) is bytes:
            known = self._memo.get(data)
            if (
                known is not None
                and known[0] == generation
                and known[1] == self.max_header_list_size
                and known[2] == self.max_allowed_table_size
            ):
                return list(known[3])
            headers = super().decode(data, raw)
            if (
                table.generation == generation  # type: ignore[attr-defined]
                and len(data) <= DECODED_LONGEST
                and len(headers) <= DECODED_FIELDS
            ):
                memo = self._memo
                if len(memo) >= DECODED_MEMORY:
                    memo.clear()
                memo[data] = (generation, self.max_header_list_size, self.max_allowed_table_size, headers[:])
            return headers
        return super().decode(data, raw)  # type: ignore[return-value]
