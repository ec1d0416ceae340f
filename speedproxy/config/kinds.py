"""The common kinds of config values: strings, numbers, durations, sizes, lists, networks.

Each is a :class:`~speedproxy.config.schema.Kind` (read and write back), or
a function returning one for the bounds given.  Kinds proper to one section
live beside that section (:mod:`speedproxy.config.server`, ...).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, List, Optional, Sequence, Tuple

from speedproxy.config.located import Val
from speedproxy.config.problems import Problems, Reported
from speedproxy.config.schema import Kind
from speedproxy.config.units import describe_value, format_duration, format_size, parse_duration, parse_size

__all__ = [
    "TOKEN",
    "boolean",
    "choice",
    "duration",
    "fraction",
    "header_name",
    "integer",
    "items",
    "names",
    "networks",
    "percent",
    "percent_value",
    "size",
    "string",
    "text",
    "url_path",
]

#: An HTTP token (RFC 9110 5.6.2): header field names, methods.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def text(val: Val) -> str:
    """The string *val* holds; an unquoted YAML scalar (``off``, ``1``) as written."""
    if isinstance(val.value, str):
        return val.value
    if val.raw is not None and val.value is not None:
        return val.raw
    raise ValueError(f"expected a string, got {describe_value(val.value)}")


def items(val: Val, what: str) -> List[Val]:
    """The items of a list (``ValueError`` naming *what* it should list otherwise)."""
    if not isinstance(val.value, list):
        raise ValueError(f"expected a list of {what}, got {describe_value(val.value)}")
    return val.value


def string(non_empty: bool = False) -> Kind:
    def read(problems: Problems, val: Val, path: str) -> str:
        value = text(val)
        if non_empty and not value:
            raise ValueError("must not be empty")
        return value

    return Kind(read)


def _url_path(problems: Problems, val: Val, path: str) -> str:
    value = text(val)
    if not value.startswith("/"):
        raise ValueError(f'must start with "/", got {describe_value(value)}')
    return value


#: A URL path (``/health``).
url_path = Kind(_url_path)


def choice(choices: Sequence[str], what: str) -> Kind:
    def read(problems: Problems, val: Val, path: str) -> str:
        value = text(val)
        if value not in choices:
            raise ValueError(f"unknown {what} {value!r} (valid: {', '.join(choices)})")
        return value

    return Kind(read)


def _boolean(problems: Problems, val: Val, path: str) -> bool:
    if not isinstance(val.value, bool):
        raise ValueError(f"expected a boolean (true or false), got {describe_value(val.value)}")
    return val.value


boolean = Kind(_boolean)


def integer(low: int, high: Optional[int] = None) -> Kind:
    def read(problems: Problems, val: Val, path: str) -> int:
        value = val.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {describe_value(value)}")
        if high is None and value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return Kind(read)


def _fraction(problems: Problems, val: Val, path: str) -> float:
    value = val.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number between 0 and 1, got {describe_value(value)}")
    if not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return float(value)


#: A number 0..1 (a share), written as a plain number.
fraction = Kind(_fraction)


def percent_value(value: Any) -> float:
    """A percentage 0..100 from ``"50%"``, ``"50"`` or a number."""
    number: Any = value
    if isinstance(value, str):
        stripped = value.strip()
        stripped = stripped[:-1].strip() if stripped.endswith("%") else stripped
        try:
            number = float(stripped)
        except ValueError:
            raise ValueError(f'expected a percentage like "50%" or a number 0-100, got {describe_value(value)}') from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number:
        raise ValueError(f'expected a percentage like "50%" or a number 0-100, got {describe_value(value)}')
    if not 0 <= number <= 100:
        raise ValueError(f"must be between 0% and 100%, got {describe_value(value)}")
    return float(number)


def percent(optional: bool) -> Kind:
    """A percentage (``"50%"`` or a number 0-100), written as a number; ``null`` is ``None`` when *optional*."""

    def read(problems: Problems, val: Val, path: str) -> Optional[float]:
        if optional and val.value is None:
            return None
        return percent_value(val.value)

    return Kind(read)


def duration(positive: bool) -> Kind:
    """Seconds, written ``30s``, ``250ms``, ``1h``; 0 refused when *positive*."""

    def read(problems: Problems, val: Val, path: str) -> float:
        seconds = parse_duration(val.value)
        if positive and seconds == 0:
            raise ValueError(f"must be greater than 0, got {describe_value(val.value)}")
        return seconds

    return Kind(read, write=format_duration)


def size(minimum: int, *, written_in_bytes: bool = False) -> Kind:
    """Bytes, written ``64KiB``, ``10MiB`` (or as a number of bytes when *written_in_bytes*)."""

    def read(problems: Problems, val: Val, path: str) -> int:
        value = parse_size(val.value)
        if value < minimum:
            raise ValueError(f"must be at least {format_size(minimum)}, got {describe_value(val.value)}")
        return value

    if written_in_bytes:
        return Kind(read)
    return Kind(read, write=format_size)


def _header_name(problems: Problems, val: Val, path: str) -> str:
    value = text(val)
    if not TOKEN.fullmatch(value):
        raise ValueError(f"expected an HTTP header name, got {describe_value(value)}")
    return value


header_name = Kind(_header_name)


def as_list(value: Any) -> List[Any]:
    """A tuple of the model written as a list."""
    return list(value)


def _networks(problems: Problems, val: Val, path: str) -> Tuple[str, ...]:
    found = []
    for index, item in enumerate(items(val, "IP addresses or CIDR networks")):
        try:
            found.append(str(ipaddress.ip_network(text(item), strict=False)))
        except ValueError:
            problems.add(
                item.line,
                f"{path}[{index}]",
                f"expected an IP address or CIDR network, got {describe_value(item.value)}",
            )
    if len(found) != len(val.value):
        raise Reported
    return tuple(found)


#: A list of IP addresses or CIDR networks, kept normalised (``10.0.0.0/8``).
networks = Kind(_networks, write=as_list)


def read_names(problems: Problems, val: Val, path: str, what: str) -> Tuple[str, ...]:
    """A list of non-empty strings, each problem reported at its own line."""
    found = []
    for index, item in enumerate(items(val, what)):
        try:
            value = text(item)
        except ValueError as exc:
            problems.add(item.line, f"{path}[{index}]", str(exc))
            continue
        if not value:
            problems.add(item.line, f"{path}[{index}]", "must not be empty")
            continue
        found.append(value)
    if len(found) != len(val.value):
        raise Reported
    return tuple(found)


def names(what: str) -> Kind:
    """A list of non-empty strings (*what* they are, for the messages)."""
    return Kind(lambda problems, val, path: read_names(problems, val, path, what), write=as_list)
