"""Load and validate speedproxy's YAML config, and dump a config back to a mapping.

The YAML is composed into nodes (never ``yaml.load``-ed) so that every value
keeps the line it came from; each problem is reported as
``FILE:LINE: dotted.key[0].path: message`` and all problems are collected in
one pass before :class:`ConfigError` is raised.  Mappings from the admin API
go through the same validation, without line numbers.

YAML notes: plain (unquoted) scalars given for a string setting are taken as
written, so ``access_log: off`` is ``"off"`` and ``id: 1`` is ``"1"``; merge
keys (``<<: *anchor``) work; ``null`` for a whole section means its defaults.
Relative paths (``ssl.cert_file``, ``ssl.key_file``, ``admin.api_key_file``,
``server.access_log``) are made absolute against the config file's directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import yaml

from speedproxy.config.model import (
    BALANCER_NAMES,
    AdminConfig,
    BackendConfig,
    CacheConfig,
    CacheKeyConfig,
    Config,
    FilterConfig,
    AccountingConfig,
    ClusterConfig,
    GrpcConfig,
    HealthCheckConfig,
    ProtocolBalancers,
    RouteCacheConfig,
    RouteConfig,
    RouteHlsConfig,
    ServerConfig,
    SSLConfig,
    TracingConfig,
)
from speedproxy.config.units import (
    describe_value,
    format_duration,
    format_size,
    parse_duration,
    parse_listen,
    parse_size,
)

__all__ = ["ConfigError", "config_from_mapping", "config_to_mapping", "load_config", "parse_config"]


class ConfigError(Exception):
    """A config is invalid; :attr:`problems` lists every reason, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: List[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


# -- located values -------------------------------------------------------------


@dataclass
class _Val:
    """A value (``dict`` of ``_Val``, ``list`` of ``_Val`` or a scalar) and its line."""

    value: Any
    line: Optional[int]
    #: The text of a plain (unquoted) YAML scalar, else ``None``.
    raw: Optional[str] = None
    #: Already reported as unreadable (bad tag, recursive alias): skip checks.
    invalid: bool = False


class _Reported(Exception):
    """A value is invalid and its problems have already been recorded."""


class _Problems:
    """Collect problems as ``FILE[:LINE]: PATH: MESSAGE`` strings."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._items: List[Tuple[int, str]] = []

    def add(self, line: Optional[int], path: str, message: str) -> None:
        """Record one problem at *line* (``None`` when unknown) and key *path*."""
        where = self.filename if line is None else f"{self.filename}:{line}"
        self._items.append((line or 0, f"{where}: {path}: {message}" if path else f"{where}: {message}"))

    def raise_if_any(self) -> None:
        """Raise :class:`ConfigError` with the problems in line order, if there are any."""
        if self._items:
            raise ConfigError([text for _, text in sorted(self._items, key=lambda item: item[0])])


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def _join(path: str, key: str) -> str:
    if not _SIMPLE_KEY.fullmatch(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key


_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + name for name in ("null", "bool", "int", "float", "str")}
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _from_node(problems: _Problems, node: yaml.Node, path: str, line: int, active: Set[int]) -> _Val:
    """Convert a composed YAML node to a :class:`_Val` tree, resolving scalars safely."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag in _SCALAR_TAGS:
            try:
                value = _CONSTRUCTOR.yaml_constructors[node.tag](_CONSTRUCTOR, node)
            except (ValueError, yaml.YAMLError):
                problems.add(line, path, f"cannot read {node.value!r} as {node.tag[len(_TAG):]}")
                return _Val(node.value, line, invalid=True)
        elif node.tag == _TAG + "timestamp":
            value = node.value
        else:
            problems.add(line, path, f"unsupported YAML tag {node.tag!r}")
            return _Val(node.value, line, invalid=True)
        return _Val(value, line, node.value if node.style is None else None)
    if id(node) in active:
        problems.add(line, path, "recursive alias")
        return _Val(None, line, invalid=True)
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items = [
                _from_node(problems, item, f"{path}[{index}]", item.start_mark.line + 1, active)
                for index, item in enumerate(node.value)
            ]
            return _Val(items, line)
        return _Val(_from_mapping_node(problems, node, path, active), line)
    finally:
        active.discard(id(node))


def _from_mapping_node(
    problems: _Problems, node: yaml.MappingNode, path: str, active: Set[int]
) -> Dict[str, _Val]:
    result: Dict[str, _Val] = {}
    key_lines: Dict[str, int] = {}
    merged: List[_Val] = []
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == _TAG + "merge":
            merged.append(_from_node(problems, value_node, path, line, active))
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            problems.add(line, path, "mapping keys must be plain strings")
            continue
        key = key_node.value
        sub = _join(path, key)
        if key in result:
            problems.add(line, sub, f"duplicate key '{key}' (first defined on line {key_lines[key]})")
            continue
        key_lines[key] = line
        result[key] = _from_node(problems, value_node, sub, line, active)
    for source in merged:  # explicit keys win, then earlier merged mappings
        for mapping in source.value if isinstance(source.value, list) else [source]:
            if not isinstance(mapping.value, dict):
                problems.add(mapping.line, path, "'<<' can only merge mappings")
                continue
            for key, value in mapping.value.items():
                result.setdefault(key, value)
    return result


def _from_python(problems: _Problems, value: Any, path: str) -> _Val:
    """Convert plain Python data (from JSON) to a :class:`_Val` tree without lines."""
    if isinstance(value, Mapping):
        result: Dict[str, _Val] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(None, path, f"mapping keys must be strings, got {describe_value(key)}")
                continue
            result[key] = _from_python(problems, item, _join(path, key))
        return _Val(result, None)
    if isinstance(value, (list, tuple)):
        return _Val([_from_python(problems, item, f"{path}[{i}]") for i, item in enumerate(value)], None)
    return _Val(value, None)


# -- field converters ----------------------------------------------------------------
#
# A converter takes (problems, value, path) and returns the model value.  It
# raises ValueError for a problem with the value as a whole (reported by the
# caller at the value's line), or reports nested problems itself and raises
# _Reported.

Converter = Callable[[_Problems, _Val, str], Any]


def _text(val: _Val) -> str:
    if isinstance(val.value, str):
        return val.value
    if val.raw is not None and val.value is not None:
        return val.raw
    raise ValueError(f"expected a string, got {describe_value(val.value)}")


def _string(non_empty: bool = False) -> Converter:
    def convert(problems: _Problems, val: _Val, path: str) -> str:
        text = _text(val)
        if non_empty and not text:
            raise ValueError("must not be empty")
        return text

    return convert


def _url_path(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val)
    if not text.startswith("/"):
        raise ValueError(f'must start with "/", got {describe_value(text)}')
    return text


def _choice(choices: Sequence[str], what: str) -> Converter:
    def convert(problems: _Problems, val: _Val, path: str) -> str:
        text = _text(val)
        if text not in choices:
            raise ValueError(f"unknown {what} {text!r} (valid: {', '.join(choices)})")
        return text

    return convert


def _boolean(problems: _Problems, val: _Val, path: str) -> bool:
    if not isinstance(val.value, bool):
        raise ValueError(f"expected a boolean (true or false), got {describe_value(val.value)}")
    return val.value


def _integer(low: int, high: Optional[int] = None) -> Converter:
    def convert(problems: _Problems, val: _Val, path: str) -> int:
        value = val.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {describe_value(value)}")
        if high is None and value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return convert


def _fraction(problems: _Problems, val: _Val, path: str) -> float:
    value = val.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number between 0 and 1, got {describe_value(value)}")
    if not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return float(value)


def _percent_value(value: Any) -> float:
    """A percentage 0..100 from ``"50%"``, ``"50"`` or a number."""
    number: Any = value
    if isinstance(value, str):
        text = value.strip()
        text = text[:-1].strip() if text.endswith("%") else text
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f'expected a percentage like "50%" or a number 0-100, got {describe_value(value)}') from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number:
        raise ValueError(f'expected a percentage like "50%" or a number 0-100, got {describe_value(value)}')
    if not 0 <= number <= 100:
        raise ValueError(f"must be between 0% and 100%, got {describe_value(value)}")
    return float(number)


