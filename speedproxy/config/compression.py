"""Reading and writing a route's ``compression`` key (:mod:`speedproxy.edge.compression`).

Follows :mod:`speedproxy.config.schema`'s conventions: a ``ValueError`` for
a value wrong as a whole, problems recorded per item with their line
otherwise; :data:`COMPRESSION` declares each key once, for reading and
writing back.  ``compression: null`` (or no key) is off; ``compression: {}``
is on with the defaults.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from speedproxy.config.kinds import as_list
from speedproxy.config.kinds import boolean as _boolean
from speedproxy.config.kinds import integer as _integer
from speedproxy.config.kinds import items as _items
from speedproxy.config.kinds import size as _size
from speedproxy.config.kinds import text as _text
from speedproxy.config.located import Val as _Val
from speedproxy.config.model import RouteCompressionConfig
from speedproxy.config.problems import Problems as _Problems
from speedproxy.config.problems import Reported as _Reported
from speedproxy.config.schema import Converter, Kind, Section
from speedproxy.config.schema import read_fields as _record

_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+\-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+\-]*)")


def media_type(text: str) -> str:
    """A media type (``type/subtype``) or a range of them (``type/*``), lower-cased."""
    lowered = text.strip().lower()
    if not _MEDIA_TYPE.fullmatch(lowered):
        raise ValueError(f"expected a media type such as text/html or text/*, got {text!r}")
    return lowered


def _media_types(problems: _Problems, val: _Val, path: str) -> Tuple[str, ...]:
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


#: A list of media types, written as a list.
media_types = Kind(_media_types, write=as_list)


_FIELDS: Dict[str, Converter] = {
    "types": media_types,
    "min_size": _size(0),
    "gzip_level": _integer(1, 9),
    "brotli": _boolean,
    "brotli_level": _integer(0, 11),
    "brotli_stream_level": _integer(0, 11),
}
#: ``routing.<name>.compression``, read by :func:`compression`.
COMPRESSION = Section(RouteCompressionConfig, _FIELDS)


def compression(problems: _Problems, val: _Val, path: str) -> Optional[RouteCompressionConfig]:
    """``routing.<name>.compression``: ``null`` is off."""
    if val.value is None:
        return None
    fields = _record(problems, val, path, _FIELDS)
    if "types" in fields and not fields["types"]:
        problems.add(val.value["types"].line, f"{path}.types", "list at least one media type")
        raise _Reported
    return RouteCompressionConfig(**fields)
