"""Tests for :mod:`speedproxy.edge.signed_urls`: HMAC-signed, expiring URLs."""

from __future__ import annotations

import hashlib
import hmac
import json
import re

import pytest

from speedproxy.config.model import SignedUrlsConfig
from speedproxy.edge.signed_urls import Signer, signature, signed_query, take_params, verify
from speedproxy.hls.rewrite import map_uris

from edge_support import error_of, proxy_with, refused

KEY = "first-key-0123456789abcdef"
OLD = "older-key-0123456789abcdef"

ROUTES = f"""\
video:
  path: /v/
  upstream: default
  signed_urls: {{secrets: ["{KEY}", "{OLD}"]}}
bound:
  path: /b/
  upstream: default
  signed_urls: {{secrets: ["{KEY}"], bind_client_ip: true, param_signature: s, param_expires: e}}
hls:
  path: /hls/
  upstream: default
  cache: {{enabled: true}}
  hls: {{enabled: true, prefetch_depth: 0}}
  signed_urls: {{secrets: ["{KEY}"]}}
loose:
  path: /loose/
  upstream: default
  signed_urls: {{secrets: ["{KEY}"], query: ignore}}
plain: {{path: /, upstream: default}}
"""

SETTINGS = SignedUrlsConfig(secrets=(KEY, OLD), sources=(KEY, OLD))


def test_the_signature_is_the_hmac_of_path_and_expiry_documented() -> None:
    expected = hmac.new(KEY.encode(), b"/v/a.ts\n1767225600", hashlib.sha256).hexdigest()
    assert signature(KEY, "/v/a.ts", 1767225600) == expected
    bound = hmac.new(KEY.encode(), b"/v/a.ts\n1767225600\n192.0.2.1", hashlib.sha256).hexdigest()
    assert signature(KEY, "/v/a.ts", 1767225600, "::ffff:192.0.2.1") == bound


def test_the_first_secret_signs_and_every_one_verifies() -> None:
    assert signed_query(SETTINGS, "/v/a", 100) == f"exp=100&sig={signature(KEY, '/v/a', 100)}"
    assert verify(SETTINGS, "/v/a", 100, signature(OLD, "/v/a", 100), "192.0.2.1")
    assert not verify(SETTINGS, "/v/a", 100, signature("a-third-key-0123456789", "/v/a", 100), "192.0.2.1")
    assert not verify(SETTINGS, "/v/b", 100, signature(KEY, "/v/a", 100), "192.0.2.1")
    assert not verify(SETTINGS, "/v/a", 101, signature(KEY, "/v/a", 100), "192.0.2.1")


@pytest.mark.parametrize("length", [0, 1, 16, 63, 64, 65, 200])
def test_the_route_signer_computes_the_same_hmac_sha256_for_any_key_length(length: int) -> None:
    secret = ("k" * length)
    settings = SignedUrlsConfig(secrets=(secret,), sources=(secret,))
    signer = Signer(settings)
    expected = hmac.new(secret.encode(), b"/v/a.ts\n1767225600", hashlib.sha256).hexdigest()
    assert signer.query("/v/a.ts", 1767225600, None) == f"exp=1767225600&sig={expected}"
    assert signer.verify_raw(b"/v/a.ts", 1767225600, expected.encode(), "192.0.2.1")
    assert signer.verify_raw(b"/v/a.ts", 1767225600, expected.upper().encode(), "192.0.2.1")


def test_the_route_signer_verifies_with_every_secret() -> None:
    signer = Signer(SETTINGS)
    for key in (KEY, OLD):
        assert signer.verify_raw(b"/v/a", 100, signature(key, "/v/a", 100).encode(), "192.0.2.1")
    assert not signer.verify_raw(b"/v/a", 100, signature("a-third-key-0123456789", "/v/a", 100).encode(), "192.0.2.1")
    assert not signer.verify_raw(b"/v/a", 100, b"zz" * 32, "192.0.2.1")
    # A path that is not ASCII is signed as its UTF-8 text, as before.
    text = "/v/caf\u00e9"
    assert signer.verify_raw(text.encode("latin-1"), 100, signature(KEY, text, 100).encode(), "192.0.2.1")


def test_take_params_removes_only_the_named_parameters() -> None:
    assert take_params(b"?a=1&sig=x&exp=2&b", (b"sig", b"exp")) == (b"?a=1&b", [[b"x"], [b"2"]])
    assert take_params(b"?sig=x&exp=2", (b"sig", b"exp")) == (b"", [[b"x"], [b"2"]])
    assert take_params(b"", (b"sig", b"exp")) == (b"", [[], []])