def _percent(optional: bool) -> Converter:
    """A percentage (``"50%"`` or a number 0-100); ``null`` is ``None`` when *optional*."""

    def convert(problems: _Problems, val: _Val, path: str) -> Optional[float]:
        if optional and val.value is None:
            return None
        return _percent_value(val.value)

    return convert


def _duration(positive: bool) -> Converter:
    def convert(problems: _Problems, val: _Val, path: str) -> float:
        seconds = parse_duration(val.value)
        if positive and seconds == 0:
            raise ValueError(f"must be greater than 0, got {describe_value(val.value)}")
        return seconds

    return convert


def _size(minimum: int) -> Converter:
    def convert(problems: _Problems, val: _Val, path: str) -> int:
        size = parse_size(val.value)
        if size < minimum:
            raise ValueError(f"must be at least {format_size(minimum)}, got {describe_value(val.value)}")
        return size

    return convert


def _workers(problems: _Problems, val: _Val, path: str) -> Optional[int]:
    value = val.value
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'expected "auto" or an integer >= 0, got {describe_value(value)}')
    return value


def _cpu_affinity(problems: _Problems, val: _Val, path: str) -> Any:
    """``off`` (also YAML's unquoted ``off``, a boolean), ``auto`` or a list of CPU numbers."""
    value = val.value
    if value is False or value in ("off", "auto"):
        return "off" if value is False else value
    if value == []:
        raise ValueError('an empty list pins nothing: write "off"')
    if not isinstance(value, list):
        raise ValueError(f'expected "off", "auto" or a list of CPU numbers like [0, 1], got {describe_value(value)}')
    cpus = []
    for index, item in enumerate(value):
        if isinstance(item.value, bool) or not isinstance(item.value, int) or item.value < 0:
            problems.add(item.line, f"{path}[{index}]", f"expected a CPU number >= 0, got {describe_value(item.value)}")
        else:
            cpus.append(item.value)
    if len(cpus) != len(value):
        raise _Reported
    return tuple(cpus)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_name(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val)
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"expected an HTTP header name, got {describe_value(text)}")
    return text


def _items(val: _Val, what: str) -> List[_Val]:
    if not isinstance(val.value, list):
        raise ValueError(f"expected a list of {what}, got {describe_value(val.value)}")
    return val.value


