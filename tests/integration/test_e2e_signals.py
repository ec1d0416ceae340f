"""SIGHUP reloads (or keeps a good config); SIGTERM drains in-flight requests."""

from __future__ import annotations

import signal
import socket
import threading
from typing import Dict

import pytest

from speedproxy.testing import ProxyProcess, RawClient, backend_entry, delayed, wait_until


def _backend_name(proxy: ProxyProcess, path: str = "/who") -> str:
    with RawClient(*proxy.address) as client:
        client.request("GET", path)
        response = client.read_response()
    assert response.status == 200, response.body
    return response.json()["backend"]


def test_sighup_switches_to_new_backend(stack, proxy_factory) -> None:
    old = stack.backend(name="old")
    new = stack.backend(name="new")
    proxy = proxy_factory(old)
    # A kept-alive client connection opened before the reload.
    with RawClient(*proxy.address) as kept:
        kept.request("GET", "/before")
        assert kept.read_response().json()["backend"] == "old"
        assert _backend_name(proxy) == "old"
        line = proxy.reload({"backends": {"default": [backend_entry(new, id="b0")]}})
        assert line
        for _ in range(3):
            assert _backend_name(proxy) == "new"
        kept.request("GET", "/after")
        response = kept.read_response()
        assert response.status == 200
        assert response.json()["backend"] == "new"
    assert not any(request.path == "/after" for request in old.requests)


def test_sighup_with_invalid_file_keeps_old_config(stack, proxy_factory) -> None:
    origin = stack.backend(name="origin")
    proxy = proxy_factory(origin)
    assert _backend_name(proxy) == "origin"
    proxy.write_config_text(proxy.config_path.read_text() + "bogus_section:\n  x: 1\n")
    mark = proxy.log_mark()
    proxy.signal(signal.SIGHUP)
    line = proxy.wait_for_log("config reload refused", timeout=5.0, since=mark)
    assert line
    reason = proxy.wait_for_log("bogus_section", timeout=5.0, since=mark)
    assert str(proxy.config_path) in reason
    assert proxy.running()
    assert _backend_name(proxy) == "origin"


def _refused(proxy: ProxyProcess) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2.0)
        return probe.connect_ex(proxy.address) != 0


def test_sigterm_drains_in_flight_request(stack, proxy_factory) -> None:
    origin = stack.backend(name="origin")
    origin.route("/slow", delayed(2.0))
    proxy = proxy_factory(origin, shutdown_grace="10s")
    outcome: Dict[str, object] = {}

    def slow_request() -> None:
        try:
            with RawClient(*proxy.address, timeout=15.0) as client:
                client.request("GET", "/slow/request")
                outcome["response"] = client.read_response()
        except Exception as error:  # reported by the assertions below
            outcome["error"] = error

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    origin.wait_for(lambda b: any(h[1] == "/slow/request" for h in b.heads), 5.0, "the slow request")
    proxy.signal(signal.SIGTERM)
    # Soon no new connection is accepted, while the slow request drains.
    wait_until(lambda: _refused(proxy), 5.0, "the listener to close")
    assert thread.is_alive(), (outcome, proxy.log_tail())
    thread.join(15.0)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    response = outcome["response"]
    assert response.status == 200  # type: ignore[attr-defined]
    assert response.json()["path"] == "/slow/request"  # type: ignore[attr-defined]
    assert proxy.wait(10.0) == 0, proxy.log_tail()


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "one-worker"])
def test_sigterm_exits_0(stack, proxy_factory, workers: int) -> None:
    origin = stack.backend(name="origin")
    proxy = proxy_factory(origin, workers=workers)
    assert _backend_name(proxy) == "origin"
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(10.0) == 0
