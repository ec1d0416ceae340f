"""Reading and writing the top-level ``upstreams`` section.

Keyed by upstream group (a ``backends:`` name)::

    upstreams:
      tmdb:
        add_query: {api_key: "${env:TMDB_API_KEY}"}
        set_headers: {Authorization: "${file:/etc/speedproxy/tmdb.token}"}
        expect_content_type: [image/*]

Values of ``add_query`` and ``set_headers`` may be ``${env:NAME}`` or
``${file:/absolute/path}`` (:mod:`speedproxy.config.substitutions`): the
config keeps the resolved value for the data path and the form as written
for showing and writing back (the admin API masks written-in values).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

from speedproxy.config.compression import media_types
from speedproxy.config.kinds import TOKEN as _TOKEN
from speedproxy.config.kinds import text as _text
from speedproxy.config.located import Val as _Val
from speedproxy.config.model import UpstreamRulesConfig
from speedproxy.config.problems import Problems as _Problems
from speedproxy.config.problems import Reported as _Reported
from speedproxy.config.problems import join as _join
from speedproxy.config.schema import Converter, Kind, Section, is_empty, omit_if, write_section, written_from
from speedproxy.config.schema import read_fields as _record
from speedproxy.config.substitutions import SubstitutionError, resolve
from speedproxy.config.units import describe_value

#: Fields the proxy owns on the way to a backend: never set by ``set_headers``.
_PROXY_FIELDS = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
        "trailer", "expect", "x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-forwarded-host",
        "x-request-id", "via", "traceparent", "tracestate", "proxy-connection",
    }
)
_QUERY_NAME = re.compile(r"[A-Za-z0-9_.~\-\[\]]+")

Pairs = Tuple[Tuple[str, str], ...]


def _pairs(check_name: Any, what: str) -> Converter:
    """A mapping ``name: value`` whose values may be ``${...}`` references:
    returns ``((name, source), ...)`` and ``((name, value), ...)``."""

    def convert(problems: _Problems, val: _Val, path: str) -> Tuple[Pairs, Pairs]:
        if not isinstance(val.value, dict):
            raise ValueError(f"expected a mapping of {what} to values, got {describe_value(val.value)}")
        sources, values = [], []
        bad = False
        for name, item in val.value.items():
            sub = _join(path, name)
            try:
                check_name(name)
                source = _text(item)
                value = resolve(source)
            except (ValueError, SubstitutionError) as error:
                problems.add(item.line, sub, str(error))
                bad = True
                continue
            if any(ord(char) < 0x20 and char != "\t" or ord(char) == 0x7F for char in value):
                problems.add(item.line, sub, "the value holds a control character")
                bad = True
                continue
            sources.append((name, source))
            values.append((name, value))
        if bad:
            raise _Reported
        return tuple(sources), tuple(values)

    return Kind(convert, write=dict)


def _header_name(name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"expected an HTTP header name, got {name!r}")
    if name.lower() in _PROXY_FIELDS:
        raise ValueError(f"the proxy sets {name} itself; it cannot be set here")


def _query_name(name: str) -> None:
    if not _QUERY_NAME.fullmatch(name):
        raise ValueError(f"expected a query parameter name (letters, digits, _ . ~ - [ ]), got {name!r}")


_FIELDS: Dict[str, Converter] = {
    # Written back as given: ${env:...} and ${file:...} stay references.
    "add_query": omit_if(is_empty, written_from("add_query_sources", _pairs(_query_name, "query parameter names"))),
    "set_headers": omit_if(is_empty, written_from("set_headers_sources", _pairs(_header_name, "header names"))),
    "expect_content_type": omit_if(is_empty, media_types),
}
#: One upstream group's rules (``upstreams.<name>``).
UPSTREAM_RULES = Section(
    UpstreamRulesConfig,
    _FIELDS,
    derived={
        "add_query": "the values resolved from add_query as written",
        "set_headers": "the values resolved from set_headers as written",
    },
)


def upstreams(
    problems: _Problems, val: Optional[_Val], known: Optional[Mapping[str, Any]]
) -> Dict[str, UpstreamRulesConfig]:
    """The ``upstreams`` section; ``known``: the upstream groups (``None``: unknown, not checked)."""
    if val is None or val.value is None:
        return {}
    if not isinstance(val.value, dict):
        problems.add(val.line, "upstreams", f"expected a mapping of upstream names, got {describe_value(val.value)}")
        return {}
    result: Dict[str, UpstreamRulesConfig] = {}
    for name, item in val.value.items():
        path = _join("upstreams", name)
        if known is not None and name not in known:
            problems.add(item.line, path, f"no upstream '{name}' in backends (known: {', '.join(known) or 'none'})")
            continue
        if item.value is None:
            continue
        try:
            fields = _record(problems, item, path, _FIELDS)
        except _Reported:
            continue
        query_sources, query = fields.pop("add_query", ((), ()))
        header_sources, headers = fields.pop("set_headers", ((), ()))
        result[name] = UpstreamRulesConfig(
            add_query=query,
            set_headers=headers,
            add_query_sources=query_sources,
            set_headers_sources=header_sources,
            **fields,
        )
    return result


def dump(rules: Mapping[str, UpstreamRulesConfig]) -> Dict[str, Any]:
    """The section as the file has it: values as written (references stay references)."""
    return {name: write_section(UPSTREAM_RULES, item) for name, item in rules.items()}
