"""Upstream credentials and response validation (``upstreams:``) through
``twistd speedproxy`` with 2 workers, as the TMDB proxy uses them.

- ``add_query`` / ``set_headers`` reach the origin on every request, while
  the access log and the admin API never show them;
- ``expect_content_type: [image/*]``: an HTML page answered for an image is
  a failure of that backend: the request goes to the next backend, and the
  page is never relayed nor stored.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Tuple

import pytest

from speedproxy.testing import BackendExchange, HTTPBackend, ProxyProcess, backend_entry

from compression_support import curl, ensure_curl
from workers_support import admin_get

API_KEY = "tmdb-key-4f1c9a77e2"
TOKEN = "Bearer eyJ-written-in-token-93b1"
JPEG = b"\xff\xd8\xff\xe0JFIF" + bytes(range(256)) * 8


def image(exchange: BackendExchange) -> None:
    exchange.send(200, JPEG, [("Cache-Control", "max-age=600")], "image/jpeg")


def captive_page(exchange: BackendExchange) -> None:
    exchange.send(200, b"<html>rate limited, try later</html>", [("Cache-Control", "max-age=600")], "text/html")


def api(exchange: BackendExchange) -> None:
    exchange.send_json({"path": exchange.request.path, "authorization": exchange.request.header("Authorization")})


@pytest.fixture(scope="module")
def backends(module_stack) -> Dict[str, HTTPBackend]:
    good = module_stack.backend(name="good")
    good.route("/t/p/", image).route("/3/", api)
    bad = module_stack.backend(name="bad")
    bad.route("/t/p/", captive_page).route("/3/", api)
    lonely = module_stack.backend(name="lonely")
    lonely.route("/only/", captive_page)
    return {"good": good, "bad": bad, "lonely": lonely}


@pytest.fixture(scope="module")
def proxy(module_stack, backends: Dict[str, HTTPBackend], tmp_path_factory) -> ProxyProcess:
    config: Dict[str, Any] = {
        "server": {"workers": 2, "access_log_format": "combined", "retries": 2},
        "cache": {"memory_size": "16MiB"},
        "backends": {
            "tmdb": [backend_entry(backends["bad"], id="bad"), backend_entry(backends["good"], id="good")],
            "lonely": [backend_entry(backends["lonely"], id="lonely")],
        },
        "upstreams": {
            "tmdb": {
                "add_query": {"api_key": "${env:TMDB_API_KEY}"},
                "set_headers": {"Authorization": TOKEN},
                "expect_content_type": ["image/*", "application/json"],
            },
            "lonely": {"expect_content_type": ["image/*"]},
        },
        "routing": {
            "images": {"path": "/t/p/", "upstream": "tmdb", "load_balancer": "round_robin", "cache": {"enabled": True}},
            "api": {"path": "/3/", "upstream": "tmdb", "load_balancer": "round_robin"},
            "only": {"path": "/only/", "upstream": "lonely"},
        },
    }
    process = ProxyProcess(config, directory=tmp_path_factory.mktemp("proxy"), env={"TMDB_API_KEY": API_KEY})
    module_stack.proxies.append(process)
    return process.start()


@pytest.fixture(scope="module")
def curl_binary() -> str:
    return ensure_curl()


def get(proxy: ProxyProcess, target: str) -> Tuple[int, Dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(proxy.url + target, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_credentials_reach_the_origin_replacing_the_clients(proxy: ProxyProcess, backends) -> None:
    status, _, body = get(proxy, "/3/movie/550?language=en&api_key=clients-own")
    assert status == 200
    answer = json.loads(body)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(answer["path"]).query)
    assert query == {"language": ["en"], "api_key": [API_KEY]}
    assert answer["authorization"] == TOKEN
    seen = [r for b in ("good", "bad") for r in backends[b].requests if r.path.startswith("/3/movie/550")]
    assert seen and all(API_KEY in r.path and r.header("Authorization") == TOKEN for r in seen)


def test_the_access_log_shows_the_clients_url_only(proxy: ProxyProcess) -> None:
    mark = proxy.log_mark()
    assert get(proxy, "/3/tv/1399?language=fr")[0] == 200
    line = proxy.wait_for_log("/3/tv/1399?language=fr", timeout=10, since=mark)
    assert API_KEY not in line and "api_key" not in line
    assert API_KEY not in proxy.log_text() and TOKEN not in proxy.log_text()


@pytest.mark.parametrize("path", ["/api/v1/config", "/config"])
def test_the_admin_api_never_shows_them(proxy: ProxyProcess, path: str) -> None:
    text = admin_get(proxy, path).decode()
    assert API_KEY not in text and TOKEN not in text
    data = json.loads(text)
    shown = (data.get("config") or data)["upstreams"]["tmdb"]
    assert shown["add_query"] == {"api_key": "${env:TMDB_API_KEY}"}  # where it is, not what it is
    assert shown["set_headers"] == {"Authorization": "********"}


def test_a_wrong_content_type_goes_to_the_next_backend_and_is_never_stored(
    proxy: ProxyProcess, backends, curl_binary: str
) -> None:
    bad_before = len([r for r in backends["bad"].requests if r.path.startswith("/t/p/")])
    for index in range(8):  # round robin: the bad backend is asked about half the time
        target = f"/t/p/w500/poster-{index}.jpg"
        got = curl(curl_binary, proxy.url + target, compressed=False)
        assert got.status == 200, got
        assert got.header("content-type") == "image/jpeg" and got.body == JPEG
        again = curl(curl_binary, proxy.url + target, compressed=False)  # stored: the image, not the page
        assert again.body == JPEG and again.header("content-type") == "image/jpeg"
    asked_bad = [r for r in backends["bad"].requests if r.path.startswith("/t/p/")][bad_before:]
    assert asked_bad, "the bad backend was never asked: the test proves nothing"
    assert all(API_KEY in r.path for r in asked_bad)


def test_with_no_backend_left_the_client_gets_a_502_naming_the_type(proxy: ProxyProcess, backends) -> None:
    before = len(backends["lonely"].requests)
    status, headers, body = get(proxy, "/only/a.png")
    assert status == 502
    error = json.loads(body)
    assert error["error"] == "bad_gateway"
    assert error["detail"] == "the backend answered with Content-Type text/html, expected image/*"
    assert b"rate limited" not in body
    assert len(backends["lonely"].requests) - before == 1  # a group of one: nothing else to try
