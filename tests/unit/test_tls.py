"""speedproxy.tls: loading certificate files and swapping them while serving."""

from __future__ import annotations

import datetime
import hashlib
import re
from pathlib import Path
from typing import Tuple

import pytest
import trustme
from OpenSSL import SSL

from speedproxy.tls import ServerTLS, TLSConfigError, load_certificate

# pyOpenSSL deprecates the X509/PKey objects Twisted's CertificateOptions takes.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


def write_pair(authority: trustme.CA, directory: Path, name: str = "server") -> Tuple[Path, Path, str]:
    """A certificate (leaf + intermediate-free chain) and key; the leaf's SHA-256."""
    issued = authority.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    from OpenSSL import crypto

    leaf = crypto.load_certificate(crypto.FILETYPE_PEM, issued.cert_chain_pems[0].bytes())
    return cert, key, hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)).hexdigest()


def handshake(server: SSL.Connection, authority: trustme.CA) -> str:
    """Run a TLS handshake in memory against ``server``; the SHA-256 the client saw."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    authority.configure_trust(context)
    context.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
    client = SSL.Connection(context, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    server.set_accept_state()
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        for source, sink in ((client, server), (server, client)):
            try:
                sink.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
        if client.get_peer_certificate() is not None and server.get_state_string() == client.get_state_string():
            break
    certificate = client.get_peer_cert_chain()[0]
    return hashlib.sha256(certificate.to_cryptography().public_bytes(_der())).hexdigest()


def _der():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def colon_hex(fingerprint: str) -> str:
    return ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)).upper()


def test_load_certificate_describes_what_it_loaded(authority, tmp_path) -> None:
    cert, key, fingerprint = write_pair(authority, tmp_path)
    loaded = load_certificate(str(cert), str(key))
    summary = loaded.summary()
    assert summary["sha256"] == colon_hex(fingerprint)
    assert summary["cert_file"] == str(cert) and summary["key_file"] == str(key)
    assert summary["chain_length"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", summary["not_after"]), summary
    expires = datetime.datetime.fromtimestamp(loaded.not_after_epoch, datetime.timezone.utc)
    assert expires.strftime("%Y-%m-%dT%H:%M:%SZ") == summary["not_after"]
    assert "O=trustme" in summary["subject"]


@pytest.mark.parametrize(
    "damage, field, words",
    [
        ("missing cert", "ssl.cert_file", "No such file"),
        ("missing key", "ssl.key_file", "No such file"),
        ("no pem", "ssl.cert_file", "no PEM certificate"),
        ("bad pem", "ssl.cert_file", "invalid certificate"),
        ("bad key", "ssl.key_file", "invalid private key"),
        ("other key", "ssl", "ssl.cert_file/key_file"),
    ],
)
def test_unusable_files_are_named(authority, tmp_path, damage: str, field: str, words: str) -> None:
    cert, key, _ = write_pair(authority, tmp_path)
    if damage == "missing cert":
        cert.unlink()
    elif damage == "missing key":
        key.unlink()
    elif damage == "no pem":
        cert.write_text("hello\n")
    elif damage == "bad pem":
        cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    elif damage == "bad key":
        key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    else:
        _, other_key, _ = write_pair(authority, tmp_path, "other")
        key = other_key
    with pytest.raises(TLSConfigError) as raised:
        load_certificate(str(cert), str(key))
    assert raised.value.field == field
    assert words in str(raised.value)
    if field != "ssl":
        assert str(cert if field == "ssl.cert_file" else key) in str(raised.value)


def test_reload_serves_the_new_certificate_to_new_handshakes_only(authority, tmp_path) -> None:
    cert, key, first = write_pair(authority, tmp_path)
    tls = ServerTLS.from_files(str(cert), str(key))
    before = tls.serverConnectionForTLS(None)  # set up before the reload
    _, _, second = write_pair(authority, tmp_path)  # same paths, new contents
    assert tls.serves(str(cert), str(key))
    tls.reload(str(cert), str(key))
    assert handshake(tls.serverConnectionForTLS(None), authority) == second
    assert handshake(before, authority) == first


def test_a_failed_reload_keeps_the_certificate_in_use(authority, tmp_path) -> None:
    cert, key, first = write_pair(authority, tmp_path)
    tls = ServerTLS.from_files(str(cert), str(key))
    key.write_text("garbage\n")
    with pytest.raises(TLSConfigError):
        tls.reload(str(cert), str(key))
    assert tls.current.sha256 == colon_hex(first)
    assert handshake(tls.serverConnectionForTLS(None), authority) == first
