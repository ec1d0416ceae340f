"""A route's ``hls`` key: playlist and segment lifetimes, prefetch and bandwidth of an HLS origin."""

from __future__ import annotations

import re
from typing import Optional

from speedproxy.config.kinds import boolean, duration, integer, size
from speedproxy.config.located import Val
from speedproxy.config.model import RouteHlsConfig
from speedproxy.config.problems import Problems
from speedproxy.config.schema import Kind, Section
from speedproxy.config.units import describe_value, format_duration, parse_duration, parse_size

__all__ = ["ROUTE_HLS"]


def _live_playlist_ttl(problems: Problems, val: Val, path: str) -> Optional[float]:
    """``auto`` (``None``: half the target duration) or a duration (0: the origin's)."""
    if val.value == "auto":
        return None
    try:
        return parse_duration(val.value)
    except ValueError as exc:
        raise ValueError(f'expected "auto" or a duration; {exc}') from None


live_playlist_ttl = Kind(_live_playlist_ttl, write=lambda value: "auto" if value is None else format_duration(value))


def _rate(problems: Problems, val: Val, path: str) -> int:
    """Bytes per second: a size, optionally written with ``/s`` (``2MiB/s``); 0 = unlimited."""
    value = val.value
    if isinstance(value, str) and value.strip().lower().endswith("/s"):
        value = value.strip()[:-2]
    return parse_size(value)


#: Bytes per second, written as a number.
rate = Kind(_rate)

_BITRATE = re.compile(r"(\d+(?:\.\d+)?)([kmg]?)(?:bps|bit/s|b/s)?")


def _bitrate(problems: Problems, val: Val, path: str) -> int:
    """Bits per second as HLS ``BANDWIDTH`` counts them: a number, or ``800k``,
    ``2.5M``, ``1G`` (powers of 1000); 0 = no cap."""
    value = val.value
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f'expected bits per second such as 2000000 or "2M", got {describe_value(value)}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be at least 0, got {value}")
        return value
    match = _BITRATE.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError(f'expected bits per second such as 2000000 or "2M", got {describe_value(value)}')
    number = float(match.group(1)) * {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}[match.group(2)]
    return int(round(number))


#: Bits per second, written as a number.
bitrate = Kind(_bitrate)

ROUTE_HLS = Section(
    RouteHlsConfig,
    {
        "enabled": boolean,
        "prefetch_depth": integer(0, 64),
        "max_prefetch_downloads": integer(0, 10000),
        "live_playlist_ttl": live_playlist_ttl,
        "vod_playlist_ttl": duration(positive=False),
        "segment_ttl": duration(positive=False),
        "rewrite_absolute_urls": boolean,
        "rate_limit": rate,
        "rate_limit_after": size(0),
        "max_bandwidth": rate,
        "max_variant_bandwidth": bitrate,
    },
)
