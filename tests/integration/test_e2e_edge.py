"""Edge protection end to end: IP lists, CORS, signed URLs (and their queries), refusal metrics, ``--check``.

A real ``twistd speedproxy`` with 2 workers in front of a plain origin
(an HTTP server on 127.0.0.1); real clients (``http.client``, raw sockets,
curl, headless Chromium for the CORS preflight).  Requests go on fresh
connections, so the kernel spreads them over both workers; what is
counted is read from ``/metrics``, summed over the workers by the master.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from speedproxy.testing import (
    BackendExchange,
    HTTPBackend,
    ProxyProcess,
    backend_entry,
    check_config,
    wait_until,
)

from admin_support import AdminClient

ADMIN_KEY = "edge-admin-key-7c1d"
FILE_KEY = "file-url-key-0123456789abcdef"
OLD_KEY = "old-secret-still-valid-0123"
ENV_KEY = "env-url-key-abcdef0123456789"
TIMEOUT = 10.0

PLAYLIST = (
    b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
    b"#EXTINF:2.0,\nseg0.ts\n#EXTINF:2.0,\nseg1.ts\n#EXTINF:2.0,\n/hls/v0/seg2.ts\n#EXT-X-ENDLIST\n"
)
#: A playlist whose URIs carry queries of their own (a CDN hint, a quality, an encoded value, a repeated name).
QUERY_PLAYLIST = (
    b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
    b"#EXTINF:2.0,\nseg0.ts?quality=hd&cdn=a\n#EXTINF:2.0,\nseg1.ts?t=a+b&lang=en%2dGB\n"
    b"#EXTINF:2.0,\n/hls/q/seg2.ts?x=%7e1&x=2\n#EXT-X-ENDLIST\n"
)


def _origin(exchange: BackendExchange) -> None:
    path = exchange.request.path
    if path.startswith("/hls/q/") and path.split("?")[0].endswith(".m3u8"):
        exchange.send(200, QUERY_PLAYLIST, [("Cache-Control", "max-age=60")], "application/vnd.apple.mpegurl")
    elif path.startswith("/hls/") and path.split("?")[0].endswith(".m3u8"):
        exchange.send(200, PLAYLIST, [("Cache-Control", "max-age=60")], "application/vnd.apple.mpegurl")
    elif path.startswith("/hls/"):
        exchange.send(200, b"TS:" + path.encode(), [("Cache-Control", "max-age=600")], "video/mp2t")
    elif path.startswith("/api/") or path.startswith("/capi/"):
        # A backend with its own (too open) CORS answer: the route's policy replaces it.
        exchange.send_json(
            {"path": path, "player": exchange.request.header("X-Player")},
            headers=[("Access-Control-Allow-Origin", "*"), ("Cache-Control", "max-age=600")],
        )
    else:
        exchange.send(200, path.encode(), [("Cache-Control", "max-age=600")])


def _signature(secret: str, path: str, expires: int, ip: Optional[str] = None, query: str = "") -> str:
    """The documented signature; ``query``: the canonical query, written out by the test."""
    message = path + (f"?{query}" if query else "") + f"\n{expires}" + (f"\n{ip}" if ip else "")
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


class Env:
    def __init__(self, proxy: ProxyProcess, origin: HTTPBackend, page_a: HTTPBackend, page_b: HTTPBackend) -> None:
        self.proxy = proxy
        self.origin = origin
        self.page_a = page_a
        self.page_b = page_b
        self.admin = AdminClient.of(proxy, ADMIN_KEY)

    def request(
        self, method: str, path: str, headers: Optional[Dict[str, str]] = None
    ) -> Tuple[int, http.client.HTTPMessage, bytes]:
        """One request on a fresh connection (so on either worker)."""
        connection = http.client.HTTPConnection(self.proxy.host, self.proxy.port, timeout=TIMEOUT)
        try:
            connection.request(method, path, headers=dict(headers or {}, Connection="close"))
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def origin_paths(self) -> List[str]:
        return [request.method + " " + request.path for request in self.origin.requests]

    def refused(self) -> Dict[Tuple[str, str], float]:
        """``speedproxy_refused_total`` by (route, reason), from ``/metrics``."""
        text = self.admin.get("/metrics", key=None).raw.decode()
        found = {}
        for match in re.finditer(r'^speedproxy_refused_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            found[(labels["route"], labels["reason"])] = float(match.group(2))
        return found

    def wait_refused(self, route: str, reason: str, count: float) -> None:
        wait_until(lambda: self.refused().get((route, reason)) == count, TIMEOUT, f"{count} {reason} refusals on {route}")


def _page(exchange: BackendExchange) -> None:
    exchange.send(200, b"<!doctype html><title>player</title><p>player page</p>", [], "text/html")


@pytest.fixture(scope="module")
def env(module_stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    origin = module_stack.backend(_origin, name="origin")
    page_a = module_stack.backend(_page, name="page-a")
    page_b = module_stack.backend(_page, name="page-b")
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "url.key").write_text(FILE_KEY + "\n")
    config = {
        "server": {"workers": 2, "trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "X-Real-IP"},
        "admin": {"api_key": ADMIN_KEY},
        "cache": {"memory_size": "16MiB", "disk_path": str(tmp_path_factory.mktemp("cache")), "disk_size": "64MiB"},
        "backends": {"default": [backend_entry(origin, id="origin")]},
        "routing": {
            "default": {"path": "/", "upstream": "default"},
            "lan": {
                "path": "/lan/",
                "upstream": "default",
                "allow": ["10.20.0.0/16", "2001:db8:20::/48"],
                "deny": ["10.20.9.0/24", "2001:db8:20:9::/64"],
            },
            "local": {"path": "/local/", "upstream": "default", "deny": ["127.0.0.0/8"]},
            "api": {
                "path": "/api/",
                "upstream": "default",
                "cors": {
                    "origins": [page_a.url],
                    "methods": ["GET", "POST"],
                    "headers": ["X-Player"],
                    "expose": ["X-Request-Id"],
                    "max_age": "1m",
                },
            },
            "capi": {
                "path": "/capi/",
                "upstream": "default",
                "cache": {"enabled": True},
                "cors": {"origins": [page_a.url], "credentials": True},
            },
            "video": {
                "path": "/v/",
                "upstream": "default",
                "cache": {"enabled": True},
                "signed_urls": {"secrets": [f"${{file:{secrets / 'url.key'}}}", OLD_KEY]},
            },
            "loose": {
                "path": "/loose/",
                "upstream": "default",
                "signed_urls": {"secrets": [OLD_KEY], "query": "ignore"},
            },
            "bound": {
                "path": "/b/",
                "upstream": "default",
                "signed_urls": {"secrets": [OLD_KEY], "bind_client_ip": True, "param_signature": "token"},
            },
            "hls": {
                "path": "/hls/",
                "upstream": "default",
                "cache": {"enabled": True},
                "hls": {"enabled": True, "prefetch_depth": 0},
                "signed_urls": {"secrets": ["${env:SPX_E2E_URL_KEY}"]},
            },
        },
    }
    proxy = ProxyProcess(config, directory=tmp_path_factory.mktemp("proxy"), env={"SPX_E2E_URL_KEY": ENV_KEY})
    module_stack.proxies.append(proxy)
    proxy.start()
    yield Env(proxy, origin, page_a, page_b)


# -- IP lists ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "client, status",
    [
        ("10.20.1.5", 200),
        ("10.20.9.5", 403),  # denied inside the allowed network: deny wins
        ("10.21.0.1", 403),  # not in the allow list
        ("2001:db8:20::7", 200),
        ("2001:db8:20:9::7", 403),
        ("2001:db8:21::7", 403),
    ],
)
def test_ip_lists_on_the_real_client_address(env: Env, client: str, status: int) -> None:
    before = len(env.origin.requests)
    got, headers, body = env.request("GET", f"/lan/{client}", {"X-Real-IP": client})
    assert got == status, body
    if status == 403:
        assert headers["Content-Type"] == "application/json"
        answer = json.loads(body)
        assert answer["error"] == "ip_refused" and client in answer["detail"]
        assert answer["request_id"] == headers["X-Request-Id"]
        assert len(env.origin.requests) == before  # no backend asked
    else:
        assert body == f"/lan/{client}".encode()


def test_the_peer_address_itself_is_checked_and_counted_across_workers(env: Env) -> None:
    before = env.refused().get(("local", "ip"), 0.0)
    for _ in range(6):
        status, _, body = env.request("GET", "/local/x")
        assert status == 403 and b"127.0.0.1 is denied" in body
    env.wait_refused("local", "ip", before + 6)
    assert "GET /local/x" not in env.origin_paths()
    # A route without edge keys is untouched (and counts nothing).
    assert env.request("GET", "/plain")[0] == 200
    assert env.refused().get(("default", "ip"), 0.0) == 0.0


def test_host_wide_lists_apply_to_every_route(module_stack, env: Env) -> None:
    proxy = module_stack.proxy(
        config={
            "server": {"workers": 2, "allow": ["127.0.0.0/8", "10.0.0.0/8"], "deny": ["10.66.0.0/16"]},
            "backends": {"default": [backend_entry(env.origin, id="origin")]},
            "routing": {"default": {"path": "/", "upstream": "default"}, "other": {"path": "/o/", "upstream": "default", "deny": ["10.1.0.0/16"]}},
        }
    )
    def get(path: str, client: str) -> int:
        connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=TIMEOUT)
        try:
            connection.request("GET", path, headers={"X-Real-IP": client, "Connection": "close"})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    assert get("/x", "10.1.2.3") == 200
    assert get("/x", "10.66.2.3") == 403  # the host's deny
    assert get("/x", "192.0.2.1") == 403  # not in the host's allow list
    assert get("/o/x", "10.1.2.3") == 403  # the route's own deny, after the host's lists
    assert get("/o/x", "10.2.2.3") == 200


# -- CORS --------------------------------------------------------------------------------


def test_a_preflight_is_answered_by_the_proxy(env: Env) -> None:
    headers = {
        "Origin": env.page_a.url,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-player",
    }
    status, answer, body = env.request("OPTIONS", "/api/data", headers)
    assert status == 204 and body == b""
    assert answer["Access-Control-Allow-Origin"] == env.page_a.url
    assert answer["Access-Control-Allow-Methods"] == "GET, POST"
    assert answer["Access-Control-Allow-Headers"] == "x-player"
    assert answer["Access-Control-Max-Age"] == "60"
    assert "OPTIONS /api/data" not in env.origin_paths()
    before = env.refused().get(("api", "cors"), 0.0)
    status, answer, body = env.request("OPTIONS", "/api/data", dict(headers, Origin=env.page_b.url))
    assert status == 403 and json.loads(body)["error"] == "cors_refused"
    assert "Access-Control-Allow-Origin" not in answer
    env.wait_refused("api", "cors", before + 1)


def test_cors_headers_on_backend_answers_and_cache_hits_only_for_listed_origins(env: Env) -> None:
    status, answer, _ = env.request("GET", "/capi/item", {"Origin": env.page_a.url})
    assert status == 200
    assert answer.get_all("Access-Control-Allow-Origin") == [env.page_a.url]
    assert answer["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in answer.get_all("Vary")
    # Wait until the first answer is stored (another worker may take the next request).
    def hit_for(origin: str):
        result = env.request("GET", "/capi/item", {"Origin": origin})
        return result if "hit" in (result[1]["Cache-Status"] or "") else None

    status, answer, _ = wait_until(lambda: hit_for(env.page_b.url), TIMEOUT, "a cache hit")
    assert answer.get_all("Access-Control-Allow-Origin") is None  # the backend's "*" is never shown
    status, answer, _ = wait_until(lambda: hit_for(env.page_a.url), TIMEOUT, "a cache hit")
    assert answer.get_all("Access-Control-Allow-Origin") == [env.page_a.url]
    assert sum(1 for path in env.origin_paths() if path == "GET /capi/item") == 1


def test_curl_sees_the_cors_answer(env: Env, curl: str) -> None:
    done = subprocess.run(
        [curl, "-s", "-i", "-X", "OPTIONS", "-H", f"Origin: {env.page_a.url}", "-H", "Access-Control-Request-Method: POST",
         f"{env.proxy.url}/api/x"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.stdout.startswith("HTTP/1.1 204")
    assert f"Access-Control-Allow-Origin: {env.page_a.url}" in done.stdout


# -- CORS in a real browser ------------------------------------------------------------------

FETCH = """
fetch(%s, {headers: {"X-Player": "p1"}})
  .then(r => r.json().then(body => ({ok: true, status: r.status, body: body, id: r.headers.get("X-Request-Id")})))
  .catch(e => ({ok: false, error: String(e)}))
