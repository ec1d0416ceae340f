"""The live dashboard (``GET /dashboard``) in headless Chromium, against a real speedproxy under load.

A ``twistd speedproxy`` with 2 workers, TLS, an API key, a caching route
(memory and disk tiers) and two backends (one alive, one a port nothing
listens on, taken out by its health check) serves traffic from a few client
threads (cached and uncached paths, some 5xx, slow requests, idle keep-alive
connections) while Chromium, driven over the DevTools protocol, shows the
page.  The figures the page shows are compared with what ``/stats`` and the
other endpoints answer just before and just after; a screenshot of the page
is saved as a test artefact (``tests/artifacts/dashboard.png``, or
``$SPEEDPROXY_TEST_ARTIFACTS``).

Chromium is installed with apt-get when it is missing (Debian's
``chromium``); if it still cannot be found the tests fail, naming what was
tried.  ``SPEEDPROXY_CHROMIUM`` may name the binary.
"""

from __future__ import annotations

import datetime
import http.client
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import trustme

from speedproxy.testing import BackendExchange, HTTPBackend, ProxyProcess, backend_entry, free_port, wait_until

from admin_support import AdminClient
from browser_support import Chromium, chromium_or_fail

KEY = "dashboard-Key-5e1f"
#: Client threads sending cached, uncached and failing requests; one more sends slow ones.
CLIENTS = 3
#: Keep-alive connections opened once and held, so that active connections never drop below this.
IDLE = 3
#: Alert thresholds that make exactly two alerts fire under this load (the others never do).
THRESHOLDS = {
    "error_rate": 0.01,
    "slow_requests_per_minute": 5,
    "avg_latency_ms": 1e6,
    "p99_latency_ms": 1e6,
    "cpu_percent": 1e6,
    "rss_mb": 1e6,
    "fd_usage": 1e6,
    "connection_usage": 1e6,
}
EXPECTED_ALERTS = {"error_rate", "slow_requests_per_minute"}

