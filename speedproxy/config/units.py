"""Parse and format the human forms of durations (``30s``) and sizes (``64KiB``).

Durations are float seconds, sizes are int bytes.  ``format_*`` is the inverse
of ``parse_*``: ``parse_duration(format_duration(x)) == x`` for every finite
``x >= 0`` and likewise for sizes, so a config shown through the admin API can
be sent back unchanged.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
import ipaddress
from typing import Any, Tuple, Union

__all__ = ["describe_value", "format_duration", "format_size", "parse_duration", "parse_size"]

_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+")
_BARE_NUMBER = re.compile(_NUMBER)
#: Unit -> seconds; milliseconds divide so that ``250ms`` is exactly ``0.25``.
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

_SIZE = re.compile(rf"({_NUMBER})([a-z]*)")
_SIZE_UNITS = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", start=1):
    _SIZE_UNITS[_prefix] = 1024**_power  # nginx style: 1k = 1024
    _SIZE_UNITS[_prefix + "ib"] = 1024**_power
    _SIZE_UNITS[_prefix + "b"] = 1000**_power
del _power, _prefix
_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DECIMAL = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))

_DURATION_HINT = 'expected a duration like "30s" or "250ms"'
_SIZE_HINT = 'expected a size like "64KiB" or "10MiB"'


def describe_value(value: Any) -> str:
    """Show *value* in an error message roughly as it would be written in YAML."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def parse_duration(value: Union[int, float, str]) -> float:
    """Return *value* in seconds.

    Numbers are seconds.  Strings are a number with a unit (``ms``, ``s``,
    ``m``, ``h``), several of them (``1h30m``), or a bare number of seconds.

    :raises ValueError: if *value* is not a non-negative, finite duration.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{_DURATION_HINT}, got {describe_value(value)}")
    if isinstance(value, str):
        text = "".join(value.split())
        if text.startswith("-"):
            raise ValueError(f"expected a non-negative duration, got {describe_value(value)}")
        if _BARE_NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(_part_seconds(number, unit) for number, unit in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"{_DURATION_HINT}, got {describe_value(value)}")
    else:
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"duration is too large: {value!r}") from None
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {describe_value(value)}")
    if seconds < 0:
        raise ValueError(f"expected a non-negative duration, got {describe_value(value)}")
    return seconds


def _part_seconds(number: str, unit: str) -> float:
    if unit == "ms":
        return float(number) / 1000
    return float(number) * _SECONDS[unit]


def format_duration(seconds: float) -> str:
    """Return the shortest exact human form of *seconds* (``"5m"``, ``"250ms"``, ``"1.5s"``).

    :raises ValueError: if *seconds* is negative or not finite.
    """
    seconds = parse_duration(seconds)
    if seconds == 0:
        return "0s"
    candidates = []
    if seconds < 1:
        candidates.append(("ms", seconds * 1000))
    candidates.extend((unit, seconds / factor) for unit, factor in _SECONDS.items())
    for unit, count in candidates:
        if count.is_integer():
            text = f"{int(count)}{unit}"
            try:
                if parse_duration(text) == seconds:
                    return text
            except ValueError:  # rounds up to infinity
                pass
    # The shortest repr always round-trips through float(); avoid exponents.
    return f"{Decimal(repr(seconds)):f}s"


def parse_size(value: Union[int, float, str]) -> int:
    """Return *value* in bytes.

    Numbers are bytes.  Strings take a unit: ``B``; ``KiB``/``MiB``/``GiB``/``TiB``
    (powers of 1024); ``KB``/``MB``/``GB``/``TB`` (powers of 1000); ``k``/``m``/
    ``g``/``t`` as nginx does (powers of 1024).  Units are case-insensitive.

    :raises ValueError: if *value* is not a non-negative whole number of bytes.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{_SIZE_HINT}, got {describe_value(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected a whole number of bytes, got {describe_value(value)}")
        value = int(value)
    if isinstance(value, str):
        text = "".join(value.split())
        match = _SIZE.fullmatch(text.lower())
        if text.startswith("-"):
            raise ValueError(f"expected a non-negative size, got {describe_value(value)}")
        if match is None or match.group(2) not in _SIZE_UNITS:
            raise ValueError(f"{_SIZE_HINT}, got {describe_value(value)}")
        amount = Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)]
        if amount != amount.to_integral_value():
            raise ValueError(f"expected a whole number of bytes, got {describe_value(value)}")
        return int(amount)
    if value < 0:
        raise ValueError(f"expected a non-negative size, got {describe_value(value)}")
    return value


def format_size(size: int) -> str:
    """Return the human form of *size* bytes with the smallest exact count (``"64KiB"``).

    Binary units win ties with decimal ones; plain bytes are last (``"1500B"``).

    :raises ValueError: if *size* is not a non-negative integer.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"expected a non-negative number of bytes, got {describe_value(size)}")
    exact = [(size // factor, unit) for unit, factor in _BINARY + _DECIMAL if size and size % factor == 0]
    count, unit = min(exact, key=lambda item: item[0], default=(size, "B"))
    return f"{count}{unit}"


_LISTEN_V6 = re.compile(r"\[([^\]]+)\]:(\d+)")
_LISTEN = re.compile(r"([^:\[\]]+):(\d+)")


def parse_listen(text: str) -> Tuple[str, int]:
    """Split a listen address, ``host:port`` or ``[ipv6]:port``, into host and port.

    The one parser of ``admin.listen`` (the loader checks it with this, the
    master and workers bind what it returns).

    :raises ValueError: naming what is wrong.
    """
    match = _LISTEN_V6.fullmatch(text) or _LISTEN.fullmatch(text)
    if match is None:
        raise ValueError(f'expected "host:port" or "[ipv6]:port", got {describe_value(text)}')
    host, port = match.group(1), int(match.group(2))
    if text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {match.group(2)}")
    return host, port
