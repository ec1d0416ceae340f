"""Tests for :mod:`speedproxy.config.units`."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from speedproxy.config.units import (
    describe_value,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    "value, seconds",
    [
        (30, 30.0),
        (1.5, 1.5),
        (0, 0.0),
        ("0", 0.0),
        ("45", 45.0),
        ("30s", 30.0),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(value, seconds):
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value",
    ["abc", "", "s", "5x", "5 sec", "1.2.3s", "30S", "-5s", "-1", -1, -0.5, True, None, [1],
     math.inf, math.nan, 10**400],
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_messages():
    with pytest.raises(ValueError, match=r'^expected a duration like "30s" or "250ms", got "abc"$'):
        parse_duration("abc")
    with pytest.raises(ValueError, match=r'^expected a non-negative duration, got "-5s"$'):
        parse_duration("-5s")
    with pytest.raises(ValueError, match=r"got a list$"):
        parse_duration([1])


@pytest.mark.parametrize(
    "value, size",
    [
        (0, 0),
        (512, 512),
        (2048.0, 2048),
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("64KiB", 64 * 1024),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("2TiB", 2 * 1024**4),
        ("1KB", 1000),
        ("3MB", 3 * 1000**2),
        ("1GB", 1000**3),
        ("1k", 1024),
        ("8K", 8192),
        ("1m", 1024**2),
        ("1g", 1024**3),
        ("64kib", 64 * 1024),
        ("1.5KiB", 1536),
        ("10 MiB", 10 * 1024**2),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value", ["abc", "", "KiB", "1XB", "1.5B", "0.1KB5", "-1KiB", -1, 1.5, True, None, {"a": 1}]
)
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_parse_size_messages():
    with pytest.raises(ValueError, match=r'^expected a size like "64KiB" or "10MiB", got "lots"$'):
        parse_size("lots")
    with pytest.raises(ValueError, match=r"^expected a non-negative size, got -1$"):
        parse_size(-1)
    with pytest.raises(ValueError, match=r'^expected a whole number of bytes, got "1.5B"$'):
        parse_size("1.5B")


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (30, "30s"),
        (90, "90s"),
        (300.0, "5m"),
        (3600, "1h"),
        (7200, "2h"),
        (0.25, "250ms"),
        (0.001, "1ms"),
        (1.5, "1.5s"),
        (1e-7, "0.0000001s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1, math.inf, math.nan])
def test_format_duration_rejects(seconds):
    with pytest.raises(ValueError):
        format_duration(seconds)


@pytest.mark.parametrize(
    "size, text",
    [
        (0, "0B"),
        (512, "512B"),
        (1536, "1536B"),
        (1024, "1KiB"),
        (64 * 1024, "64KiB"),
        (3 * 1024**2, "3MiB"),
        (1024**3, "1GiB"),
        (5 * 1024**4, "5TiB"),
        (1000, "1KB"),
        (2 * 1000**3, "2GB"),
        (1000 * 1024, "1000KiB"),
    ],
)
def test_format_size(size, text):
    assert format_size(size) == text


@pytest.mark.parametrize("size", [-1, 1.0, True, "1KiB"])
def test_format_size_rejects(size):
    with pytest.raises(ValueError):
        format_size(size)


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_duration_round_trip(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_text_round_trip(count, unit):
    seconds = parse_duration(f"{count}{unit}")
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**64))
def test_size_round_trip(size):
    assert parse_size(format_size(size)) == size


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", "B", "k", "KB", "KiB", "m", "MB", "MiB", "g", "GB", "GiB", "TiB"]),
)
def test_size_text_round_trip(count, unit):
    size = parse_size(f"{count}{unit}")
    assert format_size(size) == format_size(parse_size(format_size(size)))
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    "value, shown",
    [("abc", '"abc"'), (None, "null"), (True, "true"), (3, "3"), (1.5, "1.5"), ([1], "a list"),
     ({}, "a mapping"), (object(), "a object")],
)
def test_describe_value(value, shown):
    assert describe_value(value) == shown