#: Everything the page shows, read in one go (so from one refresh).
COLLECT = r"""
(() => {
  const value = (node) => node.getAttribute("data-value");
  const figures = (root) => {
    const out = {};
    root.querySelectorAll("[data-metric]").forEach((node) => { out[node.dataset.metric] = value(node); });
    return out;
  };
  const top = {};
  document.querySelectorAll("[data-metric]").forEach((node) => {
    if (!node.closest("tr")) top[node.dataset.metric] = value(node);
  });
  const rows = (selector, attr) => {
    const out = {};
    document.querySelectorAll(selector).forEach((tr) => { out[tr.getAttribute(attr)] = figures(tr); });
    return out;
  };
  return {
    state: document.body.dataset.state,
    ticks: Number(document.body.dataset.ticks),
    top: top,
    workers: rows("#workers tr[data-worker]", "data-worker"),
    backends: rows("#backends tr[data-backend]", "data-backend"),
    tiers: rows("#cache-tiers tr[data-tier]", "data-tier"),
    slow: Array.from(document.querySelectorAll("#slow tr[data-slow]")).map(figures),
    alerts: Array.from(document.querySelectorAll("#alerts li[data-alert]")).map((li) => li.dataset.alert),
    banner: document.getElementById("banner").hidden ? null : document.getElementById("banner").textContent,
    keyPanel: !document.getElementById("key-panel").hidden,
    keyMessage: document.getElementById("key-message").textContent,
    forgetVisible: !document.getElementById("forget-key").hidden,
  };
})()
"""


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    return chromium_or_fail('the dashboard tests')


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where screenshots go: $SPEEDPROXY_TEST_ARTIFACTS, else tests/artifacts/ (ignored by git)."""
    configured = os.environ.get("SPEEDPROXY_TEST_ARTIFACTS")
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    directory = Path(__file__).resolve().parents[1] / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Test artefacts (screenshots); never committed.\n*\n")
    return directory


@pytest.fixture(scope="module")
def browser(chromium_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium(chromium_binary, tmp_path_factory.mktemp("chromium"))
    try:
        chromium.start()
    except Exception as error:
        chromium.close()
        pytest.fail(f"headless Chromium ({chromium_binary}) did not start: {error}\n{chromium.log_tail()}", pytrace=False)
    try:
        yield chromium
    finally:
        chromium.close()


def _origin(exchange: BackendExchange) -> None:
    path = exchange.request.path
    if path.startswith("/slow"):
        time.sleep(0.4)
        exchange.send(200, b"slow\n", [("Cache-Control", "no-store")])
    elif path.startswith("/err"):
        exchange.send(500, b"broken\n", [("Cache-Control", "no-store")])
    elif path.startswith("/c/"):
        exchange.send(200, (path + "\n").encode() * 64, [("Cache-Control", "max-age=600")])
    else:
        exchange.send(200, path.encode() + b"\n", [("Cache-Control", "no-store")])


@dataclass
class Env:
    proxy: ProxyProcess
    admin: AdminClient
    tls: ssl.SSLContext
    not_after: datetime.datetime

    @property
    def page(self) -> str:
        return f"http://{self.proxy.host}:{self.proxy.admin_port}/dashboard"


@pytest.fixture(scope="module")
def env(module_stack, tmp_path_factory: pytest.TempPathFactory) -> Env:
    origin = HTTPBackend(_origin, name="origin").start()
    module_stack.backends.append(origin)
    files = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    not_after = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=30, hours=1)
    leaf = authority.issue_cert("localhost", "127.0.0.1", not_after=not_after)
    leaf.private_key_pem.write_to_path(str(files / "server.key"))
    leaf.cert_chain_pems[0].write_to_path(str(files / "server.crt"))
    authority.cert_pem.write_to_path(str(files / "ca.pem"))
    dead = {"id": "b1", "host": "127.0.0.1", "port": free_port(),
            "health_check": {"path": "/health", "interval": "200ms", "timeout": "200ms", "failures": 1}}
    config = {
        "server": {"workers": 2, "slow_request_threshold": "250ms", "idle_timeout": "10m"},
        "ssl": {"enabled": True, "cert_file": str(files / "server.crt"), "key_file": str(files / "server.key")},
        "admin": {"api_key": KEY},
        "cache": {"memory_size": "32MiB", "disk_path": str(tmp_path_factory.mktemp("cache")), "disk_size": "256MiB"},
        "backends": {"default": [backend_entry(origin, id="b0"), dead]},
        "routing": {"default": {"path": "/", "upstream": "default", "cache": {"enabled": True}}},
    }
    proxy = module_stack.proxy(config=config)
    admin = AdminClient.of(proxy, KEY)
    answer = admin.put("/api/v1/performance/alerts/thresholds", THRESHOLDS)
    assert answer.status == 200, answer
    context = ssl.create_default_context(cafile=str(files / "ca.pem"))
    return Env(proxy, admin, context, not_after)


class Traffic:
    """Bounded load through the proxy for as long as the module runs."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.stop = threading.Event()
        self.errors: List[str] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._idle: List[http.client.HTTPSConnection] = []
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)]
        self._threads.append(threading.Thread(target=self._slow, daemon=True))

    def _get(self, path: str, connection: Any = None) -> int:
        own = connection is None
        if own:
            connection = http.client.HTTPSConnection(self.env.proxy.host, self.env.proxy.port, context=self.env.tls, timeout=10)
        try:
            connection.request("GET", path, headers={} if not own else {"Connection": "close"})
            response = connection.getresponse()
            response.read()
            with self._lock:
                self.sent += 1
            return response.status
        finally:
            if own:
                connection.close()

    def _loop(self, paths: Any, pause: float) -> None:
        for path in paths:
            if self.stop.is_set():
                return
            try:
                self._get(path)
            except Exception as error:  # recorded; a few are expected while b1 is found down
                with self._lock:
                    self.errors.append(repr(error))
                time.sleep(0.05)
            time.sleep(pause)

    def _client(self, number: int) -> None:
        def paths() -> Iterator[str]:
            i = number
            while True:
                i += 1
                if i % 10 == 0:
                    yield "/err"
                elif i % 7 == 0:
                    yield f"/u/{i}"
                else:
                    yield f"/c/{i % 40}"

        self._loop(paths(), 0.01)

    def _slow(self) -> None:
        def paths() -> Iterator[str]:
            while True:
                yield "/slow"

        self._loop(paths(), 0.0)

    def __enter__(self) -> "Traffic":
        for _ in range(IDLE):
            connection = http.client.HTTPSConnection(self.env.proxy.host, self.env.proxy.port, context=self.env.tls, timeout=10)
            assert self._get("/c/0", connection) == 200
            self._idle.append(connection)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(15.0)
        for connection in self._idle:
            connection.close()


