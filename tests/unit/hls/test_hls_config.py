"""The ``hls:`` section of a route, and where its filters go on the chain."""

from __future__ import annotations

import pytest

from speedproxy.cache.filter import CacheFilter
from speedproxy.config.loader import ConfigError, config_from_mapping, config_to_mapping, parse_config
from speedproxy.config.model import RouteHlsConfig
from speedproxy.hls.filter import HlsFilter, HlsRewriteFilter
from speedproxy.testing import InMemoryProxy

ISSUE_CONFIG = """\
backends:
  origin: [{id: o1, host: 127.0.0.1, port: 8081}]
routing:
  video:
    path: /hls/
    upstream: origin
    cache: {enabled: true}
    hls:
      enabled: true
      prefetch_depth: 3          # segments ahead of the one a player asked for
      max_prefetch_downloads: 8  # per worker
      live_playlist_ttl: auto    # auto = half the target duration
      vod_playlist_ttl: 1h
      segment_ttl: 7d            # segments are immutable
      rewrite_absolute_urls: true
      rate_limit: 0              # bytes/s per client connection, 0 = unlimited
      rate_limit_after: 2MiB
      max_bandwidth: 0           # bytes/s for the whole route
      max_variant_bandwidth: 0
"""


def test_the_issues_config_loads_with_its_values() -> None:
    hls = parse_config(ISSUE_CONFIG).routing["video"].hls
    assert hls == RouteHlsConfig(enabled=True, live_playlist_ttl=None, vod_playlist_ttl=3600.0, segment_ttl=604800.0)


def test_defaults_and_other_values() -> None:
    assert parse_config("").routing["default"].hls == RouteHlsConfig(enabled=False)
    text = ISSUE_CONFIG.replace("live_playlist_ttl: auto", "live_playlist_ttl: 1500ms")
    text = text.replace("max_variant_bandwidth: 0", "max_variant_bandwidth: 2.5M")
    text = text.replace("rate_limit: 0 ", "rate_limit: 1MiB/s ").replace("max_bandwidth: 0 ", "max_bandwidth: 100MB ")
    hls = parse_config(text).routing["video"].hls
    assert (hls.live_playlist_ttl, hls.max_variant_bandwidth, hls.rate_limit, hls.max_bandwidth) == (
        1.5,
        2500000,
        1024 * 1024,
        100 * 1000 * 1000,
    )


def test_round_trip_through_a_mapping() -> None:
    for text in (ISSUE_CONFIG, ISSUE_CONFIG.replace("auto", "3s").replace("rate_limit_after: 2MiB", "rate_limit_after: 1000")):
        config = parse_config(text)
        data = config_to_mapping(config)
        assert data["routing"]["video"]["hls"]["live_playlist_ttl"] in ("auto", "3s")
        assert config_from_mapping(data).routing == config.routing
    assert "hls" not in config_to_mapping(parse_config(""))["routing"]["default"]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("prefetch_depth: -1", "hls.prefetch_depth: must be between 0 and 64"),
        ("live_playlist_ttl: soon", 'hls.live_playlist_ttl: expected "auto" or a duration'),
        ("segment_ttl: forever", "hls.segment_ttl: expected a duration"),
        ("max_variant_bandwidth: lots", "hls.max_variant_bandwidth: expected bits per second"),
        ("rate_limit: fast", "hls.rate_limit: expected a size"),
        ("rewrite_absolute_url: true", "unknown key 'rewrite_absolute_url'; did you mean 'rewrite_absolute_urls'?"),
    ],
)
def test_bad_values_name_file_line_and_key(setting: str, message: str) -> None:
    text = ISSUE_CONFIG.replace("enabled: true\n      prefetch_depth: 3", "enabled: true\n      " + setting)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "speedproxy.yaml")
    assert any(line.startswith("speedproxy.yaml:") and message in line for line in caught.value.problems), caught.value.problems


def test_hls_needs_the_routes_cache() -> None:
    text = ISSUE_CONFIG.replace("    cache: {enabled: true}\n", "")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "speedproxy.yaml")
    assert caught.value.problems == [
        "speedproxy.yaml:8: routing.video.hls.enabled: needs cache.enabled: true on this route "
        "(HLS lifetimes and prefetch fill the route's cache)"
    ]


def test_the_hls_filters_sit_around_the_cache() -> None:
    proxy = InMemoryProxy(
        ISSUE_CONFIG.replace("upstream: origin", "upstream: origin\n    filters: []").replace("origin:", "default:").replace(
            "upstream: origin", "upstream: default"
        )
    )
    chain = proxy.core.routes[0].filters
    assert chain is not None
    assert [type(item) for item in chain.filters] == [HlsFilter, CacheFilter, HlsRewriteFilter]
    assert chain.wants_body and not chain.rewrites_body
    # A reload that leaves the route alone keeps the chain (and the HLS state).
    proxy.core.apply_config(proxy.config)
    assert proxy.core.routes[0].filters is chain


def test_cache_info_sums_the_workers_hls_figures() -> None:
    from speedproxy.admin.cache_figures import combine_info

    def row(slot: int, started: int) -> dict:
        figures = {"prefetch": {"started": started, "ok": started, "in_flight": 0}, "viewers": 2, "uris": 10}
        return {"slot": slot, "pid": 100 + slot, "result": {"enabled": True, "memory": {}, "misses": 0, "hls": {"video": figures}}}

    info = combine_info([row(0, 3), row(1, 4), {"slot": 2, "pid": 102, "result": {"enabled": True, "memory": {}}}])
    assert info["hls"] == {"video": {"prefetch": {"started": 7, "ok": 7, "in_flight": 0}, "viewers": 4, "uris": 20}}
    assert [worker.get("hls", {}).get("video", {}).get("prefetch", {}).get("started") for worker in info["workers"]] == [3, 4, None]
    assert "hls" not in combine_info([{"slot": 0, "pid": 1, "result": {"enabled": True, "memory": {}}}])
