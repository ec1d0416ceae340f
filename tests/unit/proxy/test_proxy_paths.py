"""Tests for :mod:`speedproxy.proxy.paths`."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from speedproxy.proxy.paths import PathError, normalise_path, split_target


@pytest.mark.parametrize(
    "path,expected",
    [
        (b"/", b"/"),
        (b"/a/b", b"/a/b"),
        (b"/public/../admin", b"/admin"),
        (b"/a/./b/../c", b"/a/c"),
        (b"/a/b/..", b"/a/"),
        (b"/a/b/.", b"/a/b/"),
        (b"/.", b"/"),
        (b"/a/.hidden", b"/a/.hidden"),
        (b"/a/..b/c", b"/a/..b/c"),
        (b"/%7Euser/%41%62", b"/~user/Ab"),
        (b"/a/%2e%2E/b", b"/b"),
        (b"/a%2fb", None),
        (b"/a%2Fb", None),
        (b"/a%5cb", None),
        (b"/a\\b", None),
        (b"/a%20b", b"/a%20b"),
        (b"/a%c3%a9", b"/a%C3%A9"),
        (b"/a//b", b"/a//b"),
    ],
)
def test_normalise(path: bytes, expected: bytes) -> None:
    if expected is None:
        with pytest.raises(PathError, match="'/' or '\\\\'|'\\\\'"):
            normalise_path(path)
    else:
        assert normalise_path(path) == expected


@pytest.mark.parametrize(
    "path,reason",
    [
        (b"/..", "climbs above the root"),
        (b"/../x", "climbs above the root"),
        (b"/a/../../x", "climbs above the root"),
        (b"/%2e%2e/x", "climbs above the root"),
        (b"/a%00b", "%00"),
        (b"/a%0ab", "control"),
        (b"/a%7f", "control"),
        (b"/a%zz", "malformed"),
        (b"/a%4", "malformed"),
        (b"/a%", "malformed"),
    ],
)
def test_refused(path: bytes, reason: str) -> None:
    with pytest.raises(PathError, match=reason):
        normalise_path(path)


def test_escaped_slashes_kept_when_configured() -> None:
    assert normalise_path(b"/a%2fb/%5c", keep_escaped_slashes=True) == b"/a%2Fb/%5C"
    assert normalise_path(b"/a\\b", keep_escaped_slashes=True) == b"/a\\b"


def test_merge_slashes() -> None:
    assert normalise_path(b"//a///b/", merge_slashes=True) == b"/a/b/"
    assert normalise_path(b"/a//../b", merge_slashes=True) == b"/b"


def test_unchanged_path_is_the_same_object() -> None:
    path = b"/a/b/c.txt"
    assert normalise_path(path) is path


def test_split_target() -> None:
    assert split_target(b"/a?b=1?c") == (b"/a", b"?b=1?c")
    assert split_target(b"/a") == (b"/a", b"")


_SEGMENT = st.sampled_from([b"a", b"b", b".", b"..", b"", b"%2e", b"%2E%2e", b"%41", b"x%20y", b"~"])


@given(st.lists(_SEGMENT, max_size=8))
def test_normalised_paths_are_stable_and_dot_free(segments) -> None:
    path = b"/" + b"/".join(segments)
    try:
        normalised = normalise_path(path)
    except PathError as error:
        assert "climbs above the root" in str(error)
        return
    assert normalise_path(normalised) == normalised
    parts = normalised.split(b"/")
    assert b"." not in parts and b".." not in parts
    if b"" in segments[:-1]:
        return  # RFC 3986 keeps empty segments, which posixpath folds
    # The same place as posixpath's resolution of the decoded path.
    decoded = path.replace(b"%2e", b".").replace(b"%2E", b".").replace(b"%41", b"A")
    assert posixpath.normpath(normalised.decode()).lstrip("/") == posixpath.normpath(decoded.decode()).lstrip("/")