@pytest.fixture(scope="module")
def traffic(env: Env) -> Iterator[Traffic]:
    with Traffic(env) as load:
        admin = env.admin
        # Until every kind of figure has something to show: hits, 5xx, a slow request, b1 found down.
        wait_until(
            lambda: admin.get("/stats").json["cache"].get("hit_ratio") and admin.get("/stats").json["totals"]["status"]["5xx"],
            20.0, "cache hits and 5xx answers",
        )
        wait_until(lambda: admin.get("/api/v1/performance/slow-requests?limit=1").json["total"] >= 2, 20.0, "slow requests")
        wait_until(
            lambda: not {b["id"]: b for b in admin.get("/upstream").json["upstreams"]["default"]["backends"]}["b1"]["healthy"],
            20.0, "b1 to be found down",
        )
        wait_until(lambda: {a["metric"] for a in admin.get("/api/v1/performance/health").json["alerts"]} == EXPECTED_ALERTS,
                   20.0, f"the alerts {EXPECTED_ALERTS}")
        yield load


# -- helpers --------------------------------------------------------------------------


def _state(browser: Chromium) -> Dict[str, Any]:
    return browser.evaluate(COLLECT)


def _wait_state(browser: Chromium, state: str, timeout: float = 30.0) -> Dict[str, Any]:
    last: Dict[str, Any] = {}

    def reached() -> bool:
        last.clear()
        last.update(_state(browser))
        return last["state"] == state

    try:
        browser.wait_for(reached, timeout, f"the page's state {state!r}")
    except TimeoutError as error:
        raise AssertionError(f"{error}; the page shows {last}; browser problems {browser.problems()}") from None
    return dict(last)


def _ticks(browser: Chromium) -> int:
    return int(browser.evaluate("Number(document.body.dataset.ticks)"))


def _num(text: Any) -> float:
    assert text not in (None, ""), f"no figure shown ({text!r})"
    return float(text)


def _snapshot(admin: AdminClient) -> Dict[str, Any]:
    return {
        "stats": admin.get("/stats").json,
        "perf": admin.get("/api/v1/performance/stats").json,
        "health": admin.get("/api/v1/performance/health").json,
        "slow": admin.get("/api/v1/performance/slow-requests?limit=1").json,
        "cache": admin.get("/cache/info").json,
        "upstream": admin.get("/upstream").json,
        "status": admin.get("/status").json,
    }


def _between(name: str, shown: float, low: float, high: float) -> None:
    assert low <= shown <= high, f"{name}: the page shows {shown}, the API said {low} just before and {high} just after"


def _denied_lines(proxy: ProxyProcess) -> int:
    return len(re.findall(r"outcome=denied", proxy.log_text()))


# -- tests ----------------------------------------------------------------------------


def test_page_and_assets_are_served_from_the_package(env: Env) -> None:
    anonymous = AdminClient.of(env.proxy)
    page = anonymous.get("/dashboard")
    assert page.status == 200, page
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    bodies = {"page": page.raw}
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        answer = anonymous.get(f"/dashboard/{name}")
        assert answer.status == 200, answer
        assert answer.headers["content-type"].startswith(kind)
        bodies[name] = answer.raw
    for name, body in bodies.items():
        text = body.decode("utf-8")
        # Nothing from elsewhere: no CDN, no font service (the SVG namespace is a name, not a fetch).
        assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.replace("http://www.w3.org/2000/svg", "")), name
    # The key is kept nowhere but in a variable (comments may say so).
    script = re.sub(r"//[^\n]*", "", re.sub(r"(?s)/\*.*?\*/", "", bodies["app.js"].decode("utf-8")))
    for forbidden in ("localStorage", "sessionStorage", "document.cookie", "indexedDB"):
        assert forbidden not in script
    assert b"<script>" not in bodies["page"] and b" style=" not in bodies["page"]
    head = anonymous.call("HEAD", "/dashboard")
    assert head.status == 200 and head.raw == b""
    slash = anonymous.get("/dashboard/")
    assert (slash.status, slash.headers["location"]) == (301, "../dashboard")
    assert anonymous.post("/dashboard", {}).status == 405
    # Unknown paths below it are like any unknown admin path: behind the key.
    assert anonymous.get("/dashboard/secret.json").status == 401
    assert env.admin.get("/dashboard/secret.json").status == 404