"""


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    from browser_support import chromium_or_fail

    return chromium_or_fail('the CORS browser test')


@pytest.fixture(scope="module")
def browser(chromium_binary: str, tmp_path_factory: pytest.TempPathFactory):
    from browser_support import Chromium

    chromium = Chromium(chromium_binary, tmp_path_factory.mktemp("chromium"))
    try:
        chromium.start()
    except Exception as error:
        chromium.close()
        pytest.fail(f"headless Chromium did not start: {error}\n{chromium.log_tail()}", pytrace=False)
    try:
        yield chromium
    finally:
        chromium.close()


def test_a_browser_preflight_passes_for_a_listed_origin_and_is_blocked_for_another(env: Env, browser) -> None:
    target = json.dumps(f"{env.proxy.url}/api/browser")
    mark = env.proxy.log_mark()
    browser.navigate(env.page_a.url + "/")
    answer = browser.evaluate(FETCH % target)
    assert answer["ok"], answer
    assert answer["status"] == 200 and answer["body"] == {"path": "/api/browser", "player": "p1"}
    assert answer["id"]  # an exposed header the page may read
    # The browser's preflight was answered by speedproxy (204), never by the origin.
    env.proxy.wait_for_log('"OPTIONS /api/browser HTTP/1.1" 204', TIMEOUT, since=mark)
    assert "OPTIONS /api/browser" not in env.origin_paths()
    origin_gets = env.origin_paths().count("GET /api/browser")

    mark = env.proxy.log_mark()
    browser.navigate(env.page_b.url + "/")
    blocked = browser.evaluate(FETCH % target)
    assert blocked["ok"] is False and blocked["error"].startswith("TypeError"), blocked  # "Failed to fetch"
    env.proxy.wait_for_log('"OPTIONS /api/browser HTTP/1.1" 403', TIMEOUT, since=mark)
    assert env.origin_paths().count("GET /api/browser") == origin_gets  # the GET was never sent


# -- signed URLs -----------------------------------------------------------------------------


def test_a_url_signed_by_the_admin_api_is_served_and_the_origin_sees_no_signature(env: Env) -> None:
    answer = env.admin.post("/api/v1/sign", {"path": "/v/movie.ts?quality=hd", "ttl": "1h"})
    assert answer.status == 200, answer
    signed = answer.json
    assert signed["route"] == "video" and signed["url"].startswith("/v/movie.ts?quality=hd&exp=")
    assert abs(signed["expires"] - (time.time() + 3600)) < 30
    assert signed["url"].endswith("&sig=" + _signature(FILE_KEY, "/v/movie.ts", signed["expires"], query="quality=hd"))
    status, _, body = env.request("GET", signed["url"])
    assert status == 200 and body == b"/v/movie.ts?quality=hd"
    # A second URL for the same path (another expiry, signed with the old key) is a cache hit:
    # the signature is not part of the cache key.
    expires = int(time.time()) + 120
    other = f"/v/movie.ts?quality=hd&exp={expires}&sig={_signature(OLD_KEY, '/v/movie.ts', expires, query='quality=hd')}"
    hit = wait_until(
        lambda: (lambda r: r if "hit" in (r[1]["Cache-Status"] or "") else None)(env.request("GET", other)),
        TIMEOUT, "a cache hit",
    )
    assert hit[0] == 200 and hit[2] == b"/v/movie.ts?quality=hd"
    assert env.origin_paths().count("GET /v/movie.ts?quality=hd") == 1


def test_missing_bad_and_expired_signatures_are_refused_naming_which(env: Env) -> None:
    before = env.refused().get(("video", "signature"), 0.0)
    now = int(time.time())
    cases = {
        "/v/a.ts": "signature_missing",
        f"/v/a.ts?exp={now + 60}&sig={'0' * 64}": "signature_invalid",
        f"/v/a.ts?exp={now + 60}&sig={_signature(FILE_KEY, '/v/b.ts', now + 60)}": "signature_invalid",
        f"/v/a.ts?exp={now - 5}&sig={_signature(FILE_KEY, '/v/a.ts', now - 5)}": "signature_expired",
    }
    for target, code in cases.items():
        status, headers, body = env.request("GET", target)
        assert status == 403 and headers["Content-Type"] == "application/json"
        assert json.loads(body)["error"] == code, target
    assert not [path for path in env.origin_paths() if path.startswith("GET /v/a.ts")]
    env.wait_refused("video", "signature", before + len(cases))


def test_a_bound_signature_is_for_one_client_address(env: Env) -> None:
    answer = env.admin.post("/api/v1/sign", {"path": "/b/file", "ttl": 60, "client_ip": "10.5.5.5"})
    assert answer.status == 200, answer
    url = answer.json["url"]
    assert "token=" in url
    assert env.request("GET", url, {"X-Real-IP": "10.5.5.5"})[0] == 200
    status, _, body = env.request("GET", url, {"X-Real-IP": "10.5.5.6"})
    assert status == 403 and json.loads(body)["error"] == "signature_invalid"


def test_hls_playlists_served_to_signed_requests_carry_signed_uris(env: Env) -> None:
    answer = env.admin.post("/api/v1/sign", {"path": "/hls/v0/index.m3u8", "ttl": "10m"})
    assert answer.status == 200, answer
    url, expires = answer.json["url"], answer.json["expires"]
    assert url.endswith(_signature(ENV_KEY, "/hls/v0/index.m3u8", expires))

    def segments(body: bytes) -> List[str]:
        return [line for line in body.decode().splitlines() if line and not line.startswith("#")]

    for attempt in range(2):  # a miss (from the origin), then hits (from the cache, stored unsigned)
        status, headers, body = env.request("GET", url)
        assert status == 200
        listed = segments(body)
        assert listed == [
            f"seg0.ts?exp={expires}&sig={_signature(ENV_KEY, '/hls/v0/seg0.ts', expires)}",
            f"seg1.ts?exp={expires}&sig={_signature(ENV_KEY, '/hls/v0/seg1.ts', expires)}",
            f"/hls/v0/seg2.ts?exp={expires}&sig={_signature(ENV_KEY, '/hls/v0/seg2.ts', expires)}",
        ]
    # A player follows them.
    for uri in listed:
        target = uri if uri.startswith("/") else "/hls/v0/" + uri
        status, _, body = env.request("GET", target)
        assert status == 200 and body.startswith(b"TS:/hls/v0/seg")
    assert env.request("GET", "/hls/v0/seg0.ts")[0] == 403
    assert env.origin_paths().count("GET /hls/v0/index.m3u8") == 1


def _curl(curl: str, url: str) -> Tuple[int, bytes]:
    """Status and body of a GET made by curl (the URL sent as written: no globbing)."""
    done = subprocess.run(
        [curl, "-s", "--globoff", "-o", "-", "-w", "\n%{http_code}", url], capture_output=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition(b"\n")
    return int(status), body


def test_the_signature_covers_the_query(env: Env, curl: str) -> None:
    """A link signed by the admin API with a query plays; any other query is refused, in any order or writing."""
    answer = env.admin.post("/api/v1/sign", {"path": "/v/doc.ts?quality=hd&lang=en", "ttl": "10m"})
    assert answer.status == 200, answer
    url, expires = answer.json["url"], answer.json["expires"]
    assert url.endswith("&sig=" + _signature(FILE_KEY, "/v/doc.ts", expires, query="lang=en&quality=hd"))
    sig = url.rpartition("&sig=")[2]
    base = env.proxy.url
    before = env.refused().get(("video", "signature"), 0.0)
    assert _curl(curl, base + url) == (200, b"/v/doc.ts?quality=hd&lang=en")
    # The same parameters in another order, or written otherwise (%XX), still play.
    status, body = _curl(curl, f"{base}/v/doc.ts?exp={expires}&lang=en&sig={sig}&quality=hd")
    assert status == 200 and body in (b"/v/doc.ts?lang=en&quality=hd", b"/v/doc.ts?quality=hd&lang=en")
    assert _curl(curl, f"{base}/v/doc.ts?quality=h%64&lang=en&exp={expires}&sig={sig}")[0] == 200
    refused = [
        base + url + "&debug=1",  # appended
        base + url.replace("quality=hd", "quality=4k"),  # changed
        base + url.replace("quality=hd&", ""),  # removed
        f"{base}/v/doc.ts?quality=hd&lang=en&lang=fr&exp={expires}&sig={sig}",  # a second value
    ]
    for target in refused:
        status, body = _curl(curl, target)
        assert status == 403 and json.loads(body)["error"] == "signature_invalid", (target, body)
    env.wait_refused("video", "signature", before + len(refused))
    assert not [path for path in env.origin_paths() if path.startswith("GET /v/doc.ts") and (
        "debug=1" in path or "quality=4k" in path or "lang=fr" in path or "quality" not in path)]


def test_a_url_signed_with_openssl_as_the_readme_shows_plays(env: Env, curl: str) -> None:
    """The README's shell recipe (printf, sort, openssl), run as written against the proxy."""
    from debian_support import ensure_program

    ensure_program("openssl", "openssl", "the signed-URL shell recipe test")
    readme = (Path(__file__).resolve().parents[2] / "README.rst").read_text()
    section = readme[readme.index("\nSigned URLs\n"):]
    start = section.index("    path=/v/movie.ts query=")
    script = "\n".join(line[4:] for line in section[start:].split("\n\n", 1)[0].splitlines())
    assert script.count("localhost:8080") == 1 and script.startswith("path=/v/movie.ts query='quality=hd&lang=en'")
    script = script.replace("curl ", f"{curl} -s --globoff -w '\\n%{{http_code}}' ").replace("localhost:8080", env.proxy.url)
    done = subprocess.run(["bash", "-euc", script], env={"KEY": FILE_KEY, "PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rpartition(b"\n")[::2] == (b"/v/movie.ts?quality=hd&lang=en", b"200"), done.stdout
    # Its signature covers the query: with another one it is refused.
    edited = script.replace("$query&exp=", "$query&debug=1&exp=")
    assert edited != script
    done = subprocess.run(["bash", "-euc", edited], env={"KEY": FILE_KEY, "PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=TIMEOUT)
    assert done.stdout.endswith(b"\n403"), done.stdout


def test_a_route_with_query_ignore_signs_the_path_only(env: Env) -> None:
    answer = env.admin.post("/api/v1/sign", {"path": "/loose/a.ts?quality=hd", "ttl": 60})
    assert answer.status == 200, answer
    url = answer.json["url"]
    assert url.endswith(_signature(OLD_KEY, "/loose/a.ts", answer.json["expires"]))
    assert env.request("GET", url)[0] == 200
    status, _, body = env.request("GET", url.replace("quality=hd", "quality=4k") + "&more=1")
    assert status == 200 and body == b"/loose/a.ts?quality=4k&more=1"


def test_a_signed_hls_playlist_whose_uris_carry_queries_plays(env: Env, curl: str) -> None:
    answer = env.admin.post("/api/v1/sign", {"path": "/hls/q/index.m3u8?v=3", "ttl": "10m"})
    assert answer.status == 200, answer
    url, expires = answer.json["url"], answer.json["expires"]
    assert url.endswith(_signature(ENV_KEY, "/hls/q/index.m3u8", expires, query="v=3"))

    def sig(path: str, canonical: str) -> str:
        return f"exp={expires}&sig={_signature(ENV_KEY, path, expires, query=canonical)}"

    for attempt in range(2):  # a miss, then hits (the cache keeps the playlist unsigned)
        status, body = _curl(curl, env.proxy.url + url)
        assert status == 200, body
        listed = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
        assert listed == [
            "seg0.ts?quality=hd&cdn=a&" + sig("/hls/q/seg0.ts", "cdn=a&quality=hd"),
            "seg1.ts?t=a+b&lang=en%2dGB&" + sig("/hls/q/seg1.ts", "lang=en-GB&t=a+b"),
            "/hls/q/seg2.ts?x=%7e1&x=2&" + sig("/hls/q/seg2.ts", "x=~1&x=2"),
        ]
    # A player follows each URI as listed; the origin gets the segment's own query.
    for uri in listed:
        target = uri if uri.startswith("/") else "/hls/q/" + uri
        status, body = _curl(curl, env.proxy.url + target)
        assert (status, body) == (200, b"TS:" + target.partition("&exp=")[0].encode()), (target, body)
    # The segment's query is covered: changed, it is refused.
    first = "/hls/q/" + listed[0]
    status, body = _curl(curl, env.proxy.url + first.replace("cdn=a", "cdn=b"))
    assert status == 403 and json.loads(body)["error"] == "signature_invalid"
    assert env.origin_paths().count("GET /hls/q/index.m3u8?v=3") == 1


def test_the_config_api_masks_literal_keys(env: Env) -> None:
    shown = env.admin.get("/api/v1/config").json["config"]["routing"]
    assert shown["video"]["signed_urls"]["secrets"][1] == "********"
    assert shown["video"]["signed_urls"]["secrets"][0].startswith("${file:")
    assert shown["hls"]["signed_urls"]["secrets"] == ["${env:SPX_E2E_URL_KEY}"]
    assert OLD_KEY not in json.dumps(shown) and ENV_KEY not in json.dumps(shown) and FILE_KEY not in json.dumps(shown)


def test_sign_needs_the_key(env: Env) -> None:
    assert env.admin.post("/api/v1/sign", {"path": "/v/x"}, key=None).status == 401
    assert env.admin.post("/api/v1/sign", {"path": "/plain"}).status == 400


# -- --check -----------------------------------------------------------------------------


def test_check_names_file_line_and_key_of_bad_edge_settings(tmp_path: Path) -> None:
    path = tmp_path / "speedproxy.yaml"
    path.write_text(
        "server:\n"
        "  allow: [10.0.0.0/33]\n"
        "routing:\n"
        "  default:\n"
        "    path: /\n"
        "    upstream: default\n"
        "    cors: {origins: ['*'], credentials: true}\n"
        "    signed_urls: {secrets: ['${file:/nonexistent/url.key}'], bind_clientip: true}\n"
        "  loose:\n"
        "    path: /l/\n"
        "    upstream: default\n"
        "    signed_urls: {secrets: ['0123456789abcdef0123'], query: sign}\n"
    )
    done = check_config(path)
    assert done.returncode == 1, done.stdout
    assert 'speedproxy.yaml:2: server.allow[0]: expected an IP address or CIDR network, got "10.0.0.0/33"' in done.stdout
    assert "speedproxy.yaml:7: routing.default.cors.origins: \"*\" cannot be used with credentials: true" in done.stdout
    assert "speedproxy.yaml:8: routing.default.signed_urls.secrets[0]: ${file:/nonexistent/url.key}: cannot read it" in done.stdout
    assert "speedproxy.yaml:8: routing.default.signed_urls.bind_clientip: unknown key 'bind_clientip'; did you mean 'bind_client_ip'?" in done.stdout
    assert 'speedproxy.yaml:12: routing.loose.signed_urls.query: expected "signed"' in done.stdout
    assert 'or "ignore" (it covers the path only: parameters may be added or changed), got "sign"' in done.stdout


def test_a_key_file_rotated_and_reloaded_signs_and_verifies_in_every_worker(module_stack, env: Env, tmp_path: Path) -> None:
    key_file = tmp_path / "url.key"
    key_file.write_text("first-file-key-0123456789\n")
    new_key = "second-file-key-9876543210"
    config = {
        "server": {"workers": 2},
        "admin": {"api_key": ADMIN_KEY},
        "backends": {"default": [backend_entry(env.origin, id="origin")]},
        "routing": {
            "default": {"path": "/", "upstream": "default"},
            "video": {"path": "/v/", "upstream": "default", "signed_urls": {"secrets": [f"${{file:{key_file}}}"]}},
        },
    }
    proxy = module_stack.proxy(config=config)
    admin = AdminClient.of(proxy, ADMIN_KEY)

    def status_of(target: str) -> int:
        connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=TIMEOUT)
        try:
            connection.request("GET", target, headers={"Connection": "close"})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    old_url = admin.post("/api/v1/sign", {"path": "/v/r.ts"}).json["url"]
    assert all(status_of(old_url) == 200 for _ in range(4))
    key_file.write_text(new_key + "\n")
    proxy.reload()
    new_url = admin.post("/api/v1/sign", {"path": "/v/r.ts"}).json["url"]
    expires = int(re.search(r"exp=(\d+)", new_url).group(1))
    assert new_url.endswith(_signature(new_key, "/v/r.ts", expires))
    # Fresh connections land on both workers: every one has the new key, none the old.
    assert [status_of(new_url) for _ in range(6)] == [200] * 6
    assert [status_of(old_url) for _ in range(6)] == [403] * 6


def test_ip_lists_on_an_ipv6_peer(module_stack, env: Env) -> None:
    """A client connecting over IPv6 (no proxy header): its own address is matched."""
    from speedproxy.testing import free_port

    config = {
        "server": {"workers": 2, "host": "::1", "port": free_port("::1"), "trusted_proxies": []},
        "backends": {"default": [backend_entry(env.origin, id="origin")]},
        "routing": {
            "default": {"path": "/", "upstream": "default", "allow": ["::1/128"]},
            "v4only": {"path": "/v4/", "upstream": "default", "allow": ["127.0.0.0/8"]},
            "nov6": {"path": "/nov6/", "upstream": "default", "deny": ["::/0"]},
        },
    }
    proxy = module_stack.proxy(config=config)

    def get(path: str) -> Tuple[int, bytes]:
        connection = http.client.HTTPConnection("::1", proxy.port, timeout=TIMEOUT)
        try:
            connection.request("GET", path, headers={"Connection": "close"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    assert get("/x") == (200, b"/x")
    status, body = get("/v4/x")
    assert status == 403 and b"::1 is not in the allow list" in body
    status, body = get("/nov6/x")
    assert status == 403 and b"::1 is denied" in body
