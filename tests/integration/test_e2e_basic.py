"""Plain requests through a real proxy: methods, added and removed headers."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess

import pytest

from speedproxy import __version__
from speedproxy.testing import HTTPBackend, ProxyProcess, RawClient, echo, fixed_body



def _get(proxy: ProxyProcess, method: str = "GET", path: str = "/", body=None, headers=None):
    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def test_get(module_proxy: ProxyProcess, module_backend: HTTPBackend) -> None:
    response, body = _get(module_proxy, "GET", "/hello/world?x=1&y=2")
    assert response.status == 200
    seen = json.loads(body)
    assert seen["method"] == "GET"
    assert seen["path"] == "/hello/world?x=1&y=2"
    assert module_backend.last_request.path == "/hello/world?x=1&y=2"


def test_head(module_proxy: ProxyProcess, module_backend: HTTPBackend) -> None:
    module_backend.route("/fixed-1234", fixed_body(1234))
    full, full_body = _get(module_proxy, "GET", "/fixed-1234")
    assert len(full_body) == 1234
    response, body = _get(module_proxy, "HEAD", "/fixed-1234")
    assert response.status == 200
    assert body == b""
    assert response.getheader("Content-Length") == "1234"
    assert module_backend.last_request.method == "HEAD"


def test_post(module_proxy: ProxyProcess, module_backend: HTTPBackend) -> None:
    payload = b"name=speedproxy&kind=reverse-proxy" * 100
    response, body = _get(module_proxy, "POST", "/submit", body=payload, headers={"Content-Type": "text/plain"})
    assert response.status == 200
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["body_length"] == len(payload)
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()


def test_response_carries_proxy_headers(module_proxy: ProxyProcess) -> None:
    response, _ = _get(module_proxy, "GET", "/")
    assert response.getheader("X-Speedproxy") == __version__
    assert response.getheader("X-Request-Id")
    assert "1.1 speedproxy" in (response.getheader("Via") or "")


def test_sane_request_id_is_kept(module_proxy: ProxyProcess, module_backend: HTTPBackend) -> None:
    response, _ = _get(module_proxy, "GET", "/rid", headers={"X-Request-Id": "client-id_42.abc:7"})
    assert response.getheader("X-Request-Id") == "client-id_42.abc:7"
    assert module_backend.last_request.header("X-Request-Id") == "client-id_42.abc:7"


@pytest.mark.parametrize(
    "insane",
    ["has spaces in it", "x" * 400, "quote\"s;and<tags>"],
    ids=["spaces", "too-long", "punctuation"],
)
def test_insane_request_id_is_replaced(module_proxy: ProxyProcess, module_backend: HTTPBackend, insane: str) -> None:
    with RawClient(*module_proxy.address) as client:
        client.request("GET", "/rid", headers=[("X-Request-Id", insane)])
        response = client.read_response()
    assert response.status == 200
    replaced = response.header("X-Request-Id")
    assert replaced and replaced != insane
    assert " " not in replaced and len(replaced) <= 128
    assert module_backend.last_request.header("X-Request-Id") == replaced


def test_backend_sees_forwarding_headers(module_proxy: ProxyProcess, module_backend: HTTPBackend) -> None:
    with RawClient(*module_proxy.address) as client:
        client.request("GET", "/fwd", host="shop.example.com:8443")
        assert client.read_response().status == 200
    seen = module_backend.last_request
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == "shop.example.com:8443"
    assert seen.header("X-Real-IP") == "127.0.0.1"
    assert "1.1 speedproxy" in (seen.header("Via") or "")
    assert seen.header("Host") == "shop.example.com:8443"


def test_existing_forwarding_chain_is_extended(module_proxy: ProxyProcess, module_backend: HTTPBackend) -> None:
    with RawClient(*module_proxy.address) as client:
        client.request("GET", "/chain", headers=[("X-Forwarded-For", "198.51.100.1"), ("Via", "1.0 edge")])
        assert client.read_response().status == 200
    seen = module_backend.last_request
    assert seen.header("X-Forwarded-For") == "198.51.100.1, 127.0.0.1"
    assert seen.header("Via") == "1.0 edge, 1.1 speedproxy"


def test_hop_by_hop_headers_are_not_forwarded(module_proxy: ProxyProcess, module_backend: HTTPBackend) -> None:
    with RawClient(*module_proxy.address) as client:
        client.request(
            "GET",
            "/hop",
            headers=[
                ("Connection", "keep-alive, X-Custom"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("Proxy-Connection", "keep-alive"),
                ("X-Custom", "secret-hop"),
                ("X-End-To-End", "kept"),
            ],
        )
        assert client.read_response().status == 200
    names = module_backend.last_request.header_names()
    for hop in ("connection", "keep-alive", "te", "upgrade", "proxy-connection", "x-custom"):
        assert hop not in names, f"{hop} was forwarded: {names}"
    assert module_backend.last_request.header("X-End-To-End") == "kept"


def test_hop_by_hop_response_headers_are_not_relayed(stack, proxy_factory) -> None:
    origin = stack.backend(
        echo(headers=[("Connection", "X-Origin-Hop"), ("X-Origin-Hop", "1"), ("Keep-Alive", "timeout=3"), ("X-Kept", "yes")])
    )
    proxy = proxy_factory(origin)
    with RawClient(*proxy.address) as client:
        client.request("GET", "/")
        response = client.read_response()
    assert response.status == 200
    names = [name.lower() for name, _ in response.headers]
    assert "x-origin-hop" not in names
    assert "keep-alive" not in names
    assert response.header("X-Kept") == "yes"


def test_curl_get_and_post(module_proxy: ProxyProcess, module_backend: HTTPBackend, curl: str, tmp_path) -> None:
    result = subprocess.run(
        [curl, "-sS", "-i", "--max-time", "10", module_proxy.url + "/curl?x=1"],
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"X-Speedproxy: 0.1.0" in head
    assert json.loads(body)["path"] == "/curl?x=1"
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"\x00\x01curl-body" * 5000)
    result = subprocess.run(
        [curl, "-sS", "--max-time", "10", "--data-binary", f"@{upload}", module_proxy.url + "/curl-post"],
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["method"] == "POST"
    assert seen["body_sha256"] == hashlib.sha256(upload.read_bytes()).hexdigest()