def test_dashboard_shows_the_live_figures_of_stats(env: Env, traffic: Traffic, browser: Chromium, artifacts: Path) -> None:
    admin = env.admin
    browser.clear_events()
    browser.navigate(env.page + "#key=" + KEY)
    _wait_state(browser, "live")
    browser.wait_for(lambda: _ticks(browser) >= 3, 20.0, "three refreshes")

    # The key left the URL at once and is kept nowhere but in the script's memory.
    assert browser.evaluate("location.href") == env.page
    assert browser.evaluate("location.hash") == ""
    assert browser.evaluate("localStorage.length + sessionStorage.length") == 0
    assert browser.evaluate("document.cookie") == ""
    assert KEY not in browser.evaluate("document.documentElement.outerHTML")

    # Refreshed at least every 2 s (it asks every second).
    changes = []
    seen = _ticks(browser)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        now = _ticks(browser)
        if now != seen:
            changes.append(time.monotonic())
            seen = now
        time.sleep(0.05)
    assert len(changes) >= 3, f"only {len(changes)} refreshes in 5 s"
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    assert max(gaps) <= 2.0, f"refresh gaps {gaps}"

    # Bracket one refresh between two rounds of API calls.
    early = admin.get("/stats").json
    time.sleep(4.0)
    before = _snapshot(admin)
    ticks = _ticks(browser)
    browser.wait_for(lambda: _ticks(browser) >= ticks + 2, 10.0, "two more refreshes")
    shown = _state(browser)
    after = _snapshot(admin)
    top = shown["top"]
    print("the page shows:", shown)

    assert shown["state"] == "live" and shown["banner"] is None and not shown["keyPanel"] and shown["forgetVisible"]

    # Totals, as /stats says.
    b_totals, a_totals = before["stats"]["totals"], after["stats"]["totals"]
    _between("requests_total", _num(top["requests_total"]), b_totals["requests"], a_totals["requests"])
    _between("errors_total", _num(top["errors_total"]), b_totals["status"]["5xx"], a_totals["status"]["5xx"])
    for snapshot in (before, after):
        assert IDLE <= snapshot["stats"]["totals"]["active_connections"] <= IDLE + CLIENTS + 1 + 2
    _between("active_connections", _num(top["active_connections"]), IDLE, IDLE + CLIENTS + 1 + 2)
    _between("active_upstream_requests", _num(top["active_upstream_requests"]), 0, CLIENTS + 1 + 2)

    # requests/s from successive /stats totals: close to what the test measures over the same seconds.
    measured = (a_totals["requests"] - early["totals"]["requests"]) / (after["stats"]["uptime_seconds"] - early["uptime_seconds"])
    rps = _num(top["requests_per_second"])
    assert measured > 5, f"too little load to judge: {measured:.1f} requests/s"
    assert 0.5 * measured <= rps <= 2.0 * measured, f"the page says {rps} requests/s, the test measured {measured:.1f}"

    # Per worker: the same sample as the totals, so they add up exactly.
    workers = shown["workers"]
    assert sorted(workers) == ["0", "1"]
    assert sum(_num(w["worker_requests"]) for w in workers.values()) == _num(top["requests_total"])
    assert sum(_num(w["worker_active_connections"]) for w in workers.values()) == _num(top["active_connections"])
    b_workers = {str(w["slot"]): w for w in before["stats"]["workers"]}
    a_workers = {str(w["slot"]): w for w in after["stats"]["workers"]}
    for slot, row in workers.items():
        assert int(row["worker_pid"]) == a_workers[slot]["pid"]
        _between(f"worker {slot} requests", _num(row["worker_requests"]), b_workers[slot]["requests"], a_workers[slot]["requests"])
        assert _num(row["worker_requests_per_second"]) >= 0
        assert _num(row["worker_cpu_percent"]) >= 0 and _num(row["worker_rss_bytes"]) > 10 * 1024 * 1024
        assert row["worker_state"] == "ready"
    assert _num(top["workers_ready"]) == 2

    # Latency and error rate of the last 10 s, as /api/v1/performance/stats says (moving figures).
    windows = [s["perf"]["windows"]["last_10s"] for s in (before, after)]
    for name, key in (("latency_p50_ms", "p50_ms"), ("latency_p99_ms", "p99_ms"), ("latency_avg_ms", "avg_latency_ms")):
        values = [w[key] for w in windows]
        _between(name, _num(top[name]), 0.5 * min(values), 2.0 * max(values) + 1.0)
    rates = [w["error_rate"] for w in windows]
    _between("error_rate", _num(top["error_rate"]), min(rates) - 0.05, max(rates) + 0.05)
    assert _num(top["error_rate"]) > 0.01
    _between("in_flight", _num(top["in_flight"]), 0, CLIENTS + 1 + 2)

    # Backends: health as /upstream says, in flight, EWMA latency, counters as /stats says.
    backends = shown["backends"]
    assert sorted(backends) == ["default/b0", "default/b1"]
    for snapshot in (before, after):
        health = {b["id"]: b["healthy"] for b in snapshot["upstream"]["upstreams"]["default"]["backends"]}
        assert health == {"b0": True, "b1": False}
    assert backends["default/b0"]["backend_health"] == "up"
    assert backends["default/b1"]["backend_health"] == "down"
    b0 = backends["default/b0"]
    assert 0 < _num(b0["backend_ewma_ms"]) < 10000
    _between("b0 in flight", _num(b0["backend_in_flight"]), 0, CLIENTS + 1 + 2)
    b_b0 = {b["id"]: b for b in before["stats"]["backends"]}["b0"]
    a_b0 = {b["id"]: b for b in after["stats"]["backends"]}["b0"]
    _between("b0 requests", _num(b0["backend_requests"]), b_b0["requests"], a_b0["requests"])
    assert _num(backends["default/b1"]["backend_in_flight"]) == 0

    # Slow requests, alerts and health.
    _between("slow_total", _num(top["slow_total"]), before["slow"]["total"], after["slow"]["total"])
    assert _num(top["slow_threshold_ms"]) == 250.0
    assert shown["slow"] and all(row["slow_path"] == "/slow" for row in shown["slow"])
    assert all(_num(row["slow_duration_ms"]) >= 250 for row in shown["slow"])
    assert set(shown["alerts"]) == EXPECTED_ALERTS
    for snapshot in (before, after):
        assert {a["metric"] for a in snapshot["health"]["alerts"]} == EXPECTED_ALERTS
    assert top["health_status"] == "degraded" == after["health"]["status"]

    # The cache: hit ratio as /stats says, bytes and objects per tier as /cache/info says.
    ratios = [s["stats"]["cache"]["hit_ratio"] for s in (before, after)]
    _between("cache_hit_ratio", _num(top["cache_hit_ratio"]), min(ratios) - 0.01, max(ratios) + 0.01)
    assert _num(top["cache_hit_ratio"]) > 0.3
    _between("cache_origin_requests", _num(top["cache_origin_requests"]),
             before["stats"]["cache"]["origin_requests"], after["stats"]["cache"]["origin_requests"])
    rates = [s["cache"]["hit_rate"] for s in (before, after)]
    _between("cache_info_hit_rate", _num(top["cache_info_hit_rate"]), min(rates) - 0.01, max(rates) + 0.01)
    assert sorted(shown["tiers"]) == ["disk", "memory"]
    for tier, row in shown["tiers"].items():
        for key in ("entries", "bytes", "hits"):
            _between(f"{tier} {key}", _num(row[f"tier_{key}"]), before["cache"]["tiers"][tier][key], after["cache"]["tiers"][tier][key])
        assert _num(row["tier_bytes"]) > 0
        assert _num(row["tier_max_bytes"]) == after["cache"]["tiers"][tier]["max_bytes"]

    # The certificate, as /status says.
    certificate = after["status"]["tls_certificate"]
    assert top["cert_not_after"] == certificate["not_after"]
    assert top["cert_subject"] == certificate["subject"]
    assert int(_num(top["cert_days_left"])) in (29, 30)

    # The header.
    assert top["version"] == after["status"]["version"]
    assert top["mode"] == "master"

    # Only this listener was asked, and the page reported no error (CSP refusals included).
    origin = f"http://{env.proxy.host}:{env.proxy.admin_port}/"
    urls = [url for url in browser.requested_urls() if not url.startswith("data:")]
    assert urls and all(url.startswith(origin) for url in urls), sorted(set(urls))
    assert browser.problems() == []

    path = browser.screenshot(artifacts / "dashboard.png")
    assert path.stat().st_size > 20000
    print(f"dashboard screenshot: {path}")


