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
