"""Routing by path prefix and Host, and the client address the backend is told."""

from __future__ import annotations

from typing import Callable, Dict

import pytest

from speedproxy.testing import HTTPBackend, ProxyProcess, RawClient, backend_entry


@pytest.fixture(scope="module")
def routed(module_stack) -> Dict[str, object]:
    """A proxy with /api, /api/v2 and a Host route; no catch-all."""
    api = module_stack.backend(name="api")
    api_v2 = module_stack.backend(name="api-v2")
    images = module_stack.backend(name="images")
    config = {
        "backends": {
            "api": [backend_entry(api, id="api1")],
            "api_v2": [backend_entry(api_v2, id="apiv2")],
            "images": [backend_entry(images, id="img1")],
        },
        "routing": {
            "api": {"path": "/api", "upstream": "api", "load_balancer": "round_robin"},
            "api_v2": {"path": "/api/v2", "upstream": "api_v2", "load_balancer": "round_robin"},
            "images": {"path": "/", "host": "img.example.com", "upstream": "images", "load_balancer": "round_robin"},
        },
    }
    proxy = module_stack.proxy(config=config)
    return {"proxy": proxy, "api": api, "api_v2": api_v2, "images": images}


def _backend_for(proxy: ProxyProcess, path: str, host: str = "www.example.com") -> str:
    with RawClient(*proxy.address) as client:
        client.request("GET", path, host=host)
        response = client.read_response()
    assert response.status == 200, response.body
    return response.json()["backend"]


@pytest.mark.parametrize(
    "path, host, expected",
    [
        ("/api/users", "www.example.com", "api"),
        ("/api", "www.example.com", "api"),
        ("/api/v2/users", "www.example.com", "api-v2"),
        ("/api/v2", "www.example.com", "api-v2"),
        ("/api/users", "img.example.com", "images"),
        ("/logo.png", "IMG.example.com:8080", "images"),
    ],
)
def test_route_choice(routed, path: str, host: str, expected: str) -> None:
    assert _backend_for(routed["proxy"], path, host) == expected


def test_no_matching_route_is_404_json(routed) -> None:
    with RawClient(*routed["proxy"].address) as client:
        client.request("GET", "/nowhere", host="www.example.com")
        response = client.read_response()
    assert response.status == 404
    assert response.header("Content-Type") == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == "no_route"
    assert body["request_id"] == response.header("X-Request-Id")
    for name in ("api", "api_v2", "images"):
        assert all(r.path != "/nowhere" for r in routed[name].requests)


# -- real client address ----------------------------------------------------------


def _seen_real_ip(proxy: ProxyProcess, backend: HTTPBackend, headers) -> HTTPBackend:
    with RawClient(*proxy.address) as client:
        client.request("GET", "/whoami", headers=headers)
        assert client.read_response().status == 200
    return backend.last_request


def test_real_ip_header_from_trusted_peer_is_used(stack, proxy_factory: Callable[..., ProxyProcess]) -> None:
    origin = stack.backend()
    proxy = proxy_factory(origin, trusted_proxies=["127.0.0.1/32"], real_ip_header="X-Real-IP")
    seen = _seen_real_ip(proxy, origin, [("X-Real-IP", "203.0.113.7")])
    assert seen.header("X-Real-IP") == "203.0.113.7"


def test_real_ip_header_is_ignored_without_trusted_proxies(stack, proxy_factory) -> None:
    origin = stack.backend()
    proxy = proxy_factory(origin, trusted_proxies=[], real_ip_header="X-Real-IP")
    seen = _seen_real_ip(proxy, origin, [("X-Real-IP", "203.0.113.7")])
    assert seen.header("X-Real-IP") == "127.0.0.1"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"


def test_forwarded_for_is_walked_right_to_left(stack, proxy_factory) -> None:
    origin = stack.backend()
    proxy = proxy_factory(origin, trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"], real_ip_header="X-Forwarded-For")
    # 1.2.3.4 is a spoofed entry the client prepended; 10.0.0.5 is a trusted hop.
    seen = _seen_real_ip(proxy, origin, [("X-Forwarded-For", "1.2.3.4, 198.51.100.9, 10.0.0.5")])
    assert seen.header("X-Real-IP") == "198.51.100.9"
    assert seen.header("X-Forwarded-For") == "1.2.3.4, 198.51.100.9, 10.0.0.5, 127.0.0.1"
    seen = _seen_real_ip(proxy, origin, [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "198.51.100.10")])
    assert seen.header("X-Real-IP") == "198.51.100.10"