def _get(proxy, target: str, client_ip: str = "192.0.2.1"):
    client = proxy.client(client_ip)
    client.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target.encode())
    return client


def _now(proxy) -> int:
    return int(proxy.reactor.seconds())


@pytest.fixture()
def proxy():
    proxy = proxy_with(ROUTES)
    proxy.reactor.advance(1_700_000_000)
    return proxy


def test_a_valid_signature_goes_to_the_backend_without_its_parameters(proxy) -> None:
    exp = _now(proxy) + 60
    client = _get(proxy, f"/v/a.ts?x=1&exp={exp}&sig={signature(OLD, '/v/a.ts', exp, query='y=2&x=1')}&y=2")
    backend = proxy.accept()
    assert backend.received().startswith(b"GET /v/a.ts?x=1&y=2 HTTP/1.1\r\n")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.response().status == 200
    assert refused(proxy, "video")["signature"] == 0


@pytest.mark.parametrize(
    "query, code",
    [
        ("", "signature_missing"),
        ("?exp=EXP", "signature_missing"),
        ("?sig=SIG", "signature_missing"),
        ("?exp=EXP&sig=0000", "signature_invalid"),
        ("?exp=EXP&sig=SIG&sig=SIG", "signature_invalid"),
        ("?exp=soon&sig=SIG", "signature_invalid"),
        ("?exp=PAST&sig=PASTSIG", "signature_expired"),
        ("?exp=EXP&sig=OTHER", "signature_invalid"),  # signed for another path
    ],
)
def test_missing_bad_or_expired_is_a_403_naming_which(proxy, query: str, code: str) -> None:
    exp = _now(proxy) + 60
    past = _now(proxy) - 1
    query = (
        query.replace("PASTSIG", signature(KEY, "/v/a.ts", past))
        .replace("PAST", str(past))
        .replace("EXP", str(exp))
        .replace("OTHER", signature(KEY, "/v/b.ts", exp))
        .replace("SIG", signature(KEY, "/v/a.ts", exp))
    )
    client = _get(proxy, "/v/a.ts" + query)
    response = client.response()
    assert response.status == 403
    assert error_of(response) == code
    assert json.loads(response.body)["request_id"] == response.header(b"x-request-id").decode()
    assert proxy.pending_connects() == 0
    assert refused(proxy, "video")["signature"] == 1


