"""A route's ``filters`` list: each entry's filter kind found and its options checked by that kind."""

from __future__ import annotations

from typing import Tuple

from speedproxy.config.kinds import items, string
from speedproxy.config.located import Val, plain
from speedproxy.config.model import FilterConfig
from speedproxy.config.problems import Problems, Reported
from speedproxy.config.schema import Kind, Section, is_empty, read_record, write_section
from speedproxy.config.units import describe_value

__all__ = ["FILTER", "filters"]

FILTER = Section(
    FilterConfig,
    {
        "name": string(non_empty=True),
        # Read by _filter_entry (the filter kind checks them); written back as given.
        "options": Kind(lambda problems, val, path: None, write=dict),
    },
    required=("name",),
    derived={"checked": "the options as the filter kind's check_options returned them"},
)


def _filter_entry(problems: Problems, val: Val, path: str) -> FilterConfig:
    from speedproxy.filters.interface import FilterOptionsError
    from speedproxy.filters.registry import find_filter_kind

    fields = read_record(problems, val, path, FILTER)
    name = fields["name"]
    try:
        kind = find_filter_kind(name)
    except KeyError as exc:
        problems.add(val.value["name"].line, f"{path}.name", exc.args[0])
        raise Reported from None
    given = val.value.get("options")
    options = plain(given) if given is not None and given.value is not None else {}
    if not isinstance(options, dict):
        problems.add(given.line, f"{path}.options", f"expected a mapping, got {describe_value(options)}")
        raise Reported
    try:
        checked = kind.check_options(options)
    except FilterOptionsError as exc:
        where = given.value.get(exc.key) if given is not None and isinstance(given.value, dict) else None
        line = where.line if where is not None else (given.line if given is not None else val.line)
        problems.add(line, f"{path}.options.{exc.key}" if exc.key else f"{path}.options", exc.message)
        raise Reported from None
    except Exception as exc:  # a plugin's own bug: say whose
        problems.add(val.line, f"{path}.options", f"filter {name!r} failed to check its options: {exc!r}")
        raise Reported from None
    return FilterConfig(name=name, options=options, checked=checked)


def _filters(problems: Problems, val: Val, path: str) -> Tuple[FilterConfig, ...]:
    if val.value is None:
        return ()
    entries = []
    failed = False
    for index, item in enumerate(items(val, "filters ({name: ..., options: {...}})")):
        try:
            entries.append(_filter_entry(problems, item, f"{path}[{index}]"))
        except Reported:
            failed = True
    if failed:
        raise Reported
    return tuple(entries)


#: The route's filters, in order; left out when there are none.
filters = Kind(
    _filters,
    write=lambda entries: [write_section(FILTER, entry) for entry in entries],
    omit=is_empty,
    holds=FILTER,
)