def _networks(problems: _Problems, val: _Val, path: str) -> Tuple[str, ...]:
    networks = []
    for index, item in enumerate(_items(val, "IP addresses or CIDR networks")):
        try:
            networks.append(str(ipaddress.ip_network(_text(item), strict=False)))
        except ValueError:
            problems.add(
                item.line,
                f"{path}[{index}]",
                f"expected an IP address or CIDR network, got {describe_value(item.value)}",
            )
    if len(networks) != len(val.value):
        raise _Reported
    return tuple(networks)




def _listen(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val)
    parse_listen(text)  # ValueError names what is wrong
    return text


def _status_range(problems: _Problems, val: _Val, path: str) -> Tuple[int, int]:
    value = val.value
    bounds: Optional[Tuple[Any, Any]] = None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
        if match:
            bounds = (int(match.group(1)), int(match.group(2)))
    elif isinstance(value, list) and len(value) == 2:
        bounds = (value[0].value, value[1].value)
    if bounds is None or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        raise ValueError(f'expected a status range like "200-399" or [200, 399], got {describe_value(value)}')
    low, high = bounds
    if not 100 <= low <= high <= 599:
        raise ValueError(f"expected 100 <= low <= high <= 599, got {low}-{high}")
    return (low, high)


def _route_host(problems: _Problems, val: _Val, path: str) -> Optional[str]:
    if val.value is None:
        return None
    return _text(val).lower() or None


def _record(
    problems: _Problems,
    val: _Val,
    path: str,
    fields: Mapping[str, Converter],
    required: Iterable[str] = (),
) -> Dict[str, Any]:
    """Convert the mapping *val* field by field; raise :class:`_Reported` if unusable.

    Unknown keys and bad values are reported; the valid fields are returned,
    unless the value is not a mapping or a *required* field is missing or bad.
    """
    if not isinstance(val.value, dict):
        problems.add(val.line, path, f"expected a mapping, got {describe_value(val.value)}")
        raise _Reported
    result: Dict[str, Any] = {}
    for key, item in val.value.items():
        sub = _join(path, key)
        convert = fields.get(key)
        if convert is None:
            problems.add(item.line, sub, _unknown_key(key, fields))
            continue
        if item.invalid:
            continue
        try:
            result[key] = convert(problems, item, sub)
        except ValueError as exc:
            problems.add(item.line, sub, str(exc))
        except _Reported:
            pass
    complete = True
    for key in required:
        if key not in val.value:
            problems.add(val.line, path, f"missing required key '{key}'")
        complete = complete and key in result
    if not complete:
        raise _Reported
    return result


