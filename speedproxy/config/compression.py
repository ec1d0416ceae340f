"""Reading and writing a route's ``compression`` key (:mod:`speedproxy.edge.compression`).

Follows :mod:`speedproxy.config.loader`'s conventions: a ``ValueError`` for
a value wrong as a whole, problems recorded per item with their line
otherwise.  ``compression: null`` (or no key) is off; ``compression: {}``
is on with the defaults.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

from speedproxy.config.loader import (
    Converter,
    _boolean,
    _integer,
    _items,
    _Problems,
    _record,
    _Reported,
    _size,
    _text,
    _Val,
)
from speedproxy.config.model import RouteCompressionConfig, RouteConfig
from speedproxy.config.units import format_size

_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+\-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+\-]*)")


def media_type(text: str) -> str:
    """A media type (``type/subtype``) or a range of them (``type/*``), lower-cased."""
    lowered = text.strip().lower()
    if not _MEDIA_TYPE.fullmatch(lowered):
        raise ValueError(f"expected a media type such as text/html or text/*, got {text!r}")
    return lowered


def media_types(problems: _Problems, val: _Val, path: str) -> Tuple[str, ...]:
    """A list of media types (each problem reported at its own line)."""
    out = []
    items = _items(val, "media types")
    for index, item in enumerate(items):
        try:
            out.append(media_type(_text(item)))
        except ValueError as error:
            problems.add(item.line, f"{path}[{index}]", str(error))
    if len(out) != len(items):
        raise _Reported
    return tuple(out)


_FIELDS: Dict[str, Converter] = {
    "types": media_types,
    "min_size": _size(0),
    "gzip_level": _integer(1, 9),
    "brotli": _boolean,
    "brotli_level": _integer(0, 11),
}


def compression(problems: _Problems, val: _Val, path: str) -> Optional[RouteCompressionConfig]:
    """``routing.<name>.compression``: ``null`` is off."""
    if val.value is None:
        return None
    fields = _record(problems, val, path, _FIELDS)
    if "types" in fields and not fields["types"]:
        problems.add(val.value["types"].line, f"{path}.types", "list at least one media type")
        raise _Reported
    return RouteCompressionConfig(**fields)


def dump_route(route: RouteConfig, data: Dict[str, Any]) -> None:
    """Lay out ``route.compression`` in ``data`` (the route's mapping) as the file has it."""
    settings = route.compression
    if settings is None:
        data.pop("compression", None)
        return
    data["compression"] = {
        "types": list(settings.types),
        "min_size": format_size(settings.min_size),
        "gzip_level": settings.gzip_level,
        "brotli": settings.brotli,
        "brotli_level": settings.brotli_level,
    }
