"""Tests for :mod:`speedproxy.edge.canonical_query`: what of a query a signature covers."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Dict, List, Tuple
from urllib.parse import quote_from_bytes, unquote_to_bytes

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from speedproxy.config import parse_config
from speedproxy.config.model import SignedUrlsConfig
from speedproxy.edge.canonical_query import LL_HLS_DIRECTIVES, canonical_query, normal, unsigned_names
from speedproxy.edge.signed_urls import Signer

KEY = "a-signing-key-0123456789"
UNSIGNED = frozenset((b"exp", b"sig"))
SIGNER = Signer(SignedUrlsConfig(secrets=(KEY,), sources=(KEY,)))
PATH = b"/v/movie.ts"
EXPIRES = 1767225600
README = Path(__file__).resolve().parents[3] / "README.rst"

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
#: Bytes a client may send unencoded in a query besides the unreserved ones
#: (never ``&``, ``=``, ``%`` or ``+``, which mean something as written).
_RAW_TOO = b"!$'()*,;:@/?" + bytes(range(0x80, 0x100))


# -- strategies: a query as (name, value) byte strings, and ways to write them -------------

#: One byte of a name or value, and whether it is written as ``%XX`` (``None``: ``+`` as written).
_unit = st.one_of(
    st.tuples(st.integers(0, 255), st.booleans()),
    st.just((ord("+"), None)),
)


def _render(units: List[Tuple[int, object]], lower: List[bool]) -> bytes:
    """``units`` written out: encoded where asked or needed, hex digits in the case ``lower`` says."""
    out = b""
    for index, (byte, encoded) in enumerate(units):
        if encoded is None:
            out += b"+"
        elif encoded or not (byte in _UNRESERVED or byte in _RAW_TOO):
            out += (b"%%%02x" if lower[index % len(lower)] else b"%%%02X") % byte
        else:
            out += bytes((byte,))
    return out


_text_units = st.lists(_unit, max_size=6)
_name_units = st.lists(_unit, min_size=1, max_size=6)
_pairs = st.lists(st.tuples(_name_units, _text_units), min_size=1, max_size=6)


def _query(pairs, lower=(False,)) -> bytes:
    return b"&".join(_render(name, list(lower)) + b"=" + _render(value, list(lower)) for name, value in pairs)


def _canonical_piece(name, value) -> bytes:
    return canonical_query(_render(name, [False]) + b"=" + _render(value, [False]))


def _signed_for(query: bytes) -> bytes:
    return SIGNER.query(PATH.decode(), EXPIRES, None, query.decode("latin-1")).rpartition("sig=")[2].encode()


def _accepted(query: bytes, sig: bytes) -> bool:
    return SIGNER.verify_raw(PATH, EXPIRES, sig, "192.0.2.1", query)


# -- the documented form ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        (b"", b""),
        (b"quality=hd&lang=en", b"lang=en&quality=hd"),
        (b"quality=hd&exp=1&lang=en&sig=ab", b"lang=en&quality=hd"),  # the signature's own: left out
        (b"b=%7e&a=%2f&c", b"a=%2F&b=~&c="),  # %XX normalised; no "=": an empty value
        (b"&&a=1&&", b"a=1"),  # empty pieces dropped
        (b"t=a b/c", b"t=a%20b%2Fc"),
        (b"q=a+b&r=a%2Bb&s=a%20b", b"q=a+b&r=a%2Bb&s=a%20b"),  # + is neither %2B nor %20
        (b"a=2&b=1&a=1", b"a=2&a=1&b=1"),  # by name; one name's values keep their order
        (b"a.b=1&a=2&a-b=3", b"a=2&a-b=3&a.b=1"),  # byte order of the names
        (b"x=%zz&y=%", b"x=%25zz&y=%25"),  # a lone % is a %
        (b"n=caf\xe9", b"n=caf%E9"),  # bytes as sent, not text
        (b"e%78p=1", b"exp=1"),  # unsigned names are matched as written only
    ],
)
def test_the_canonical_form(query: bytes, expected: bytes) -> None:
    assert canonical_query(query, UNSIGNED) == expected


def test_normal_keeps_unreserved_characters_and_plus() -> None:
    assert normal(b"%41%7a%2d%2E%5f%7E") == b"Az-._~"
    assert normal(b"a+b%2b%2B") == b"a+b%2B%2B"
    assert normal(b"%C3%a9") == b"%C3%A9"


@given(text=st.one_of(st.binary(max_size=30), st.text(alphabet="%+aZ09-._~=&/ 2bBfF\u00e9", max_size=30).map(str.encode)))
def test_normal_decodes_then_encodes_all_but_unreserved_and_plus(text: bytes) -> None:
    """The one-pass :func:`normal` is the documented decode-then-encode, ``+`` aside."""
    expected = b"+".join(quote_from_bytes(unquote_to_bytes(part), safe=b"").encode() for part in text.split(b"+"))
    assert normal(text) == expected


def test_the_ll_hls_directives_are_the_hls_filters() -> None:
    from speedproxy.hls import filter as hls_filter

    assert LL_HLS_DIRECTIVES == hls_filter.LL_HLS_DIRECTIVES


def test_unsigned_names_of_a_route() -> None:
    config = parse_config(
        "backends: {default: [{id: a, host: 10.0.0.1, port: 80}]}\n"
        "routing:\n"
        "  default: {path: /, upstream: default, signed_urls: {secrets: ['%s']}}\n"
        "  tv:\n"
        "    path: /tv/\n"
        "    upstream: default\n"
        "    cache: {enabled: true}\n"
        "    hls: {enabled: true}\n"
        "    sessions: {cookie: tvs}\n"
        "    signed_urls: {secrets: ['%s'], param_signature: token, param_expires: until}\n" % (KEY, KEY)
    )
    assert unsigned_names(config.routing["default"]) == {b"exp", b"sig"}
    assert unsigned_names(config.routing["tv"]) == {b"token", b"until", b"tvs", *LL_HLS_DIRECTIVES}


# -- properties -------------------------------------------------------------------------------


@given(pairs=_pairs, order=st.data())
def test_reordering_parameters_is_accepted(pairs, order) -> None:
    """Any order of the parameters that keeps one name's values in their order signs the same."""
    moved = order.draw(st.permutations(pairs))
    # Put each name's values back in their first order (they are covered: backends differ on which wins).
    by_name: Dict[bytes, List] = {}
    for pair in pairs:
        by_name.setdefault(_canonical_piece(pair[0], []), []).append(pair)
    moved = [by_name[_canonical_piece(name, [])].pop(0) for name, _ in moved]
    query = _query(pairs)
    assert canonical_query(_query(moved)) == canonical_query(query)
    assert _accepted(_query(moved), _signed_for(query))