def _unknown_key(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")


def _section(
    problems: _Problems, val: Optional[_Val], path: str, cls: Any, fields: Mapping[str, Converter]
) -> Any:
    """Build dataclass *cls* from an optional mapping; defaults where missing or bad."""
    if val is None or val.value is None:
        return cls()
    try:
        return cls(**_record(problems, val, path, fields))
    except _Reported:
        return cls()


def _health_check(problems: _Problems, val: _Val, path: str) -> Optional[HealthCheckConfig]:
    if val.value is None:
        return None
    return HealthCheckConfig(**_record(problems, val, path, _HEALTH_CHECK_FIELDS))


def _plain(val: _Val) -> Any:
    """A located value as plain Python data (for a filter's ``check_options``)."""
    if isinstance(val.value, dict):
        return {key: _plain(item) for key, item in val.value.items()}
    if isinstance(val.value, list):
        return [_plain(item) for item in val.value]
    return val.value


def _filter_entry(problems: _Problems, val: _Val, path: str) -> FilterConfig:
    from speedproxy.filters.interface import FilterOptionsError
    from speedproxy.filters.registry import find_filter_kind

    fields = _record(problems, val, path, _FILTER_FIELDS, ("name",))
    name = fields["name"]
    try:
        kind = find_filter_kind(name)
    except KeyError as exc:
        problems.add(val.value["name"].line, f"{path}.name", exc.args[0])
        raise _Reported from None
    given = val.value.get("options")
    options = _plain(given) if given is not None and given.value is not None else {}
    if not isinstance(options, dict):
        problems.add(given.line, f"{path}.options", f"expected a mapping, got {describe_value(options)}")
        raise _Reported
    try:
        checked = kind.check_options(options)
    except FilterOptionsError as exc:
        where = given.value.get(exc.key) if given is not None and isinstance(given.value, dict) else None
        line = where.line if where is not None else (given.line if given is not None else val.line)
        problems.add(line, f"{path}.options.{exc.key}" if exc.key else f"{path}.options", exc.message)
        raise _Reported from None
    except Exception as exc:  # a plugin's own bug: say whose
        problems.add(val.line, f"{path}.options", f"filter {name!r} failed to check its options: {exc!r}")
        raise _Reported from None
    return FilterConfig(name=name, options=options, checked=checked)


def _filters(problems: _Problems, val: _Val, path: str) -> Tuple[FilterConfig, ...]:
    if val.value is None:
        return ()
    entries = []
    failed = False
    for index, item in enumerate(_items(val, "filters ({name: ..., options: {...}})")):
        try:
            entries.append(_filter_entry(problems, item, f"{path}[{index}]"))
        except _Reported:
            failed = True
    if failed:
        raise _Reported
    return tuple(entries)


def _names(what: str) -> Converter:
    def convert(problems: _Problems, val: _Val, path: str) -> Tuple[str, ...]:
        names = []
        for index, item in enumerate(_items(val, what)):
            try:
                text = _text(item)
            except ValueError as exc:
                problems.add(item.line, f"{path}[{index}]", str(exc))
                continue
            if not text:
                problems.add(item.line, f"{path}[{index}]", "must not be empty")
                continue
            names.append(text)
        if len(names) != len(val.value):
            raise _Reported
        return tuple(names)

    return convert


def _key_query(problems: _Problems, val: _Val, path: str) -> Any:
    if isinstance(val.value, list):
        return _names("query parameter names")(problems, val, path)
    text = _text(val)
    if text not in ("all", "none"):
        raise ValueError(f'expected "all", "none" or a list of parameter names, got {describe_value(text)}')
    return text


def _cache_key(problems: _Problems, val: _Val, path: str) -> CacheKeyConfig:
    return _section(problems, val, path, CacheKeyConfig, _CACHE_KEY_FIELDS)


def _route_cache(problems: _Problems, val: _Val, path: str) -> RouteCacheConfig:
    return _section(problems, val, path, RouteCacheConfig, _ROUTE_CACHE_FIELDS)


def _live_playlist_ttl(problems: _Problems, val: _Val, path: str) -> Optional[float]:
    """``auto`` (``None``: half the target duration) or a duration (0: the origin's)."""
    if val.value == "auto":
        return None
    try:
        return parse_duration(val.value)
    except ValueError as exc:
        raise ValueError(f'expected "auto" or a duration; {exc}') from None


def _rate(problems: _Problems, val: _Val, path: str) -> int:
    """Bytes per second: a size, optionally written with ``/s`` (``2MiB/s``); 0 = unlimited."""
    value = val.value
    if isinstance(value, str) and value.strip().lower().endswith("/s"):
        value = value.strip()[:-2]
    return parse_size(value)


_BITRATE = re.compile(r"(\d+(?:\.\d+)?)([kmg]?)(?:bps|bit/s|b/s)?")


def _bitrate(problems: _Problems, val: _Val, path: str) -> int:
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


def _route_hls(problems: _Problems, val: _Val, path: str) -> RouteHlsConfig:
    return _section(problems, val, path, RouteHlsConfig, _ROUTE_HLS_FIELDS)


def _http_url(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val)
    if text and not re.fullmatch(r"https?://[^/\s]+/?", text):
        raise ValueError(f'expected "http://host:port" (the admin API of a speedproxy), got {describe_value(text)}')
    return text.rstrip("/")


def _otlp_endpoint(problems: _Problems, val: _Val, path: str) -> str:
    """An OTLP/HTTP collector URL, or empty (no export); needs the ``otel`` extra."""
    from urllib.parse import urlsplit

    text = _text(val).strip()
    if not text:
        return ""
    parts = urlsplit(text)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        raise ValueError(f'expected an OTLP/HTTP URL such as "http://collector:4318", got {describe_value(text)}')
    from speedproxy.tracing import otel_missing

    missing = otel_missing()
    if missing is not None:
        raise ValueError(
            f"tracing needs the OpenTelemetry SDK, which is not installed (no module {missing!r}): "
            "pip install 'speedproxy[otel]'"
        )
    return text


def _edge(name: str) -> Converter:
    """A converter of :mod:`speedproxy.config.edge` (``cors``, ``signed_urls``), imported when used."""

    def convert(problems: _Problems, val: _Val, path: str) -> Any:
        from speedproxy.config import edge

        return getattr(edge, name)(problems, val, path)

    return convert


def _limits(name: str) -> Converter:
    """A converter of :mod:`speedproxy.config.edge_limits` (``rate_limit``, ``connection_limit``,
    ``sessions``), imported when used."""

    def convert(problems: _Problems, val: _Val, path: str) -> Any:
        from speedproxy.config import edge_limits

        return getattr(edge_limits, name)(problems, val, path)

    return convert


def _compression(problems: _Problems, val: _Val, path: str) -> Any:
    """``routing.<name>.compression`` (:mod:`speedproxy.config.compression`)."""
    from speedproxy.config.compression import compression

    return compression(problems, val, path)


def _protocols(problems: _Problems, val: _Val, path: str) -> ProtocolBalancers:
    return _section(problems, val, path, ProtocolBalancers, _PROTOCOL_FIELDS)


_POSITIVE_DURATION = _duration(positive=True)
_BALANCER = _choice(BALANCER_NAMES, "load balancer")

_SERVER_FIELDS: Dict[str, Converter] = {
    "host": _string(non_empty=True),
    "port": _integer(1, 65535),
    "workers": _workers,
    "read_timeout": _POSITIVE_DURATION,
    "write_timeout": _POSITIVE_DURATION,
    "idle_timeout": _POSITIVE_DURATION,
    "upstream_connect_timeout": _POSITIVE_DURATION,
    "upstream_read_timeout": _POSITIVE_DURATION,
    "upstream_keepalive_timeout": _POSITIVE_DURATION,
    "upstream_keepalive": _integer(0),
    "max_conn": _integer(1),
    "max_header_size": _size(1024),
    "max_body_size": _size(0),
    "real_ip_header": _header_name,
    "trusted_proxies": _networks,
    "access_log": _string(non_empty=True),
    "access_log_format": _choice(("combined", "json"), "access log format"),
    "shutdown_grace": _duration(positive=False),
    "slow_request_threshold": _POSITIVE_DURATION,
    "retries": _integer(0, 10),
    "retry_budget": _fraction,
    "websocket_idle_timeout": _POSITIVE_DURATION,
    "sse_idle_timeout": _POSITIVE_DURATION,
    "zero_copy": _boolean,
    "merge_slashes": _boolean,
    "forward_original_path": _boolean,
    "escaped_slashes": _choice(("refuse", "keep"), "escaped_slashes action"),
    "max_request_line": _size(256),
    "panic_threshold": _percent(optional=False),
    "queue_timeout": _duration(positive=False),
    "queue_size": _integer(0),
    "cpu_affinity": _cpu_affinity,
    "allow": _networks,
    "deny": _networks,
    "h2_max_concurrent_streams": _integer(1, 65536),
}
_SSL_FIELDS: Dict[str, Converter] = {"enabled": _boolean, "cert_file": _string(), "key_file": _string()}
_ADMIN_FIELDS: Dict[str, Converter] = {
    "listen": _listen,
    "api_key": _string(),
    "api_key_file": _string(),
    "max_body_size": _size(1024),
}
_HEALTH_CHECK_FIELDS: Dict[str, Converter] = {
    "path": _url_path,
    "interval": _POSITIVE_DURATION,
    "timeout": _POSITIVE_DURATION,
    "failures": _integer(1),
    "successes": _integer(1),
    "expected_status": _status_range,
    "passive_failures": _integer(0),
    "passive_5xx": _boolean,
    "unhealthy_timeout": _POSITIVE_DURATION,
    "panic_threshold": _percent(optional=True),
}
_BACKEND_FIELDS: Dict[str, Converter] = {
    "id": _string(non_empty=True),
    "host": _string(non_empty=True),
    "port": _integer(1, 65535),
    "weight": _integer(0),
    "scheme": _choice(("http", "https"), "scheme"),
    "active": _boolean,
    "max_conn": _integer(1),
    "health_check": _health_check,
    "admin_url": _http_url,
    "admin_api_key": _string(),
    "name": _string(),
}
#: ``off``: WebSocket upgrades are not forwarded (the request goes on as a
#: plain GET); event streams use the route's own balancer.
_PROTOCOL_BALANCER = _choice(BALANCER_NAMES + ("off",), "load balancer")
_PROTOCOL_FIELDS: Dict[str, Converter] = {"websocket": _PROTOCOL_BALANCER, "sse": _PROTOCOL_BALANCER}
_ROUTE_FIELDS: Dict[str, Converter] = {
    "path": _url_path,
    "host": _route_host,
    "upstream": _string(non_empty=True),
    "load_balancer": _BALANCER,
    "protocols": _protocols,
    "filters": _filters,
    "cache": _route_cache,
    "hls": _route_hls,
    "allow": _networks,
    "deny": _networks,
    "cors": _edge("cors"),
    "signed_urls": _edge("signed_urls"),
    "rate_limit": _limits("rate_limit"),
    "connection_limit": _limits("connection_limit"),
    "sessions": _limits("sessions"),
    "compression": lambda problems, val, path: _compression(problems, val, path),
}
_CACHE_KEY_FIELDS: Dict[str, Converter] = {
    "query": _key_query,
    "ignore_query": _names("query parameter names"),
    "headers": _names("header names"),
}
_ROUTE_CACHE_FIELDS: Dict[str, Converter] = {
    "enabled": _boolean,
    "default_ttl": _duration(positive=False),
    "key": _cache_key,
    "stale_while_revalidate": _duration(positive=False),
    "stale_if_error": _duration(positive=False),
    "min_uses": _integer(1),
}
_ROUTE_HLS_FIELDS: Dict[str, Converter] = {
    "enabled": _boolean,
    "prefetch_depth": _integer(0, 64),
    "max_prefetch_downloads": _integer(0, 10000),
    "live_playlist_ttl": _live_playlist_ttl,
    "vod_playlist_ttl": _duration(positive=False),
    "segment_ttl": _duration(positive=False),
    "rewrite_absolute_urls": _boolean,
    "rate_limit": _rate,
    "rate_limit_after": _size(0),
    "max_bandwidth": _rate,
    "max_variant_bandwidth": _bitrate,
}
_CACHE_FIELDS: Dict[str, Converter] = {
    "memory_size": _size(0),
    "disk_path": _string(),
    "disk_size": _size(1024 * 1024),
    "max_object_size": _size(1),
    "cascade_purge": _boolean,
}
_TRACING_FIELDS: Dict[str, Converter] = {
    "otlp_endpoint": _otlp_endpoint,
    "service_name": _string(non_empty=True),
    "sample_ratio": _fraction,
}


def _grpc_enabled(problems: _Problems, val: _Val, path: str) -> bool:
    """``grpc.enabled``; true needs grpcio (the ``speedproxy[grpc]`` extra)."""
    enabled = _boolean(problems, val, path)
    if enabled:
        from speedproxy.admin.grpc import grpc_missing

        missing = grpc_missing()
        if missing is not None:
            raise ValueError(missing)
    return enabled


_GRPC_FIELDS: Dict[str, Converter] = {
    "enabled": _grpc_enabled,
    "host": _string(non_empty=True),
    "port": _integer(1, 65535),
}


def _redis_address(problems: _Problems, val: _Val, path: str) -> str:
    """``cluster.redis``: empty, ``redis://...`` or ``sentinel://...`` (:mod:`speedproxy.cluster.address`)."""
    text = _text(val).strip()
    if text:
        from speedproxy.cluster.address import redis_address_of

        redis_address_of(text)  # a ${env:}/${file:} reference is resolved (and kept as written)
    return text


def _node_name(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val).strip()
    if text and not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,100}", text):
        raise ValueError(f"expected letters, digits and _.:@- (at most 100), got {describe_value(text)}")
    return text


