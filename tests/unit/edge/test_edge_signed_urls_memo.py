"""Verified signed URLs remembered by :class:`speedproxy.edge.signed_urls.SignedUrlFilter`:
a repeated one is not hashed again, an expired one is still refused, a forged one
always gets the constant-time comparison."""

from __future__ import annotations

from typing import List

import pytest

from speedproxy.edge import signed_urls
from speedproxy.edge.signed_urls import Signer, signature

from edge_support import error_of, proxy_with, refused

KEY = "first-key-0123456789abcdef"

ROUTES = f"""\
video:
  path: /v/
  upstream: default
  signed_urls: {{secrets: ["{KEY}"]}}
bound:
  path: /b/
  upstream: default
  signed_urls: {{secrets: ["{KEY}"], bind_client_ip: true}}
"""


@pytest.fixture()
def proxy():
    proxy = proxy_with(ROUTES)
    proxy.reactor.advance(1_700_000_000)
    return proxy


@pytest.fixture()
def checks(monkeypatch) -> List[bytes]:
    """The messages whose MAC was computed and compared (``Signer._check``)."""
    seen: List[bytes] = []
    real = Signer._check

    def spy(self, message: bytes, sig: bytes) -> bool:
        seen.append(message)
        return real(self, message, sig)

    monkeypatch.setattr(Signer, "_check", spy)
    return seen


def _get(proxy, target: str, client_ip: str = "192.0.2.1"):
    client = proxy.client(client_ip)
    client.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target.encode())
    return client


_backends: dict = {}


def _through(proxy, target: str, client_ip: str = "192.0.2.1") -> bytes:
    """Send a request that must reach the backend; return the backend's request line."""
    client = _get(proxy, target, client_ip)
    if proxy.pending_connects():
        _backends[proxy] = proxy.accept()
    backend = _backends[proxy]  # (else the pooled connection is used again)
    line = backend.take().split(b"\r\n", 1)[0]
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.response().status == 200
    return line


def test_a_repeated_signed_url_is_verified_once(proxy, checks) -> None:
    exp = int(proxy.reactor.seconds()) + 60
    target = f"/v/a.ts?x=1&exp={exp}&sig={signature(KEY, '/v/a.ts', exp, query='x=1')}"
    for _ in range(3):
        # Each time the backend (and the cache key) get the URL without the signature.
        assert _through(proxy, target) == b"GET /v/a.ts?x=1 HTTP/1.1"
    assert len(checks) == 1
    assert refused(proxy, "video")["signature"] == 0


def test_a_remembered_url_is_refused_once_it_expires(proxy, checks) -> None:
    exp = int(proxy.reactor.seconds()) + 60
    target = f"/v/a.ts?exp={exp}&sig={signature(KEY, '/v/a.ts', exp)}"
    _through(proxy, target)
    proxy.reactor.advance(61)
    response = _get(proxy, target).response()
    assert response.status == 403 and error_of(response) == "signature_expired"
    assert proxy.pending_connects() == 0
    # (forgotten then: a later request is checked again, and refused again)
    response = _get(proxy, target).response()
    assert error_of(response) == "signature_expired"
    assert len(checks) == 2
    assert refused(proxy, "video")["signature"] == 2


def test_a_forged_signature_is_always_compared(proxy, checks, monkeypatch) -> None:
    compared = []
    real = signed_urls.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(signed_urls.hmac, "compare_digest", spy)
    exp = int(proxy.reactor.seconds()) + 60
    good = signature(KEY, "/v/a.ts", exp)
    _through(proxy, f"/v/a.ts?exp={exp}&sig={good}")
    forged = good[:-1] + ("0" if good[-1] != "0" else "1")
    for _ in range(2):
        response = _get(proxy, f"/v/a.ts?exp={exp}&sig={forged}").response()
        assert error_of(response) == "signature_invalid"
    assert len(checks) == 3  # the good one once, the forged one every time
    assert compared[1:] == [bytes.fromhex(forged)] * 2  # each in constant time


def test_a_bound_url_is_remembered_per_client_address(proxy, checks) -> None:
    exp = int(proxy.reactor.seconds()) + 60
    target = f"/b/a.ts?exp={exp}&sig={signature(KEY, '/b/a.ts', exp, '192.0.2.1')}"
    _through(proxy, target, "192.0.2.1")
    _through(proxy, target, "192.0.2.1")
    assert len(checks) == 1
    response = _get(proxy, target, "192.0.2.2").response()
    assert error_of(response) == "signature_invalid"


def test_the_memo_is_bounded(proxy, checks, monkeypatch) -> None:
    monkeypatch.setattr(signed_urls, "VERIFIED_MEMO", 2)
    exp = int(proxy.reactor.seconds()) + 60
    targets = [f"/v/{name}.ts?exp={exp}&sig={signature(KEY, f'/v/{name}.ts', exp)}" for name in "abc"]
    for target in targets:
        _through(proxy, target)
    assert len(checks) == 3
    (route,) = [r for r in proxy.core.router.routes if r.name == "video"]
    filters = [f for f in route.filters.filters if isinstance(f, signed_urls.SignedUrlFilter)]
    assert len(filters) == 1 and len(filters[0]._verified) <= 2
    _through(proxy, targets[2])  # the last one is still known
    assert len(checks) == 3


def test_long_targets_are_not_remembered(proxy, checks, monkeypatch) -> None:
    monkeypatch.setattr(signed_urls, "VERIFIED_TARGET", 40)
    exp = int(proxy.reactor.seconds()) + 60
    target = f"/v/a.ts?exp={exp}&sig={signature(KEY, '/v/a.ts', exp)}"
    assert len(target) > 40
    _through(proxy, target)
    _through(proxy, target)
    assert len(checks) == 2