@given(pairs=_pairs, lower=st.lists(st.booleans(), min_size=1, max_size=4), data=st.data())
def test_any_writing_of_the_same_parameters_is_accepted(pairs, lower, data) -> None:
    """%XX in either case, or the character itself where it may be written as is: the same query."""
    rewritten = [
        (
            [(byte, encoded if encoded is None else data.draw(st.booleans())) for byte, encoded in name],
            [(byte, encoded if encoded is None else data.draw(st.booleans())) for byte, encoded in value],
        )
        for name, value in pairs
    ]
    query = _query(pairs)
    assert canonical_query(_query(rewritten, lower)) == canonical_query(query)
    assert _accepted(_query(rewritten, lower), _signed_for(query))


@given(query=st.binary(max_size=40))
def test_the_canonical_form_is_its_own_canonical_form(query: bytes) -> None:
    once = canonical_query(query, UNSIGNED)
    assert canonical_query(once, UNSIGNED) == once
    assert once.isascii()


@settings(max_examples=300)
@given(pairs=_pairs, data=st.data())
def test_any_change_to_any_parameter_is_refused(pairs, data) -> None:
    """Adding, removing, renaming a parameter or changing its value: the signature no longer holds."""
    query = _query(pairs)
    sig = _signed_for(query)
    assert _accepted(query, sig)
    changed = list(pairs)
    kind = data.draw(st.sampled_from(["add", "remove", "rename", "revalue", "swap"]))
    if kind == "add":
        name, value = data.draw(st.tuples(_name_units, _text_units))
        assume(canonical_query(_query([(name, value)]), UNSIGNED))  # not a signature parameter
        changed.insert(data.draw(st.integers(0, len(changed))), (name, value))
    elif kind == "remove":
        changed.pop(data.draw(st.integers(0, len(changed) - 1)))
    elif kind == "swap":  # two values of one name change places
        index = data.draw(st.integers(0, len(changed) - 1))
        name, value = changed[index]
        other = data.draw(_text_units)
        assume(_canonical_piece(name, other) != _canonical_piece(name, value))
        query = _query(changed[:index] + [(name, value), (name, other)] + changed[index + 1:])
        sig = _signed_for(query)
        changed[index:index + 1] = [(name, other), (name, value)]
    else:
        index = data.draw(st.integers(0, len(changed) - 1))
        name, value = changed[index]
        new = data.draw(_name_units if kind == "rename" else _text_units)
        if kind == "rename":
            assume(_canonical_piece(new, value) != _canonical_piece(name, value))
            changed[index] = (new, value)
        else:
            assume(_canonical_piece(name, new) != _canonical_piece(name, value))
            changed[index] = (name, new)
    assume(canonical_query(query, UNSIGNED) == canonical_query(query))  # no signature parameter in the query
    assert not _accepted(_query(changed), sig)