def test_dashboard_asks_for_the_key_and_keeps_it_in_memory_only(env: Env, traffic: Traffic, browser: Chromium) -> None:
    browser.clear_events()
    browser.navigate(env.page)
    shown = _wait_state(browser, "need-key")
    assert shown["keyPanel"] and not shown["forgetVisible"]
    # The open figures are shown without the key; the rest waits for it.
    assert _num(shown["top"]["requests_total"]) > 0
    assert _num(shown["top"]["active_connections"]) >= IDLE
    assert sorted(shown["workers"]) == ["0", "1"]
    assert shown["backends"] == {} and shown["top"]["health_status"] == ""

    # A wrong key: refused once, asked again, and not tried again every second.
    denied = _denied_lines(env.proxy)
    browser.evaluate(
        "(() => { const i = document.getElementById('key-input'); i.value = 'not-the-key';"
        " document.getElementById('key-form').requestSubmit(); return true; })()"
    )
    browser.wait_for(lambda: _state(browser)["keyMessage"], 10.0, "the page to say the key was refused")
    time.sleep(3.0)
    shown = _state(browser)
    assert shown["state"] == "need-key" and shown["keyPanel"]
    assert browser.evaluate("document.getElementById('key-input').value") == ""
    assert 1 <= _denied_lines(env.proxy) - denied <= 2, "the refused key was tried again"

    # The right key: everything is shown, and the key is only in the script's memory.
    browser.evaluate(
        f"(() => {{ const i = document.getElementById('key-input'); i.value = {KEY!r};"
        " document.getElementById('key-form').requestSubmit(); return true; })()"
    )
    shown = _wait_state(browser, "live")
    browser.wait_for(lambda: _state(browser)["backends"], 10.0, "the backends")
    assert not _state(browser)["keyPanel"]
    assert KEY not in browser.evaluate("document.documentElement.outerHTML")
    assert browser.evaluate("localStorage.length + sessionStorage.length") == 0
    assert browser.evaluate("document.cookie") == ""

    # Forgotten on request; a key pasted into the open page's URL is taken (and leaves the URL).
    browser.evaluate("document.getElementById('forget-key').click(), true")
    _wait_state(browser, "need-key")
    browser.navigate(env.page + "#key=" + KEY)
    _wait_state(browser, "live")
    assert browser.evaluate("location.href") == env.page
    # Forgotten on reload: it was only in the script's memory.
    browser.reload()
    _wait_state(browser, "need-key")
    assert browser.problems() == []


def test_dashboard_shows_an_error_and_keeps_retrying(stack, browser: Chromium) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, workers=1)
    page = f"http://{proxy.host}:{proxy.admin_port}/dashboard"
    browser.navigate(page)
    shown = _wait_state(browser, "live")  # no key set: nothing to ask
    assert not shown["keyPanel"]
    proxy.stop()
    shown = _wait_state(browser, "error", 15.0)
    assert shown["banner"] and "Cannot read the admin API" in shown["banner"] and "Retrying" in shown["banner"]
    assert shown["top"]["requests_total"] != ""  # the last figures stay, marked stale
    assert browser.evaluate("document.body.classList.contains('stale')")
    proxy.process = None  # the same ports again
    proxy.start()
    shown = _wait_state(browser, "live", 30.0)
    assert shown["banner"] is None