def test_the_signed_path_is_the_normalised_one(proxy) -> None:
    exp = _now(proxy) + 60
    client = _get(proxy, f"/v/x/../%61.ts?exp={exp}&sig={signature(KEY, '/v/a.ts', exp)}")
    backend = proxy.accept()
    assert backend.received().startswith(b"GET /v/a.ts HTTP/1.1")
    backend.send(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert client.response().status == 204


def test_a_bound_signature_holds_only_for_its_client_address(proxy) -> None:
    exp = _now(proxy) + 60
    sig = signature(KEY, "/b/a.ts", exp, "192.0.2.1")
    client = _get(proxy, f"/b/a.ts?e={exp}&s={sig}", "192.0.2.1")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.response().status == 200
    other = _get(proxy, f"/b/a.ts?e={exp}&s={sig}", "192.0.2.2")
    assert error_of(other.response()) == "signature_invalid"


PLAYLIST = (
    b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=AES-128,URI=\"key.bin\"\n"
    b"#EXTINF:2,\nseg0.ts\n#EXTINF:2,\n../v0/seg1.ts?n=1\n#EXTINF:2,\n/elsewhere/seg2.ts\n"
    b"#EXTINF:2,\nhttps://cdn.example.net/seg3.ts\n#EXTINF:2,\nseg4.ts?b=%7e2&a=1&exp=9&sig=old\n#EXT-X-ENDLIST\n"
)


def _uris(body: bytes):
    found = []
    map_uris(body, lambda uri: found.append(uri) or uri)
    return found


def _check_signed(proxy, body: bytes, exp: int) -> None:
    uris = _uris(body)
    assert uris[0] == f"key.bin?exp={exp}&sig={signature(KEY, '/hls/v0/key.bin', exp)}"
    assert uris[1] == f"seg0.ts?exp={exp}&sig={signature(KEY, '/hls/v0/seg0.ts', exp)}"
    assert uris[2] == f"../v0/seg1.ts?n=1&exp={exp}&sig={signature(KEY, '/hls/v0/seg1.ts', exp, query='n=1')}"
    assert uris[3] == "/elsewhere/seg2.ts"  # a route without signed_urls: left alone
    assert uris[4] == "https://cdn.example.net/seg3.ts"  # another origin's
    # Its own query kept as written and signed (stale signature parameters dropped).
    assert uris[5] == f"seg4.ts?b=%7e2&a=1&exp={exp}&sig={signature(KEY, '/hls/v0/seg4.ts', exp, query='a=1&b=~2')}"
    assert body.startswith(b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n")


def test_hls_playlists_served_to_a_signed_request_list_signed_uris_on_a_miss_and_a_hit(proxy) -> None:
    exp = _now(proxy) + 600
    target = f"/hls/v0/index.m3u8?exp={exp}&sig={signature(KEY, '/hls/v0/index.m3u8', exp)}"
    client = _get(proxy, target)
    backend = proxy.accept()
    assert backend.take().startswith(b"GET /hls/v0/index.m3u8 HTTP/1.1")
    backend.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\nContent-Length: %d\r\n"
        b"Cache-Control: max-age=60\r\n\r\n%s" % (len(PLAYLIST), PLAYLIST)
    )
    _check_signed(proxy, client.response().body, exp)
    # From the cache, which keeps it unsigned, for another expiry: signed for that one.
    later = exp + 100
    hit = _get(proxy, f"/hls/v0/index.m3u8?exp={later}&sig={signature(KEY, '/hls/v0/index.m3u8', later)}").response()
    assert b"hit" in hit.header(b"cache-status")
    _check_signed(proxy, hit.body, later)
    assert int(hit.header(b"content-length")) == len(hit.body)
    # A segment URI as signed in the playlist is accepted (on the pooled backend connection).
    seg = re.search(rb"seg0\.ts\?[^\n]*", hit.body).group(0).decode()
    _get(proxy, "/hls/v0/" + seg)
    assert backend.take().startswith(b"GET /hls/v0/seg0.ts HTTP/1.1")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    # ...and one with its own query, with that query only.
    seg = re.search(rb"seg4\.ts\?[^\n]*", hit.body).group(0).decode()
    _get(proxy, "/hls/v0/" + seg)
    assert backend.take().startswith(b"GET /hls/v0/seg4.ts?b=%7e2&a=1 HTTP/1.1")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    tampered = _get(proxy, "/hls/v0/" + seg.replace("a=1", "a=2")).response()
    assert (tampered.status, error_of(tampered)) == (403, "signature_invalid")


def test_the_signature_covers_the_query_in_canonical_form_documented() -> None:
    message = b"/v/a.ts?lang=en-GB&quality=hd\n1767225600"
    expected = hmac.new(KEY.encode(), message, hashlib.sha256).hexdigest()
    assert signature(KEY, "/v/a.ts", 1767225600, query="quality=hd&lang=en%2dGB") == expected
    assert signed_query(SETTINGS, "/v/a.ts", 1767225600, query="quality=hd&exp=1&lang=en-GB") == (
        f"exp=1767225600&sig={expected}"
    )
    assert verify(SETTINGS, "/v/a.ts", 1767225600, expected, "192.0.2.1", "lang=en-GB&quality=hd")
    assert not verify(SETTINGS, "/v/a.ts", 1767225600, expected, "192.0.2.1", "lang=en-GB&quality=4k")
    bound = hmac.new(KEY.encode(), b"/b/a.ts?x=1\n1767225600\n192.0.2.1", hashlib.sha256).hexdigest()
    assert signature(KEY, "/b/a.ts", 1767225600, "192.0.2.1", "x=1") == bound


def _signed_target(path: str, query: str, exp: int, key: str = KEY) -> str:
    sig = signature(key, path, exp, query=query)
    return f"{path}?{query}&exp={exp}&sig={sig}" if query else f"{path}?exp={exp}&sig={sig}"


@pytest.mark.parametrize(
    "sent, status",
    [
        ("{signed}", 200),
        ("/v/a.ts?lang=en&exp={exp}&quality=hd&sig={sig}", 200),  # another order
        ("/v/a.ts?quality=h%64&lang=en&exp={exp}&sig={sig}", 200),  # another writing of the same value
        ("{signed}&debug=1", 403),  # appended
        ("/v/a.ts?quality=4k&lang=en&exp={exp}&sig={sig}", 403),  # changed
        ("/v/a.ts?quality=hd&exp={exp}&sig={sig}", 403),  # removed
        ("/v/a.ts?quality=hd&lang=en&lang=fr&exp={exp}&sig={sig}", 403),  # repeated with another value
        ("/v/a.ts?quality=hd&lang=en&&exp={exp}&sig={sig}", 200),  # an empty piece is nothing
    ],
)
def test_adding_removing_or_changing_a_parameter_is_refused(proxy, sent: str, status: int) -> None:
    exp = _now(proxy) + 60
    signed = _signed_target("/v/a.ts", "quality=hd&lang=en", exp)
    sig = signed.rpartition("sig=")[2]
    client = _get(proxy, sent.format(signed=signed, exp=exp, sig=sig))
    if status == 200:
        backend = proxy.accept()
        assert backend.received().startswith(b"GET /v/a.ts?")  # with the query as sent, less exp and sig
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert client.response().status == 200
        assert refused(proxy, "video")["signature"] == 0
    else:
        response = client.response()
        assert (response.status, error_of(response)) == (403, "signature_invalid")
        assert proxy.pending_connects() == 0
        assert refused(proxy, "video")["signature"] == 1


def test_with_query_ignore_the_query_is_not_covered(proxy) -> None:
    exp = _now(proxy) + 60
    sig = signature(KEY, "/loose/a.ts", exp)
    client = _get(proxy, f"/loose/a.ts?anything=1&exp={exp}&sig={sig}&more")
    backend = proxy.accept()
    assert backend.received().startswith(b"GET /loose/a.ts?anything=1&more HTTP/1.1\r\n")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.response().status == 200


def test_ll_hls_directives_and_the_session_parameter_are_not_covered() -> None:
    from speedproxy.config import parse_config
    from speedproxy.edge.canonical_query import unsigned_names

    config = parse_config(
        "backends: {default: [{id: a, host: 10.0.0.1, port: 80}]}\n"
        "routing:\n"
        f"  tv: {{path: /tv/, upstream: default, cache: {{enabled: true}}, hls: {{enabled: true}}, sessions: {{}},"
        f" signed_urls: {{secrets: ['{KEY}']}}}}\n"
    )
    route = config.routing["tv"]
    signer = Signer(route.signed_urls, unsigned_names(route))
    sig = signature(KEY, "/tv/index.m3u8", 100, query="v=2").encode()
    assert signer.verify_raw(b"/tv/index.m3u8", 100, sig, "192.0.2.1", b"v=2&_HLS_msn=12&_HLS_part=1&spx_session=abc")
    assert not signer.verify_raw(b"/tv/index.m3u8", 100, sig, "192.0.2.1", b"v=2&_HLS_msn=12&other=1")


def test_internal_requests_are_never_refused(proxy) -> None:
    from speedproxy.cache.fetch import fetch

    statuses = []
    fetch(proxy.core, b"h", b"/v/warm.ts").addCallback(statuses.append)
    backend = proxy.accept()
    assert backend.received().startswith(b"GET /v/warm.ts HTTP/1.1")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert statuses == [200]


def test_a_route_without_signed_urls_keeps_its_query(proxy) -> None:
    client = _get(proxy, "/x?sig=1&exp=2")
    assert proxy.accept().received().startswith(b"GET /x?sig=1&exp=2 HTTP/1.1")


def test_field_reads_a_prebuilt_block() -> None:
    from speedproxy.edge.signed_urls import _field
    from speedproxy.filters.messages import LocalResponse

    response = LocalResponse.prebuilt(200, None, b"Content-Type: application/x-mpegURL\r\nX-Content-Encoding: no\r\n", b"")
    assert _field(response, b"content-type") == b"application/x-mpegURL"
    assert _field(response, b"content-encoding") is None
    response = LocalResponse.prebuilt(200, None, b"Age: 1\r\nContent-Encoding: gzip\r\n", b"")
    assert _field(response, b"content-encoding") == b"gzip"


def test_players_of_one_signed_link_share_one_signing_of_a_playlist(proxy) -> None:
    exp = _now(proxy) + 600
    target = f"/hls/v0/index.m3u8?exp={exp}&sig={signature(KEY, '/hls/v0/index.m3u8', exp)}"
    client = _get(proxy, target)
    backend = proxy.accept()
    backend.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\nContent-Length: %d\r\n"
        b"Cache-Control: max-age=60\r\n\r\n%s" % (len(PLAYLIST), PLAYLIST)
    )
    first = client.response().body
    route = proxy.core.router.match(b"h", b"/hls/v0/index.m3u8")
    signing = next(f for f in route.filters.filters if hasattr(f, "_signed"))
    signing._sign_playlist = lambda view, body: pytest.fail("signed again")  # type: ignore[method-assign]
    for _ in range(2):  # (a route here binds to the address: the same client's link)
        again = _get(proxy, target).response()
        assert b"hit" in again.header(b"cache-status") and again.body == first
    _check_signed(proxy, first, exp)
