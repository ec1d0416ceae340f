"""The static-table HPACK encoder: what any HPACK decoder reads back."""

from __future__ import annotations

from hpack import Decoder

from speedproxy.proxy import h2_hpack
from speedproxy.proxy.h2_hpack import StaticEncoder, encode_field

FIELDS = [
    (b":status", b"200"),  # name and value in the static table: one byte
    (b":status", b"418"),  # name only
    (b"content-type", b"application/json"),
    (b"x-request-id", b"1f2e3d4c-1a"),  # not in the table at all
    (b"via", b"1.1 speedproxy"),
    (b"x-long", b"v" * 300),  # lengths past the 7-bit prefix
]


def test_round_trip_through_a_decoder() -> None:
    encoder, decoder = StaticEncoder(), Decoder()
    for _ in range(3):
        assert decoder.decode(encoder.encode(FIELDS), raw=True) == FIELDS
    assert decoder.header_table.maxsize == 0  # the first block set the dynamic table to 0


def test_representations() -> None:
    assert encode_field(b":status", b"200") == bytes((0x80 | 8,))
    assert encode_field(b":status", b"418")[0] == 8  # literal without indexing, static name 8
    assert encode_field(b"x-a", b"b") == b"\x00\x03x-a\x01b"
    assert encode_field(b"x-a", b"b" * 200)[5:7] == bytes((127, 200 - 127))


def test_only_repeating_fields_are_remembered_within_bounds(monkeypatch) -> None:
    monkeypatch.setattr(h2_hpack, "MEMORY", 3)
    monkeypatch.setattr(h2_hpack, "_KNOWN", {})
    encoder = StaticEncoder()
    unique = [(b"x-request-id", b"1f2e3d4c-1a"), (b"etag", b'"abc"'), (b"date", b"Mon, 30 Nov 2026 12:00:00 GMT"),
              (b"content-length", b"1234"), (b"age", b"7"), (b"cache-status", b"speedproxy; hit; ttl=12")]
    repeated = [(b"content-type", b"video/mp2t"), (b"via", b"1.1 speedproxy")]
    encoder.encode(unique + repeated + [(b"content-type", b"x" * 1000)])
    assert set(h2_hpack._KNOWN) == set(repeated)  # never the per-response values, never the long ones
    encoder.encode([(b"content-type", b"text/%d" % index) for index in range(5)])
    assert len(h2_hpack._KNOWN) <= 3


def test_the_memo_is_one_for_every_connection(monkeypatch) -> None:
    monkeypatch.setattr(h2_hpack, "_KNOWN", {})
    for _ in range(100):  # connections
        StaticEncoder().encode([(b"content-type", b"text/html"), (b"x-request-id", b"%d" % _)])
    assert list(h2_hpack._KNOWN) == [(b"content-type", b"text/html")]
    assert not hasattr(StaticEncoder(), "_known")


def test_a_smaller_table_size_setting_needs_nothing_more() -> None:
    encoder, decoder = StaticEncoder(), Decoder()
    decoder.decode(encoder.encode(FIELDS), raw=True)
    encoder.header_table_size = 0  # a client's SETTINGS_HEADER_TABLE_SIZE: 0
    decoder.max_allowed_table_size = 0
    assert decoder.decode(encoder.encode(FIELDS), raw=True) == FIELDS


# -- MemoDecoder: remembered header blocks -------------------------------------

from typing import Any, List, Tuple  # noqa: E402
from unittest import mock  # noqa: E402

import pytest  # noqa: E402
from hpack import Encoder, HPACKError  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from speedproxy.proxy.h2_hpack import DECODED_MEMORY, MemoDecoder  # noqa: E402

REQUEST = [(b":method", b"GET"), (b":path", b"/1k"), (b":scheme", b"http"), (b":authority", b"h"),
           (b"user-agent", b"h2load")]


