"""Accept-Encoding negotiation and the compressors (:mod:`speedproxy.edge.compression_codecs`)."""

from __future__ import annotations

import gzip

import brotli
import pytest

from speedproxy.edge.compression_codecs import (
    BR,
    GZIP,
    brotli_available,
    compress,
    compressor,
    negotiate,
    parse_accept_encoding,
)


def test_brotli_is_installed_with_the_test_extra() -> None:
    assert brotli_available()


@pytest.mark.parametrize(
    "value,offer_brotli,expected",
    [
        (b"gzip", True, GZIP),
        (b"gzip, deflate, br", True, BR),
        (b"gzip, deflate, br", False, GZIP),
        (b"br;q=0.5, gzip", True, GZIP),
        (b"br;q=1.0, gzip;q=0.9", True, BR),
        (b"gzip;q=0.8, br;q=0.8", True, BR),  # a tie: the smaller one
        (b"GZIP", True, GZIP),
        (b"x-gzip", True, GZIP),
        (b"identity", True, None),
        (b"gzip;q=0", True, None),
        (b"gzip;q=0, br;q=0", True, None),
        (b"*", True, BR),
        (b"*", False, GZIP),
        (b"*;q=0, gzip", True, GZIP),
        (b"br;q=0, *", True, GZIP),
        (b"deflate, compress", True, None),
        (b"gzip;q=bogus, br;q=2", True, None),  # malformed q: not acceptable
        (b"", True, None),
        (None, True, None),
        (b" , ;q=1, gzip ; q=0.3 ", True, GZIP),
    ],
)
def test_negotiate(value, offer_brotli, expected) -> None:
    assert negotiate(value, offer_brotli) == expected


def test_parse_keeps_the_highest_q_of_a_repeated_coding() -> None:
    assert parse_accept_encoding(b"gzip;q=0.2, gzip;q=0.7") == {GZIP: 0.7}


@pytest.mark.parametrize("coding", [GZIP, BR])
def test_streaming_and_whole_compression_decode_to_the_input(coding: bytes) -> None:
    body = b"#EXTINF:4.0,\nsegment.ts\n" * 2000
    stream = compressor(coding, 5, 4)
    pieces = b"".join(stream.compress(memoryview(body)[start : start + 1000]) for start in range(0, len(body), 1000))
    pieces += stream.finish()
    whole = compress(coding, body, 5, 4)
    decode = gzip.decompress if coding == GZIP else brotli.decompress
    assert decode(pieces) == decode(whole) == body
    assert len(whole) < len(body) // 10
