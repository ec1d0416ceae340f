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
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Tuple

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
    return _integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field: indexed, or a literal without indexing."""
    found = _STATIC.get(name)
    if found is not None:
        index = found[1].get(value)
        if index is not None:
            return _integer(index, 7, 0x80)
        return _integer(found[0], 4, 0x00) + _string(value)
    return b"\x00" + _string(name) + _string(value)


class StaticEncoder:
    """What h2 asks of ``H2Connection.encoder``: :meth:`encode` and ``header_table_size``."""

    def __init__(self) -> None:
        self._first = True
        #: The client's SETTINGS_HEADER_TABLE_SIZE; never used: the table stays empty.
        self.header_table_size = 4096

    def encode(self, headers: Iterable[Tuple[bytes, bytes]], huffman: bool = True) -> bytes:
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