def _collector_url(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val).strip()
    if text and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", text):
        raise ValueError(f'expected an http(s) URL such as "http://collector:8000/batches", got {describe_value(text)}')
    return text


_CLUSTER_FIELDS: Dict[str, Converter] = {
    "redis": _redis_address,
    "node_name": _node_name,
    "heartbeat": _duration(positive=True),
    "timeout": _duration(positive=True),
    "key_prefix": _string(),
}
_ACCOUNTING_FIELDS: Dict[str, Converter] = {
    "interval": _duration(positive=True),
    "redis_stream": _string(),
    "collector": _collector_url,
    "max_buffer": _integer(1, 10_000_000),
    "routes": _names("route"),
    "api_key_header": _header_name,
}
_FILTER_FIELDS: Dict[str, Converter] = {"name": _string(non_empty=True), "options": lambda problems, val, path: None}
_TOP_LEVEL = ("server", "ssl", "admin", "backends", "routing", "cache", "tracing", "grpc", "cluster", "accounting", "upstreams")

#: Float fields that are plain numbers; every other float field is a duration.
_FRACTION_FIELDS = ("retry_budget", "panic_threshold", "sample_ratio")

#: Size fields of ServerConfig.
_SIZE_FIELDS = ("max_header_size", "max_body_size", "max_request_line")


