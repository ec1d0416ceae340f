"""Accept-Encoding negotiation and the compressors (:mod:`speedproxy.edge.compression_codecs`)."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from speedproxy.edge.compression_codecs import (
    BR,
    GZIP,
    brotli_available,
    compress,
    compressor,
    gzip_sizes,
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


@pytest.mark.parametrize(
    "length,expected",
    [
        (None, (15, 8)),  # unknown: zlib's defaults
        (0, (15, 8)),
        (40_000, (15, 8)),
        (16_122, (15, 8)),  # one byte too many for a 16 KiB window
        (16_121, (14, 7)),
        (1024, (11, 4)),  # nginx's sizes for a 1 KiB answer
        (761, (10, 3)),
        (100, (9, 2)),
        (1, (9, 2)),  # never below what the gzip wrapper allows
    ],
)
def test_gzip_sizes_follow_the_body_length(length, expected) -> None:
    assert gzip_sizes(length) == expected


def test_a_sized_window_still_holds_the_whole_body() -> None:
    for length in range(1, 40_000, 97):
        wbits, memlevel = gzip_sizes(length)
        assert 9 <= wbits <= 15 and 1 <= memlevel <= 8
        assert wbits == 15 or length <= (1 << wbits) - 262


@pytest.mark.parametrize("length", [1, 100, 700, 1024, 5000, 20_000, 70_000])
def test_a_sized_gzip_stream_uses_the_level_and_decodes(length: int) -> None:
    body = (b'{"id": 1, "title": "Episode"},' * (length // 30 + 1))[:length]
    for level in (1, 5, 9):
        stream = compressor(GZIP, level, 4, length)
        out = stream.compress(body) + stream.finish()
        wbits, memlevel = gzip_sizes(length)
        reference = zlib.compressobj(level, zlib.DEFLATED, 16 + wbits, memlevel)
        assert out == reference.compress(body) + reference.flush()
        assert gzip.decompress(out) == body
        assert compress(GZIP, body, level, 4) == out  # a whole body is sized by its length


def test_a_body_longer_than_announced_still_decodes() -> None:
    body = bytes(range(256)) * 200  # 51 200 bytes through a stream sized for 1 KiB
    stream = compressor(GZIP, 5, 4, 1024)
    out = b"".join(stream.compress(body[start : start + 4096]) for start in range(0, len(body), 4096))
    assert gzip.decompress(out + stream.finish()) == body


def test_brotli_keeps_the_quality_and_its_default_window() -> None:
    body = b"#EXTINF:4.0,\nsegment.ts\n" * 40
    for quality in (0, 4, 9):
        stream = compressor(BR, 5, quality, len(body))
        out = stream.compress(body) + stream.finish()
        assert out == brotli.compress(body, quality=quality)
        assert brotli.decompress(out) == body


def test_a_short_gzip_body_comes_out_whole_at_the_end() -> None:
    """A stream sized for a short body keeps its output (zlib's 10-byte header too) until
    ``finish``; one of unknown length hands out what zlib gives at once."""
    body = b'{"id": 1, "title": "Episode"},' * 30
    short = compressor(GZIP, 5, 4, len(body))
    assert short.compress(body[:500]) == b"" and short.compress(body[500:]) == b""
    out = short.finish()
    assert gzip.decompress(out) == body
    unknown = compressor(GZIP, 5, 4)
    first = unknown.compress(body)
    assert first[:2] == b"\x1f\x8b"  # the gzip header, at once
    assert gzip.decompress(first + unknown.finish()) == body


def test_gzip_sizes_are_nginx_loop() -> None:
    """``ngx_http_gzip_filter_memory``'s loop, written out, gives the same sizes."""

    def nginx(length: int):
        wbits, memlevel = 15, 8
        if length > 0:
            while length < ((1 << (wbits - 1)) - 262):
                wbits -= 1
                memlevel -= 1
        return wbits, max(memlevel, 1)

    for length in list(range(0, 1100)) + list(range(1100, 40_000, 7)):
        assert gzip_sizes(length) == nginx(length), length


# -- whole bodies (short, of known length) ----------------------------------------


@pytest.mark.parametrize("coding", [GZIP, BR])
def test_a_whole_body_is_compressed_in_one_call_at_its_end(coding: bytes) -> None:
    from speedproxy.edge.compression_codecs import WholeBody, whole_body_encoder

    body = b'{"id": 1, "title": "Episode 1"},' * 64
    calls = []
    encode = whole_body_encoder(coding, 5, 2)

    def counted(data):
        calls.append(bytes(data))
        return encode(data)

    stream = WholeBody(counted)
    source = b"xx" + body  # pieces may be views of the received bytes, not copies
    assert stream.compress(memoryview(source)[2:500]) == b""
    assert stream.compress(memoryview(source)[500:]) == b""
    out = stream.finish()
    assert calls == [body]
    assert (brotli.decompress(out) if coding == BR else gzip.decompress(out)) == body


def test_the_whole_body_brotli_quality_is_the_one_given() -> None:
    from speedproxy.edge.compression_codecs import WholeBody, whole_body_encoder

    body = b"#EXTINF:4.0,\nsegment.ts\n" * 200
    for quality in (1, 2, 6):
        stream = WholeBody(whole_body_encoder(BR, 5, quality))
        stream.compress(body)
        assert stream.finish() == brotli.compress(body, quality=quality)


def test_a_single_piece_is_not_joined() -> None:
    from speedproxy.edge.compression_codecs import WholeBody

    piece = memoryview(b"abc" * 10)
    seen = []
    stream = WholeBody(lambda data: seen.append(data) or b"z")
    stream.compress(piece)
    assert stream.finish() == b"z" and seen[0] is piece
