"""The TLS listener, with real certificates from trustme and a real TLS client."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import ssl
from pathlib import Path

import pytest
import trustme

from speedproxy import __version__

from admin_support import AdminClient, proxy_get

from speedproxy.testing import ProxyReloadError, fixed_body, pattern_sha256, wait_until

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
    assert (status, tag) == (200, __version__)
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


# -- certificate rotation -------------------------------------------------------


class Certificates:
    """One trustme CA issuing server certificates into the same two files."""

    def __init__(self, directory: Path) -> None:
        self.authority = trustme.CA()
        self.cert = directory / "server.crt"
        self.key = directory / "server.key"
        self.ca = directory / "ca.pem"
        self.authority.cert_pem.write_to_path(str(self.ca))

    def issue(self) -> str:
        """Write a new certificate and key for 127.0.0.1; return its SHA-256 (hex, lower case)."""
        server = self.authority.issue_cert("localhost", "127.0.0.1")
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(server.cert_chain_pems[0].bytes().decode())).hexdigest()

    def connect(self, port: int) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.ca))
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)


def tls_proxy(stack, certificates: Certificates, workers: int):
    """A proxy serving ``certificates``' files over TLS, in front of one origin."""
    origin = stack.backend(name="origin")
    files = {"cert_file": str(certificates.cert), "key_file": str(certificates.key)}
    return stack.proxy(origin, config={"ssl": {"enabled": True, **files}}, workers=workers)


def served_fingerprint(connection: http.client.HTTPSConnection) -> str:
    """A request on ``connection`` (must answer 200); the SHA-256 of the certificate it saw."""
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    return hashlib.sha256(connection.sock.getpeercert(binary_form=True)).hexdigest()


def fresh_fingerprints(certificates: Certificates, port: int, count: int) -> set:
    """The certificates ``count`` new connections were given."""
    seen = set()
    for _ in range(count):
        connection = certificates.connect(port)
        try:
            seen.add(served_fingerprint(connection))
        finally:
            connection.close()
    return seen


def colon_hex(fingerprint: str) -> str:
    return ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)).upper()


@pytest.mark.parametrize("workers", [0, 2])
def test_reload_ssl_rotates_the_certificate_without_dropping_connections(stack, tmp_path, workers: int) -> None:
    certificates = Certificates(tmp_path)
    first = certificates.issue()
    proxy = tls_proxy(stack, certificates, workers=workers)
    admin = AdminClient.of(proxy)
    kept = certificates.connect(proxy.port)
    try:
        assert served_fingerprint(kept) == first
        kept_socket = kept.sock

        second = certificates.issue()
        assert second != first
        answer = admin.post("/api/v1/config/reload-ssl")
        assert answer.status == 200, answer
        assert answer.json["reloaded"] is True
        assert answer.json["workers"] == max(1, workers)
        assert answer.json["certificate"]["sha256"] == colon_hex(second)
        assert answer.json["certificate"]["subject"]
        # /status and /metrics say which certificate is served and when it expires.
        assert admin.get("/status").json["tls_certificate"]["sha256"] == colon_hex(second)
        expiry = [line for line in admin.get("/metrics").raw.decode().splitlines()
                  if line.startswith("speedproxy_tls_certificate_expiry_timestamp_seconds{")]
        assert len(expiry) == 1 and f'sha256="{colon_hex(second)}"' in expiry[0], expiry
        assert float(expiry[0].rsplit(" ", 1)[1]) > 1.7e9
        # Every new handshake, whichever worker takes it, gets the new one.
        assert fresh_fingerprints(certificates, proxy.port, 8) == {second}
        # The connection opened before the reload still works, on its old certificate.
        assert served_fingerprint(kept) == first and kept.sock is kept_socket

        # Files that cannot be used change nothing, and the error names the file.
        certificates.key.write_text("not a key\n")
        answer = admin.post("/api/v1/config/reload-ssl")
        assert answer.status == 400, answer
        assert answer.json["error"] == "invalid_certificate"
        assert answer.json["field"] == "ssl.key_file"
        assert str(certificates.key) in answer.json["detail"]
        assert fresh_fingerprints(certificates, proxy.port, 4) == {second}
        assert served_fingerprint(kept) == first
    finally:
        kept.close()


def test_sighup_picks_up_a_renewed_certificate(stack, tmp_path) -> None:
    certificates = Certificates(tmp_path)
    first = certificates.issue()
    proxy = tls_proxy(stack, certificates, workers=2)
    assert fresh_fingerprints(certificates, proxy.port, 2) == {first}
    renewed = certificates.issue()
    mark = proxy.log_mark()
    proxy.reload()
    proxy.wait_for_log("TLS certificate", since=mark)
    assert fresh_fingerprints(certificates, proxy.port, 8) == {renewed}
    assert AdminClient.of(proxy).get("/status").json["tls_certificate"]["sha256"] == colon_hex(renewed)