# -- sections with cross-checks -------------------------------------------------------------


def _backends(problems: _Problems, val: _Val) -> Dict[str, Tuple[BackendConfig, ...]]:
    """Build the upstream groups; every named group exists even if a member is bad."""
    if not isinstance(val.value, dict):
        got = describe_value(val.value)
        problems.add(val.line, "backends", f"expected a mapping of upstream names to lists, got {got}")
        raise _Reported
    groups: Dict[str, Tuple[BackendConfig, ...]] = {}
    for name, group in val.value.items():
        group_path = _join("backends", name)
        members: List[BackendConfig] = []
        first_use: Dict[str, str] = {}
        try:
            items = _items(group, "backends")
        except ValueError as exc:
            problems.add(group.line, group_path, str(exc))
            items = []
        for index, item in enumerate(items):
            item_path = f"{group_path}[{index}]"
            try:
                fields = _record(problems, item, item_path, _BACKEND_FIELDS, ("id", "host", "port"))
                backend = BackendConfig(**fields)
            except _Reported:
                continue
            if backend.id in first_use:
                problems.add(
                    item.value["id"].line,
                    f"{item_path}.id",
                    f"duplicate backend id '{backend.id}' (also used by {first_use[backend.id]})",
                )
                continue
            first_use[backend.id] = item_path
            members.append(backend)
        _check_panic_thresholds(problems, group_path, items)
        groups[name] = tuple(members)
    return groups


def _check_panic_thresholds(problems: _Problems, group_path: str, items: Sequence[_Val]) -> None:
    """The backends of one group must agree on ``health_check.panic_threshold``.

    The threshold belongs to the group (panic is a group-wide state); a
    backend that does not set it takes the group's.
    """
    first: Optional[Tuple[float, str]] = None
    for index, item in enumerate(items):
        check = item.value.get("health_check") if isinstance(item.value, dict) else None
        given = check.value.get("panic_threshold") if check is not None and isinstance(check.value, dict) else None
        if given is None or given.invalid or given.value is None:
            continue
        try:
            value = _percent_value(given.value)
        except ValueError:
            continue  # reported with the backend
        path = f"{group_path}[{index}].health_check.panic_threshold"
        if first is None:
            first = (value, path)
        elif value != first[0]:
            problems.add(
                given.line,
                path,
                f"{value:g}% differs from {first[0]:g}% set by {first[1]}: "
                "the backends of one upstream share one panic threshold",
            )


def _routing(
    problems: _Problems, val: _Val, backends: Optional[Mapping[str, Any]]
) -> Dict[str, RouteConfig]:
    """Build the routes, checking upstream names against *backends* (unless ``None``)."""
    if not isinstance(val.value, dict):
        got = describe_value(val.value)
        problems.add(val.line, "routing", f"expected a mapping of route names to routes, got {got}")
        return {}
    routes: Dict[str, RouteConfig] = {}
    first_use: Dict[Tuple[Optional[str], str], str] = {}
    for name, item in val.value.items():
        route_path = _join("routing", name)
        try:
            fields = _record(problems, item, route_path, _ROUTE_FIELDS)
        except _Reported:
            continue
        route = RouteConfig(name=name, **fields)
        if route.rate_limit is not None:
            from speedproxy.config.edge_limits import check_route

            check_route(problems, item, route_path, route)
        if route.hls.enabled and not route.cache.enabled:
            hls = item.value.get("hls")
            enabled = hls.value.get("enabled") if hls is not None and isinstance(hls.value, dict) else None
            problems.add(
                (enabled or hls or item).line,
                f"{route_path}.hls.enabled",
                "needs cache.enabled: true on this route (HLS lifetimes and prefetch fill the route's cache)",
            )
        given = item.value.get("upstream")
        checkable = given is None or "upstream" in fields
        if backends is not None and checkable and route.upstream not in backends:
            problems.add(
                item.line if given is None else given.line,
                f"{route_path}.upstream",
                f"unknown upstream '{route.upstream}' (known: {', '.join(backends) or 'none'})",
            )
        key = (route.host, route.path)
        if key in first_use:
            problems.add(item.line, route_path, f"same host and path as route '{first_use[key]}'")
        else:
            first_use[key] = name
        routes[name] = route
    return routes


