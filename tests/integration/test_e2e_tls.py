"""The TLS listener, with real certificates from trustme and a real TLS client."""

from __future__ import annotations

import hashlib
import http.client
import ssl
from pathlib import Path

import pytest
import trustme

from speedproxy.testing import fixed_body, pattern_sha256

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def tls_files(tmp_path: Path):
    authority = trustme.CA()
    server = authority.issue_cert("localhost", "127.0.0.1")
    cert = tmp_path / "server.crt"
    key = tmp_path / "server.key"
    ca = tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    return cert, key, ca


def _get(port: int, ca: Path, path: str) -> tuple:
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("X-Speedproxy")
    finally:
        connection.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_https_large_then_small_responses(stack, tls_files, workers: int) -> None:
    """A large answer that backs up TLS's buffer must not leave a stuck pooled
    backend connection behind: the small requests after it all get answers."""
    cert, key, ca = tls_files
    origin = stack.backend(fixed_body(512 * 1024), name="origin")
    proxy = stack.proxy(
        origin,
        config={"ssl": {"enabled": True, "cert_file": str(cert), "key_file": str(key)}},
        workers=workers,
        upstream_read_timeout="5s",
    )
    status, body, tag = _get(proxy.port, ca, "/big")
    assert (status, tag) == (200, "0.1.0")
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(512 * 1024)
    for index in range(8):
        status, body, _ = _get(proxy.port, ca, f"/big?{index}")
        assert status == 200 and len(body) == 512 * 1024


def test_plain_http_to_the_tls_port_is_not_served(stack, tls_files) -> None:
    cert, key, _ = tls_files
    origin = stack.backend(name="origin")
    proxy = stack.proxy(
        origin, config={"ssl": {"enabled": True, "cert_file": str(cert), "key_file": str(key)}}, workers=0
    )
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            connection.request("GET", "/")
            connection.getresponse().read()
    finally:
        connection.close()
    assert not origin.requests  # nothing was forwarded