def test_a_config_naming_unusable_certificate_files_is_refused(stack, tmp_path) -> None:
    certificates = Certificates(tmp_path)
    first = certificates.issue()
    proxy = tls_proxy(stack, certificates, workers=2)
    admin = AdminClient.of(proxy)
    missing = str(tmp_path / "missing.crt")
    config = admin.get("/api/v1/config").json["config"]
    config["ssl"]["cert_file"] = missing
    answer = admin.put("/api/v1/config", {"config": config})
    assert answer.status == 400, answer
    assert (answer.json["error"], answer.json["field"]) == ("invalid_certificate", "ssl.cert_file")
    assert missing in answer.json["detail"]
    assert admin.get("/api/v1/config").json["config_version"] == 1
    # SIGHUP with such a file is refused too; the running certificate stays.
    with pytest.raises(ProxyReloadError, match="missing.crt"):
        proxy.reload({"ssl": {"cert_file": missing}})
    assert fresh_fingerprints(certificates, proxy.port, 4) == {first}


def test_a_config_naming_other_certificate_files_serves_them(stack, tmp_path) -> None:
    old_files, new_files = tmp_path / "old", tmp_path / "new"
    old_files.mkdir()
    new_files.mkdir()
    certificates = Certificates(old_files)
    first = certificates.issue()
    proxy = tls_proxy(stack, certificates, workers=2)
    admin = AdminClient.of(proxy)
    assert fresh_fingerprints(certificates, proxy.port, 2) == {first}
    # Same CA, other files: the config change alone switches the certificate.
    certificates.cert, certificates.key = new_files / "server.crt", new_files / "server.key"
    second = certificates.issue()
    config = admin.get("/api/v1/config").json["config"]
    config["ssl"].update(cert_file=str(certificates.cert), key_file=str(certificates.key))
    answer = admin.put("/api/v1/config", {"config": config})
    assert answer.status == 200, answer
    assert "restart_required" not in answer.json
    assert fresh_fingerprints(certificates, proxy.port, 8) == {second}
    assert admin.get("/status").json["tls_certificate"]["sha256"] == colon_hex(second)


@pytest.mark.parametrize("workers", [0, 2])
def test_sighup_with_an_unusable_certificate_at_the_same_path_is_refused_whole(stack, tmp_path, workers: int) -> None:
    certificates = Certificates(tmp_path)
    first = certificates.issue()
    proxy = tls_proxy(stack, certificates, workers=workers)
    admin = AdminClient.of(proxy)
    certificates.key.write_text("half-written\n")
    with pytest.raises(ProxyReloadError, match="ssl.key_file"):
        proxy.reload({"server": {"upstream_read_timeout": "7s"}})
    assert admin.get("/api/v1/config").json["config_version"] == 1  # same outcome in both modes
    assert fresh_fingerprints(certificates, proxy.port, 4) == {first}


def test_a_worker_restarted_while_the_files_are_unusable_recovers_once_they_are_fixed(stack, tmp_path) -> None:
    certificates = Certificates(tmp_path)
    first = certificates.issue()
    proxy = tls_proxy(stack, certificates, workers=2)
    admin = AdminClient.of(proxy)
    good_key = certificates.key.read_bytes()
    certificates.key.write_text("half-written\n")
    victim = proxy.worker_pids()[0]
    mark = proxy.log_mark()
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for_log("refused the config", since=mark)
    certificates.key.write_bytes(good_key)

    wait_until(lambda: admin.get("/status").json["workers_ready"] == 2, timeout=30,
               what="the restarted worker to serve again")
    answer = admin.post("/api/v1/config/reload-ssl")
    assert answer.status == 200, answer
    assert answer.json["workers"] == 2
    assert fresh_fingerprints(certificates, proxy.port, 8) == {first}


@pytest.mark.parametrize("workers", [0, 2])
def test_turning_tls_on_needs_a_restart_and_says_so(stack, tmp_path, workers: int) -> None:
    certificates = Certificates(tmp_path)
    certificates.issue()
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, workers=workers)
    admin = AdminClient.of(proxy)
    config = admin.get("/api/v1/config").json["config"]
    config["ssl"] = {"enabled": True, "cert_file": str(certificates.cert), "key_file": str(certificates.key)}
    answer = admin.put("/api/v1/config", {"config": config})
    assert answer.status == 200, answer
    assert answer.json["restart_required"] == ["ssl.enabled"]
    answer = admin.post("/api/v1/config/reload-ssl")
    assert answer.status == 409, answer
    assert "restart" in answer.json["detail"]
    assert admin.get("/status").json["ssl"] is False  # what the listener serves
    if workers:
        # A worker started after the change keeps the listener plain, like the others.
        mark = proxy.log_mark()
        os.kill(proxy.worker_pids()[0], signal.SIGKILL)
        proxy.wait_for_log("ready", since=mark)
    for _ in range(6):
        status, _, _ = proxy_get(proxy, "/")
        assert status == 200