def test_with_query_ignore_any_query_is_accepted() -> None:
    loose = Signer(SignedUrlsConfig(secrets=(KEY,), sources=(KEY,), query="ignore"))
    sig = loose.query(PATH.decode(), EXPIRES, None, "a=1").rpartition("sig=")[2].encode()
    for query in (b"", b"a=1", b"a=2&b=3"):
        assert loose.verify_raw(PATH, EXPIRES, sig, "192.0.2.1", query)
    # ...and it is the signature of the path alone, as before the query was covered.
    assert SIGNER.verify_raw(PATH, EXPIRES, sig, "192.0.2.1", b"")


# -- the README's recipe ------------------------------------------------------------------------


def _readme_recipe():
    """The Python signing recipe of README.rst's *Signed URLs* section, run."""
    text = README.read_text()
    section = text[text.index("\nSigned URLs\n"):]
    start = section.index("    import hashlib, hmac, time")
    lines = []
    for line in section[start:].splitlines():
        if line and not line.startswith(" "):
            break
        lines.append(line)
    namespace: dict = {}
    exec(textwrap.dedent("\n".join(lines)), namespace)  # noqa: S102 - our own README
    return namespace


@given(query=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="#"), max_size=40))
def test_the_readme_recipe_makes_the_same_canonical_form(query: str) -> None:
    recipe = _readme_recipe_cached()
    assert recipe["canonical"](query).encode() == canonical_query(query.encode(), UNSIGNED)


def test_the_readme_recipe_signs_urls_the_proxy_accepts() -> None:
    recipe = _readme_recipe_cached()
    url = recipe["sign"](KEY, "/v/movie.ts", "quality=hd&lang=en%2dGB&t=a+b", 3600)
    target, _, query = url.partition("?")
    params = dict(piece.split("=", 1) for piece in query.split("&"))
    kept = query.rpartition("&exp=")[0].encode()
    assert SIGNER.verify_raw(target.encode(), int(params["exp"]), params["sig"].encode(), "192.0.2.1", kept)
    assert not SIGNER.verify_raw(target.encode(), int(params["exp"]), params["sig"].encode(), "192.0.2.1", kept + b"&x=1")


_RECIPE: dict = {}


def _readme_recipe_cached() -> dict:
    if not _RECIPE:
        _RECIPE.update(_readme_recipe())
    return _RECIPE