def _check_accounting(
    problems: _Problems, section: Mapping[str, _Val], cluster: Any, accounting: Any, routing: Mapping[str, Any]
) -> None:
    """``accounting.redis_stream`` needs ``cluster.redis``; one destination at most; known routes."""
    val = section.get("accounting")
    if val is None or not isinstance(val.value, dict):
        return
    names = val.value.get("routes")
    for index, name in enumerate(accounting.routes):
        if name not in routing:
            line = names.value[index].line if names is not None and isinstance(names.value, list) else val.line
            problems.add(line, f"accounting.routes[{index}]", f"no route {name!r} (known: {', '.join(routing) or 'none'})")
    if accounting.redis_stream and not cluster.redis:
        problems.add(val.value["redis_stream"].line, "accounting.redis_stream", "needs cluster.redis (the Redis to write to)")
    if accounting.redis_stream and accounting.collector:
        problems.add(val.value["collector"].line, "accounting.collector", "give redis_stream or collector, not both")


def _resolve(base_dir: str, path: str) -> str:
    if not path:
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def _build(problems: _Problems, root: _Val, base_dir: Optional[str]) -> Config:
    """Validate the whole tree and return the :class:`Config`, or raise :class:`ConfigError`."""
    top = {} if root.value is None else root.value
    if not isinstance(top, dict):
        keys = ", ".join(_TOP_LEVEL)
        problems.add(root.line, "", f"expected a mapping with keys {keys}, got {describe_value(top)}")
        problems.raise_if_any()
    for key, item in top.items():
        if key not in _TOP_LEVEL:
            problems.add(item.line, _join("", key), _unknown_key(key, _TOP_LEVEL))
    section = {key: top[key] for key in _TOP_LEVEL if key in top and top[key].value is not None}

    server = _section(problems, section.get("server"), "server", ServerConfig, _SERVER_FIELDS)
    ssl = _section(problems, section.get("ssl"), "ssl", SSLConfig, _SSL_FIELDS)
    admin = _section(problems, section.get("admin"), "admin", AdminConfig, _ADMIN_FIELDS)
    cache = _section(problems, section.get("cache"), "cache", CacheConfig, _CACHE_FIELDS)
    tracing = _section(problems, section.get("tracing"), "tracing", TracingConfig, _TRACING_FIELDS)
    grpc = _section(problems, section.get("grpc"), "grpc", GrpcConfig, _GRPC_FIELDS)
    cluster = _section(problems, section.get("cluster"), "cluster", ClusterConfig, _CLUSTER_FIELDS)
    accounting = _section(problems, section.get("accounting"), "accounting", AccountingConfig, _ACCOUNTING_FIELDS)
    if ssl.enabled:
        for key in ("cert_file", "key_file"):
            if not getattr(ssl, key):
                val = section["ssl"].value.get(key, section["ssl"])
                problems.add(val.line, f"ssl.{key}", "must be set when ssl.enabled is true")

    defaults = Config()
    known: Optional[Dict[str, Tuple[BackendConfig, ...]]]
    if "backends" in section:
        try:
            backends = known = _backends(problems, section["backends"])
        except _Reported:
            backends, known = {}, None
    else:
        backends = known = dict(defaults.backends)
    if "routing" in section:
        routing = _routing(problems, section["routing"], known)
    else:
        routing = dict(defaults.routing)
        if known is not None and "default" not in known:
            problems.add(
                None if root.line is None else 1,
                "routing",
                "no routing section, so the default route needs upstream 'default', which is not "
                f"in backends (known: {', '.join(known) or 'none'})",
            )
    from speedproxy.config.upstream_rules import upstreams as _upstreams

    upstreams = _upstreams(problems, section.get("upstreams"), known)
    _check_accounting(problems, section, cluster, accounting, routing)
    problems.raise_if_any()

    if base_dir is not None:
        ssl = dataclasses.replace(
            ssl, cert_file=_resolve(base_dir, ssl.cert_file), key_file=_resolve(base_dir, ssl.key_file)
        )
        admin = dataclasses.replace(admin, api_key_file=_resolve(base_dir, admin.api_key_file))
        if server.access_log not in ("-", "off"):
            server = dataclasses.replace(server, access_log=_resolve(base_dir, server.access_log))
        if cache.disk_path:
            cache = dataclasses.replace(cache, disk_path=_resolve(base_dir, cache.disk_path))
    return Config(
        server=server, ssl=ssl, admin=admin, backends=backends, routing=routing, cache=cache, tracing=tracing,
        grpc=grpc, cluster=cluster, accounting=accounting, upstreams=upstreams,
    )