def test_a_repeated_block_is_decoded_once() -> None:
    encoder, decoder = Encoder(), MemoDecoder()
    decoder.decode(encoder.encode(REQUEST), raw=True)  # fills the dynamic table: not remembered
    block = encoder.encode(REQUEST)  # indices only
    calls = []
    original = Decoder.decode

    def counted(self: Any, data: bytes, raw: bool = False) -> Any:
        calls.append(data)
        return original(self, data, raw)

    with mock.patch.object(Decoder, "decode", counted):
        first = decoder.decode(block, raw=True)
        second = decoder.decode(block, raw=True)
    assert first == second == REQUEST
    assert first is not second  # each caller gets its own list
    assert calls == [block]


def test_a_changed_table_is_never_served_from_memory() -> None:
    encoder, decoder, reference = Encoder(), MemoDecoder(), Decoder()
    for fields in ([(b"x-a", b"1")], [(b"x-a", b"1")], [(b"x-b", b"2")], [(b"x-a", b"1")]):
        block = encoder.encode(fields)
        assert decoder.decode(block, raw=True) == reference.decode(block, raw=True) == fields
    newest = b"\xbe"  # index 62: the newest dynamic entry, x-b: 2 now
    assert decoder.decode(newest, raw=True) == reference.decode(newest, raw=True) == [(b"x-b", b"2")]
    adding = encoder.encode([(b"x-c", b"3")])  # a literal with incremental indexing
    decoder.decode(adding, raw=True)
    reference.decode(adding, raw=True)
    assert decoder.decode(newest, raw=True) == reference.decode(newest, raw=True) == [(b"x-c", b"3")]


def test_the_limits_are_checked_again_when_they_change() -> None:
    encoder, decoder = Encoder(), MemoDecoder()
    decoder.decode(encoder.encode(REQUEST), raw=True)
    block = encoder.encode(REQUEST)
    decoder.decode(block, raw=True)
    decoder.decode(block, raw=True)
    decoder.max_header_list_size = 50  # the decoded list is larger
    with pytest.raises(HPACKError):
        decoder.decode(block, raw=True)
    decoder.max_header_list_size = 65536
    assert decoder.decode(block, raw=True) == REQUEST
    decoder.max_allowed_table_size = 0  # the table (4096) is now over what we allow
    with pytest.raises(HPACKError):
        decoder.decode(block, raw=True)


def test_the_memory_is_bounded() -> None:
    encoder, decoder = Encoder(), MemoDecoder()
    for index in range(DECODED_MEMORY * 3):
        fields = [(b":path", b"/%d" % index)]
        block = encoder.encode(fields)
        assert decoder.decode(block, raw=True) == fields
        assert len(decoder._memo) <= DECODED_MEMORY


_FIELD = st.tuples(st.sampled_from([b"x-a", b"x-b", b":path", b"accept", b"cookie"]),
                   st.sampled_from([b"1", b"2", b"/", b"*/*", b"v" * 40, b""]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.lists(_FIELD, min_size=1, max_size=4), st.sampled_from([64, 0, 4096])), max_size=30))
def test_memo_and_plain_decoders_agree(steps: List[Any]) -> None:
    """Blocks repeated, interleaved with blocks that add entries and with
    table size changes: both decoders give the same lists and errors."""
    encoder, memo, plain = Encoder(), MemoDecoder(), Decoder()
    blocks: List[bytes] = []
    for step in steps:
        if isinstance(step, int):
            encoder.header_table_size = step  # a size update opens the next block
            continue
        blocks.append(encoder.encode(step))
        for block in (blocks[-1], blocks[len(blocks) // 2], blocks[-1]):
            outcomes: List[Tuple[str, Any]] = []
            for decoder in (memo, plain):
                try:
                    outcomes.append(("ok", decoder.decode(block, raw=True)))
                except HPACKError as error:
                    outcomes.append(("error", type(error)))
            assert outcomes[0] == outcomes[1]
