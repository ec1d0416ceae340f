"""The ``backends`` section: upstream groups, their backends and health checks."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from speedproxy.config.kinds import (
    boolean,
    choice,
    duration,
    integer,
    items,
    percent,
    percent_value,
    string,
    text,
    url_path,
)
from speedproxy.config.located import Val
from speedproxy.config.model import BackendConfig, HealthCheckConfig
from speedproxy.config.problems import Problems, Reported, join
from speedproxy.config.schema import (
    Kind,
    Section,
    is_empty,
    is_none,
    omit_if,
    optional_section,
    read_record,
    write_section,
)
from speedproxy.config.units import describe_value

__all__ = ["BACKEND", "HEALTH_CHECK", "read_backends", "write_backends"]


def _status_range(problems: Problems, val: Val, path: str) -> Tuple[int, int]:
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


#: An inclusive status range, written ``200-399``.
status_range = Kind(_status_range, write=lambda value: "%d-%d" % value)


def _http_url(problems: Problems, val: Val, path: str) -> str:
    value = text(val)
    if value and not re.fullmatch(r"https?://[^/\s]+/?", value):
        raise ValueError(f'expected "http://host:port" (the admin API of a speedproxy), got {describe_value(value)}')
    return value.rstrip("/")


_POSITIVE_DURATION = duration(positive=True)

HEALTH_CHECK = Section(
    HealthCheckConfig,
    {
        "path": url_path,
        "interval": _POSITIVE_DURATION,
        "timeout": _POSITIVE_DURATION,
        "failures": integer(1),
        "successes": integer(1),
        "expected_status": status_range,
        "passive_failures": integer(0),
        "passive_5xx": boolean,
        "unhealthy_timeout": _POSITIVE_DURATION,
        "panic_threshold": omit_if(is_none, percent(optional=True)),
    },
)


def _health_check(problems: Problems, val: Val, path: str) -> Optional[HealthCheckConfig]:
    if val.value is None:
        return None
    return HealthCheckConfig(**read_record(problems, val, path, HEALTH_CHECK))


BACKEND = Section(
    BackendConfig,
    {
        "id": string(non_empty=True),
        "host": string(non_empty=True),
        "port": integer(1, 65535),
        "weight": integer(0),
        "scheme": choice(("http", "https", "h2c", "h2"), "scheme"),
        "active": boolean,
        "max_conn": integer(1),
        "health_check": optional_section(HEALTH_CHECK, _health_check),
        "admin_url": omit_if(is_empty, Kind(_http_url)),
        "admin_api_key": omit_if(is_empty, string()),
        "name": omit_if(is_empty, string()),
    },
    required=("id", "host", "port"),
)


def read_backends(problems: Problems, val: Val) -> Dict[str, Tuple[BackendConfig, ...]]:
    """Build the upstream groups; every named group exists even if a member is bad."""
    if not isinstance(val.value, dict):
        got = describe_value(val.value)
        problems.add(val.line, "backends", f"expected a mapping of upstream names to lists, got {got}")
        raise Reported
    groups: Dict[str, Tuple[BackendConfig, ...]] = {}
    for name, group in val.value.items():
        group_path = join("backends", name)
        members: List[BackendConfig] = []
        first_use: Dict[str, str] = {}
        try:
            listed = items(group, "backends")
        except ValueError as exc:
            problems.add(group.line, group_path, str(exc))
            listed = []
        for index, item in enumerate(listed):
            item_path = f"{group_path}[{index}]"
            try:
                backend = BackendConfig(**read_record(problems, item, item_path, BACKEND))
            except Reported:
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
        _check_panic_thresholds(problems, group_path, listed)
        groups[name] = tuple(members)
    return groups


def _check_panic_thresholds(problems: Problems, group_path: str, listed: Sequence[Val]) -> None:
    """The backends of one group must agree on ``health_check.panic_threshold``.

    The threshold belongs to the group (panic is a group-wide state); a
    backend that does not set it takes the group's.
    """
    first: Optional[Tuple[float, str]] = None
    for index, item in enumerate(listed):
        check = item.value.get("health_check") if isinstance(item.value, dict) else None
        given = check.value.get("panic_threshold") if check is not None and isinstance(check.value, dict) else None
        if given is None or given.invalid or given.value is None:
            continue
        try:
            value = percent_value(given.value)
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


def write_backends(groups: Mapping[str, Tuple[BackendConfig, ...]]) -> Dict[str, Any]:
    """The upstream groups as the file has them."""
    return {name: [write_section(BACKEND, backend) for backend in members] for name, members in groups.items()}