# -- public API -------------------------------------------------------------------------


def load_config(path: str) -> Config:
    """Read, validate and return the config file at *path*.

    Relative paths inside it are resolved against the file's directory and
    :attr:`Config.source` is the file's absolute path.

    :raises ConfigError: if the file cannot be read, is not YAML, or is invalid.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: cannot read config file: not UTF-8 (byte offset {exc.start})"]) from exc
    source = os.path.abspath(path)
    config = parse_config(text, path, base_dir=os.path.dirname(source))
    return dataclasses.replace(config, source=source)


def parse_config(text: str, filename: str = "<string>", *, base_dir: Optional[str] = None) -> Config:
    """Validate YAML *text* and return the config; *filename* is used in messages.

    Relative paths are resolved against *base_dir* if given, else left as is.

    :raises ConfigError: listing every problem found.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = filename if mark is None else f"{filename}:{mark.line + 1}"
        message = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise ConfigError([f"{where}: invalid YAML: {message}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{filename}: invalid YAML: {exc}"]) from exc
    problems = _Problems(filename)
    if node is None:
        root = _Val(None, 1)
    else:
        root = _from_node(problems, node, "", node.start_mark.line + 1, set())
    return _build(problems, root, base_dir)


def config_from_mapping(
    data: Mapping[str, Any], filename: str = "<api>", *, base_dir: Optional[str] = None
) -> Config:
    """Validate plain data (e.g. a JSON body) laid out like the file and return the config.

    Problems read ``<api>: server.port: ...``.  Relative paths are resolved
    against *base_dir* if given, else left as is.

    :raises ConfigError: listing every problem found.
    """
    problems = _Problems(filename)
    return _build(problems, _from_python(problems, data, ""), base_dir)


def config_to_mapping(config: Config) -> Dict[str, Any]:
    """Return *config* as plain JSON/YAML-friendly data laid out like the file.

    Durations and sizes use their human forms; secrets are *not* masked.
    ``config_from_mapping(config_to_mapping(c))`` equals *c* apart from ``source``.
    """
    server = _dump(config.server)
    server["workers"] = "auto" if config.server.workers is None else config.server.workers
    for key in _SIZE_FIELDS:
        server[key] = format_size(server[key])
    backends = {}
    for name, members in config.backends.items():
        backends[name] = []
        for backend in members:
            data = _dump(backend)
            for key in ("admin_url", "admin_api_key", "name"):
                if not data[key]:
                    del data[key]
            if backend.health_check is None:
                del data["health_check"]
            else:
                data["health_check"] = _dump(backend.health_check)
                data["health_check"]["expected_status"] = "%d-%d" % backend.health_check.expected_status
                if backend.health_check.panic_threshold is None:
                    del data["health_check"]["panic_threshold"]
            backends[name].append(data)
    routing = {}
    for name, route in config.routing.items():
        data = _dump(route)
        del data["name"]
        if route.host is None:
            del data["host"]
        data["protocols"] = _dump(route.protocols)
        if route.filters:
            data["filters"] = [{"name": entry.name, "options": dict(entry.options)} for entry in route.filters]
        else:
            del data["filters"]
        if route.cache == RouteCacheConfig():
            del data["cache"]
        else:
            data["cache"] = _dump(route.cache)
            data["cache"]["key"] = _dump(route.cache.key)
        if route.hls == RouteHlsConfig():
            del data["hls"]
        else:
            data["hls"] = _dump(route.hls)
            live = route.hls.live_playlist_ttl
            data["hls"]["live_playlist_ttl"] = "auto" if live is None else format_duration(live)
            data["hls"]["rate_limit_after"] = format_size(route.hls.rate_limit_after)
        from speedproxy.config.edge import dump_route

        dump_route(route, data)
        from speedproxy.config import edge_limits

        edge_limits.dump_route(route, data)
        from speedproxy.config import compression

        compression.dump_route(route, data)
        routing[name] = data
    result = {
        "server": server,
        "ssl": _dump(config.ssl),
        "admin": _dump(config.admin),
        "backends": backends,
        "routing": routing,
    }
    if config.cache != CacheConfig():
        cache = _dump(config.cache)
        for key in ("memory_size", "disk_size", "max_object_size"):
            cache[key] = format_size(cache[key])
        result["cache"] = cache
    if config.tracing != TracingConfig():
        result["tracing"] = _dump(config.tracing)
    if config.grpc != GrpcConfig():
        result["grpc"] = _dump(config.grpc)
    if config.cluster != ClusterConfig():
        result["cluster"] = _dump(config.cluster)
    if config.accounting != AccountingConfig():
        result["accounting"] = _dump(config.accounting)
    if config.upstreams:
        from speedproxy.config.upstream_rules import dump as dump_upstreams

        result["upstreams"] = dump_upstreams(config.upstreams)
    return result


def _dump(record: Any) -> Dict[str, Any]:
    """Return the fields of a model dataclass, floats as durations and tuples as lists."""
    data = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.type in ("float", float) and field.name not in _FRACTION_FIELDS:
            value = format_duration(value)
        elif isinstance(value, tuple):
            value = list(value)
        data[field.name] = value
    return data
