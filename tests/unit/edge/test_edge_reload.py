"""A reload rebuilds a route's edge filters only when their settings change."""

from __future__ import annotations

import dataclasses

from speedproxy.config import parse_config

from edge_support import BASE, proxy_with

ROUTES = """\
api: {path: /api/, upstream: default, cors: {origins: ["https://a.example"]}, allow: ["10.0.0.0/8"]}
plain: {path: /, upstream: default}
"""


def _chains(proxy):
    return {route.name: route.filters for route in proxy.core.routes}


def test_an_unchanged_route_keeps_its_chain_and_a_changed_one_is_rebuilt() -> None:
    proxy = proxy_with(ROUTES)
    before = _chains(proxy)
    config = proxy.core.config
    # Another key of the config changes: the edge filters are kept.
    proxy.core.apply_config(dataclasses.replace(config, server=dataclasses.replace(config.server, retries=1)))
    assert _chains(proxy)["api"] is before["api"]
    # The route's allow list changes: rebuilt.
    routing = dict(config.routing)
    routing["api"] = dataclasses.replace(routing["api"], allow=("192.0.2.0/24",))
    proxy.core.apply_config(dataclasses.replace(config, routing=routing))
    assert _chains(proxy)["api"] is not before["api"]
    # The host's deny list appears: every route gets an address filter, the bare one too.
    text = BASE.replace("server:\n", "server:\n  deny: ['203.0.113.0/24']\n") + "routing:\n  plain: {path: /, upstream: default}\n"
    proxy.core.apply_config(parse_config(text))
    assert _chains(proxy)["plain"] is not None
    proxy.core.apply_config(parse_config(BASE + "routing:\n  plain: {path: /, upstream: default}\n"))
    assert _chains(proxy)["plain"] is None
